package devsim

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrConfig is a Config that cannot run (see Config.Validate).
	ErrConfig = errors.New("devsim: invalid config")
	// ErrPayload is a telemetry payload that is not a valid Payload.
	ErrPayload = errors.New("devsim: invalid payload")
	// ErrNoDevice means no device could connect during the whole run.
	ErrNoDevice = errors.New("devsim: no device connected")
)

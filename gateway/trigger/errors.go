package trigger

import (
	"errors"
	"fmt"

	"github.com/moongate-edge/moongate/gateway/config"
)

// Sentinel errors; every error of this package wraps exactly one of them
// (manifest content errors wrap ErrManifest and also config.ErrInvalid).
var (
	// ErrPattern: an MQTT trigger pattern is malformed.
	ErrPattern = errors.New("invalid trigger pattern")
	// ErrSchedule: a timer or cron specification is malformed or never fires.
	ErrSchedule = errors.New("invalid schedule")
	// ErrManifest: a function manifest (NAME.yaml) is invalid.
	ErrManifest = errors.New("invalid function manifest")
	// ErrFunctionName: a function name is not [a-z0-9][a-z0-9_-]{0,62}.
	ErrFunctionName = errors.New("invalid function name")
	// ErrSource: a function's NAME.lua is missing, unreadable or too large,
	// or a NAME.lua has no manifest.
	ErrSource = errors.New("invalid function source")
)

// FileError is a problem with one function's files, as returned by
// [LoadDir] and passed to [Watch]'s callback. Name is the function name
// (the file name without extension), Path the file at fault. A caller that
// already runs a version of Name may keep it.
type FileError struct {
	Name string
	Path string
	Err  error
}

// Error formats the problem with its file name (and line, for manifest
// content errors).
func (e *FileError) Error() string {
	if len(config.Errors(e.Err)) > 0 {
		return e.Err.Error() // already "file:line: key: msg"
	}
	return fmt.Sprintf("%s: %v", e.Path, e.Err)
}

// Unwrap returns the cause.
func (e *FileError) Unwrap() error { return e.Err }

// manifestError is a content error in a manifest: a *config.Error that also
// matches ErrManifest.
type manifestError struct{ e *config.Error }

// Error returns the message of the underlying *config.Error.
func (m manifestError) Error() string { return m.e.Error() }

// Unwrap returns the *config.Error (which wraps config.ErrInvalid) and
// ErrManifest.
func (m manifestError) Unwrap() []error { return []error{m.e, ErrManifest} }

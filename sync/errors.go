package sync

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the package. Callers branch on them with errors.Is.
var (
	// ErrDuplicateTarget is returned by New when two targets share a name,
	// and by Register when a type id is registered twice.
	ErrDuplicateTarget = errors.New("sync: duplicate target")
	// ErrUnknownType is returned by New for a target whose type has no
	// registered module (see Register).
	ErrUnknownType = errors.New("sync: unknown target type")
	// ErrInvalidConfig is returned by New and the target constructors for a
	// configuration they cannot use.
	ErrInvalidConfig = errors.New("sync: invalid target configuration")
	// ErrClosed is returned by a Target used after Close.
	ErrClosed = errors.New("sync: target closed")
	// ErrAckTimeout is returned by the message targets (mqtt, nats) when an
	// upstream acknowledgement did not arrive within the target's ack
	// timeout: the connection is dropped and the batch retried.
	ErrAckTimeout = errors.New("sync: upstream acknowledgement timed out")
	// ErrConnectionLost is returned when the connection a message was sent
	// on was lost before its acknowledgement could be trusted.
	ErrConnectionLost = errors.New("sync: connection lost before acknowledgement")
)

// RetryError is a transient delivery failure for which the upstream named
// the earliest time to retry (HTTP 429/503 with Retry-After). The manager
// waits at least After (and at most its own cap) before retrying.
type RetryError struct {
	After time.Duration
	Err   error
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}

func (e *RetryError) Unwrap() error { return e.Err }

package store

import (
	"errors"
	"fmt"
)

// Sentinel errors returned (usually wrapped with %w) by Store methods.
// Callers branch on them with errors.Is.
var (
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store: closed")
	// ErrStoreFull is returned by writes that add data while the free space
	// of the data directory is below Options.DiskReserve. Deletes and acks
	// still work; writes resume by themselves once space returns.
	ErrStoreFull = errors.New("store: disk space below reserve")
	// ErrQuota is returned when a write would exceed a key space quota whose
	// policy is RejectNew (the inbox always rejects: accepted events are
	// never dropped), or when a single entry is larger than its quota.
	ErrQuota = errors.New("store: quota exceeded")
	// ErrNotFound is returned when a function, version, dead letter or
	// inbox entry does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrAlreadyConsumed is returned by Commit when its inbox entry was
	// already consumed by an earlier commit. The caller must skip the entry:
	// its effects are already committed (exactly once).
	ErrAlreadyConsumed = errors.New("store: inbox entry already consumed")
	// ErrBadCursor is returned for a query cursor that this store did not
	// produce or that belongs to a different query.
	ErrBadCursor = errors.New("store: bad cursor")
	// ErrFormatVersion is returned by Open for a database written with a
	// newer or unknown on-disk format, or an older one this build has no
	// migration from. The message names both versions and what to do.
	ErrFormatVersion = errors.New("store: unsupported format version")
	// ErrCorrupt is returned when stored data cannot be decoded.
	ErrCorrupt = errors.New("store: corrupt data")
	// ErrInvalid is returned for invalid arguments: empty or over-long
	// names, names containing a NUL byte, unknown state operations.
	ErrInvalid = errors.New("store: invalid argument")
	// ErrChainOverflow is returned by Commit when its Chain returned more
	// inbox entries than its ChainMax: nothing is applied. It wraps
	// ErrInvalid (a permanent refusal).
	ErrChainOverflow = fmt.Errorf("%w: Chain returned more entries than ChainMax", ErrInvalid)
	// ErrTooLarge is returned for a single write (one Commit or Enqueue)
	// that cannot fit in one atomic Badger transaction, and by StageBlob
	// for an object over its bucket's max_size; the wrapping message says
	// which.
	ErrTooLarge = errors.New("store: too large")
	// ErrNotNumber is returned by Commit when a StateIncr targets a stored
	// value that is not a JSON number, or its sum would not be a finite
	// number. The whole commit is refused.
	ErrNotNumber = errors.New("store: state value is not a JSON number")
	// ErrStateQuota is returned by Commit when state changes would take a
	// function's state over its quota (Options.Quotas[SpaceState]). It
	// wraps ErrQuota. Unlike other quotas it does not clear up by itself
	// (only the function's own deletes free its state), so IsPermanent
	// reports it: the event that made the changes goes to the dead letters.
	ErrStateQuota = fmt.Errorf("%w: function state", ErrQuota)
)

// IsPermanent reports whether err means the same write can never succeed:
// the write itself is invalid or too large (ErrInvalid, ErrTooLarge),
// applies to a value it cannot (ErrNotNumber), or would take a function's
// state over its quota (ErrStateQuota). A full disk, the other quotas or a
// closed store clear up; these do not.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrInvalid) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrNotNumber) || errors.Is(err, ErrStateQuota)
}

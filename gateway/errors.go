package gateway

import "errors"

// Sentinel errors of the gateway. Callers branch on them with errors.Is.
var (
	// ErrStopped is returned for work offered after the gateway began to stop.
	ErrStopped = errors.New("gateway: stopped")
	// ErrNoFunction is returned when an event names a function that is not deployed.
	ErrNoFunction = errors.New("gateway: no such function")
	// ErrBadEvent is returned for an inbox entry whose event cannot be decoded.
	ErrBadEvent = errors.New("gateway: malformed event")
	// ErrInvalidTopic is returned for an inbound message whose topic is not valid UTF-8 or is otherwise unusable.
	ErrInvalidTopic = errors.New("gateway: invalid topic")
	// ErrHopLimit is the dead-letter cause of a chained event that is more
	// hops away from its origin than Options.MaxHops (a trigger cycle).
	ErrHopLimit = errors.New("gateway: chained event exceeds the hop limit (trigger cycle?)")
	// ErrChainBudget is the dead-letter cause of an event whose outputs
	// would chain more events than its origin has left to cause
	// (Options.MaxChainEvents, shared down its chain): a function that
	// fans out to streams it feeds itself. Nothing of it is committed.
	ErrChainBudget = errors.New("gateway: chained events exceed the chain budget of their origin")
	// ErrPayloadTooLarge is returned for an inbound message over the configured payload limit.
	ErrPayloadTooLarge = errors.New("gateway: payload too large")
	// ErrFunctionsDir is returned for a deploy, rollback or delete through the
	// API while the functions are loaded from a directory (functions_dir),
	// which owns them.
	ErrFunctionsDir = errors.New("gateway: functions are managed by functions_dir")
	// ErrInvalidFunction is returned for a deploy whose name, manifest or
	// source is invalid; it also wraps the precise error (a
	// *luavm.CompileError with line and column, manifest errors with line).
	ErrInvalidFunction = errors.New("gateway: invalid function")
	// ErrOutputsRefused is the dead-letter cause of an event whose
	// function ran but whose outputs the store refuses for good (invalid,
	// too large for one commit, a state increment of a value that is not a
	// number): committing them again would fail the same way. It wraps the
	// store's error.
	ErrOutputsRefused = errors.New("gateway: outputs refused by the store")
	// ErrNotLoaded is the dead-letter cause of an event whose function is
	// known (stored, its triggers readable) but could not be loaded: its
	// limits no longer fit the gateway's configuration, or its source no
	// longer compiles. The event is kept, to be replayed once a version
	// that loads is deployed. It wraps the load error.
	ErrNotLoaded = errors.New("gateway: function not loaded")
	// ErrNoBlobs is returned for a blob operation when the store has no
	// blob support.
	ErrNoBlobs = errors.New("gateway: blobs are not available")
)

package apiserver

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// Sentinel errors a backend (Functions) wraps so that the API answers with
// the right status. Errors of package store are mapped as well.
var (
	// ErrInvalidArgument: the request is invalid (400 / INVALID_ARGUMENT).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the named thing does not exist (404 / NOT_FOUND).
	ErrNotFound = errors.New("not found")
	// ErrFailedPrecondition: the call is not possible in the current state
	// (400 / FAILED_PRECONDITION), e.g. a deploy while functions_dir owns
	// the functions.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrUnavailable: the gateway cannot serve the call now (503 /
	// UNAVAILABLE), e.g. it is stopping.
	ErrUnavailable = errors.New("unavailable")
)

// toStatus turns an error into a gRPC status error with the matching code.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ce *luavm.CompileError
	switch {
	case errors.As(err, &ce):
		return compileStatus(ce, err)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, ErrInvalidArgument), errors.Is(err, store.ErrInvalid), errors.Is(err, store.ErrBadCursor):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNotFound), errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrUnavailable), errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, store.ErrStoreFull), errors.Is(err, store.ErrQuota), errors.Is(err, store.ErrTooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// compileStatus is INVALID_ARGUMENT with the line and column in the message
// and as a BadRequest field violation.
func compileStatus(ce *luavm.CompileError, err error) error {
	st := status.New(codes.InvalidArgument, err.Error())
	if d, derr := st.WithDetails(compileDetail(ce)); derr == nil {
		st = d
	}
	return st.Err()
}

func invalidf(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

func notFoundf(format string, args ...any) error {
	return status.Error(codes.NotFound, fmt.Sprintf(format, args...))
}

// compileDetail is the machine-readable position of a compile error.
func compileDetail(ce *luavm.CompileError) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: "LUA_COMPILE_ERROR", Domain: "moongate", Metadata: map[string]string{
		"line": strconv.Itoa(ce.Line), "column": strconv.Itoa(ce.Column), "message": ce.Msg,
	}}
}

// Wrap marks err as being of kind (one of this package's sentinels) for
// the status mapping, without changing its message.
func Wrap(kind, err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: kind, err: err}
}

type kindError struct{ kind, err error }

func (k *kindError) Error() string   { return k.err.Error() }
func (k *kindError) Unwrap() []error { return []error{k.kind, k.err} }

package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
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
// The message is made valid UTF-8 (it may quote function-made text), or
// the status could not be marshalled.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	msg := validText(err.Error())
	var ce *luavm.CompileError
	switch {
	case errors.As(err, &ce):
		return compileStatus(ce, msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	case errors.Is(err, ErrInvalidArgument), errors.Is(err, store.ErrInvalid), errors.Is(err, store.ErrBadCursor),
		errors.Is(err, store.ErrTooLarge), errors.Is(err, store.ErrNotNumber):
		// Too large for one write: retrying cannot help, so not 429.
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, ErrNotFound), errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, msg)
	case errors.Is(err, ErrUnavailable), errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, msg)
	case errors.Is(err, store.ErrStateQuota):
		// Only the function's own deletes free its state (store.IsPermanent):
		// not "retry once space is freed" (507).
		return status.Error(codes.FailedPrecondition, msg+" (delete some of the function's state first)")
	case errors.Is(err, store.ErrStoreFull), errors.Is(err, store.ErrQuota):
		st := status.New(codes.ResourceExhausted, msg)
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonStorageFull, Domain: "moongate"}); derr == nil {
			st = d
		}
		return st.Err()
	}
	return status.Error(codes.Internal, msg)
}

// ReasonStorageFull is the ErrorInfo reason of a RESOURCE_EXHAUSTED status
// for a write refused because the store is out of space or over a quota;
// the REST API answers it with 507 Insufficient Storage instead of 429.
const ReasonStorageFull = "STORAGE_FULL"

// restErrorHandler is grpc-gateway's default error handler, except that a
// refusal for lack of storage (ReasonStorageFull) is 507, as for blobs:
// 429 would tell a client to slow down when it has to wait for space.
//
// A body under api.max_body_bytes whose protobuf form is over the internal
// connection's limit (an array of small numbers in a deploy's config is
// 5.5 times larger as protobuf) is 413, as a body over the limit is: grpc-go
// refuses to send it with RESOURCE_EXHAUSTED, which was 429, telling the
// client to retry what never goes.
func restErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if st, ok := status.FromError(err); ok && httpStatusOf(st) == http.StatusInsufficientStorage {
		w = codeWriter{w, http.StatusInsufficientStorage}
	} else if ok && st.Code() == codes.ResourceExhausted && strings.HasPrefix(st.Message(), "trying to send message larger than max") {
		w = codeWriter{w, http.StatusRequestEntityTooLarge}
		err = status.Error(codes.ResourceExhausted, "request too large once converted to protobuf (JSON arrays of small numbers grow up to 5.5 times): "+st.Message())
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// httpStatusOf is the HTTP status of st on the REST routes and /fn:
// grpc-gateway's mapping, except 507 for a refusal for lack of storage.
func httpStatusOf(st *status.Status) int {
	if st.Code() == codes.ResourceExhausted {
		for _, d := range st.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Reason == ReasonStorageFull {
				return http.StatusInsufficientStorage
			}
		}
	}
	return runtime.HTTPStatusFromCode(st.Code())
}

// codeWriter writes its own status code whatever WriteHeader is given.
type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c codeWriter) WriteHeader(int) { c.ResponseWriter.WriteHeader(c.code) }

// compileStatus is INVALID_ARGUMENT with the line and column in the message
// and as a BadRequest field violation.
func compileStatus(ce *luavm.CompileError, msg string) error {
	st := status.New(codes.InvalidArgument, msg)
	if d, derr := st.WithDetails(compileDetail(ce)); derr == nil {
		st = d
	}
	return st.Err()
}

func invalidf(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// notFoundf is a NotFound status whose message says so, as the store's
// ("store: not found: function ...") do: "not found: " and what is missing.
func notFoundf(format string, args ...any) error {
	return status.Error(codes.NotFound, "not found: "+fmt.Sprintf(format, args...))
}

// compileDetail is the machine-readable position of a compile error.
func compileDetail(ce *luavm.CompileError) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: "LUA_COMPILE_ERROR", Domain: "moongate", Metadata: map[string]string{
		"line": strconv.Itoa(ce.Line), "column": strconv.Itoa(ce.Column), "message": validText(ce.Msg),
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

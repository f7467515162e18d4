package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moongate-edge/moongate/store"
	msync "github.com/moongate-edge/moongate/sync"
)

// TestStatusMapping: what a client can do about an error decides its
// code. A write too large for the store is INVALID_ARGUMENT (400: the
// same request will never succeed), a full store or quota is
// RESOURCE_EXHAUSTED with the STORAGE_FULL reason, which REST answers with
// 507 (429 would tell the client to slow down); messages are valid UTF-8.
func TestStatusMapping(t *testing.T) {
	mux := runtime.NewServeMux()
	for _, c := range []struct {
		err  error
		code codes.Code
		http int
	}{
		{fmt.Errorf("state: %w: limit 1048576", store.ErrTooLarge), codes.InvalidArgument, 400},
		{fmt.Errorf("incr: %w", store.ErrNotNumber), codes.InvalidArgument, 400},
		{fmt.Errorf("put: %w", store.ErrStoreFull), codes.ResourceExhausted, 507},
		{fmt.Errorf("put: %w", store.ErrQuota), codes.ResourceExhausted, 507},
		{status.Error(codes.ResourceExhausted, "grpc: received message larger than max"), codes.ResourceExhausted, 429},
		{errors.New("disk says \xff"), codes.Internal, 500},
	} {
		err := toStatus(c.err)
		st, _ := status.FromError(err)
		if st.Code() != c.code {
			t.Errorf("%v: code %v, want %v", c.err, st.Code(), c.code)
		}
		w := httptest.NewRecorder()
		restErrorHandler(context.Background(), mux, Marshaler(), w, httptest.NewRequest("GET", "/v1/x", nil), err)
		if w.Code != c.http {
			t.Errorf("%v: HTTP %d, want %d", c.err, w.Code, c.http)
		}
		if !strings.Contains(w.Body.String(), `"code":`) || strings.Contains(w.Body.String(), "marshal") {
			t.Errorf("%v: body %s", c.err, w.Body)
		}
	}
}

// TestSyncDeadLetterPrefix pins the copy of sync.DeadLetterPrefix the
// dead-letter filter uses.
func TestSyncDeadLetterPrefix(t *testing.T) {
	if syncDeadLetters != msync.DeadLetterPrefix {
		t.Fatalf("%q != sync.DeadLetterPrefix %q", syncDeadLetters, msync.DeadLetterPrefix)
	}
	for name, ok := range map[string]bool{"sync:up": true, "sync:up-2_x": true, "sync:": false, "sync:Up": false, "sync:a/b": false, "_intake": true, "f": true, "../x": false} {
		if err := checkFunctionFilter(name); (err == nil) != ok {
			t.Errorf("%q: %v", name, err)
		}
	}
}

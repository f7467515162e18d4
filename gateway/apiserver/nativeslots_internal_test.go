package apiserver

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// slowFunctions runs function "slow" until the test releases it (a
// function may run up to its timeout, at most 10 minutes): started
// receives once per invocation that began.
// slowFunctions is a Functions whose invocations wait for release.
type slowFunctions struct {
	wakeFunctions
	started chan struct{}
	release chan struct{}
}

func (f *slowFunctions) Running(string) (RunningFunction, bool) {
	return RunningFunction{Version: 1}, true
}

func (f *slowFunctions) Invoke(ctx context.Context, _ string, _ *luavm.Event, _ bool, _ func(*luavm.Result) error) (Invocation, error) {
	f.started <- struct{}{}
	select {
	case <-f.release:
	case <-ctx.Done():
	}
	return Invocation{Result: &luavm.Result{}}, nil
}

// Two native gRPC InvokeFunction calls of a slow function (an operator's
// tool testing it) hold both native slots for as long as the function
// runs: every other native gRPC call (a read-token dashboard listing the
// logs) waits for them, though neither builds any Struct meanwhile. A
// slot is taken only to build an answer from stored JSON.
func TestNativeSlotsNotHeldBySlowInvocations(t *testing.T) {
	st, err := store.Open(context.Background(), store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	readTok, readHash, _ := NewToken()
	adminTok, adminHash, _ := NewToken()
	fns := &slowFunctions{wakeFunctions: wakeFunctions{ch: make(chan struct{})}, started: make(chan struct{}, 4), release: make(chan struct{})}
	srv, err := New(Config{Store: st, Functions: fns, Logger: slog.New(slog.DiscardHandler),
		Tokens: []Token{{Name: "r", Scope: ScopeRead, Hash: readHash}, {Name: "a", Scope: ScopeAdmin, Hash: adminHash}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: srv.Handler(), Protocols: &protos}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	defer close(fns.release)

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	admin := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+adminTok)
	for i := 0; i < 2; i++ {
		go func() {
			_, _ = v1.NewFunctionServiceClient(conn).InvokeFunction(admin, &v1.InvokeFunctionRequest{Name: "slow"})
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case <-fns.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the invocations did not start")
		}
	}
	read, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+readTok), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = v1.NewLogServiceClient(conn).ListLogs(read, &v1.ListLogsRequest{Limit: 1})
	if status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("a read-token ListLogs waited %v for two running invocations and timed out: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

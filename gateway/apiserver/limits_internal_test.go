package apiserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// limitServer serves an API with cfg's limits (store and functions set
// here) on a loopback port; it returns the base URL and a read and an
// admin token.
func limitServer(t *testing.T, cfg Config) (base, readTok, adminTok string) {
	t.Helper()
	base, readTok, adminTok, _ = limitServerSrv(t, cfg)
	return base, readTok, adminTok
}

// limitServerSrv is limitServer that also returns the server.
func limitServerSrv(t *testing.T, cfg Config) (base, readTok, adminTok string, srv *Server) {
	t.Helper()
	st, err := store.Open(context.Background(), store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	readTok, readHash, _ := NewToken()
	adminTok, adminHash, _ := NewToken()
	cfg.Store, cfg.Functions = st, &wakeFunctions{ch: make(chan struct{})}
	cfg.Tokens = []Token{{Name: "r", Scope: ScopeRead, Hash: readHash}, {Name: "a", Scope: ScopeAdmin, Hash: adminHash}}
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveLoopback(t, srv), readTok, adminTok, srv
}

// serveLoopback serves srv over HTTP on a loopback port until the test
// ends (srv is closed then too) and returns its base URL.
func serveLoopback(t *testing.T, srv *Server) string {
	t.Helper()
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "http://" + ln.Addr().String()
}

// TestFollowersBounded: log follows past MaxFollowers are refused (429,
// RESOURCE_EXHAUSTED); a follow that ends gives its place back.
func TestFollowersBounded(t *testing.T) {
	base, tok, _ := limitServer(t, Config{MaxFollowers: 2, FollowPoll: time.Hour})
	follow := func(ctx context.Context) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/logs:follow", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	for _, ctx := range []context.Context{ctx1, ctx2} {
		if resp := follow(ctx); resp.StatusCode != 200 {
			t.Fatalf("follow: %d", resp.StatusCode)
		}
	}
	resp := follow(context.Background())
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(b), "too many log follows") {
		t.Fatalf("a third follow: %d %s, want 429", resp.StatusCode, b)
	}
	cancel1()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithCancel(context.Background())
		resp := follow(ctx)
		cancel()
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a follow ended: still %d", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond) // the ended follow's handler returns asynchronously
	}
}

// TestBodyBudget: request bodies being read hold their size out of
// BodyBudget; a request whose body does not fit is refused at once (503,
// Retry-After) instead of buffering it, and the budget comes back when the
// stalled requests go away.
func TestBodyBudget(t *testing.T) {
	const limit = 64 << 10
	base, _, tok, srv := limitServerSrv(t, Config{MaxBodyBytes: limit, BodyBudget: 4 * limit})
	addr := strings.TrimPrefix(base, "http://")
	stall := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /v1/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"name\":", tok, limit)
		return c
	}
	post := func() *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/v1/functions", strings.NewReader(`{"name": 1}`+strings.Repeat(" ", 60<<10)))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	var stalled []net.Conn
	for range 4 {
		stalled = append(stalled, stall())
	}
	// The four stalled bodies reserve the whole budget once their reads
	// begin: wait for that (under load it took longer than the loop below
	// gave it, and three of them left room for the probe).
	deadline := time.Now().Add(30 * time.Second)
	for srv.bodies.TryAcquire(1) {
		srv.bodies.Release(1)
		if time.Now().After(deadline) {
			t.Fatal("the four stalled bodies did not reserve the whole budget in 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		resp := post()
		if resp.StatusCode == http.StatusServiceUnavailable {
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with the budget held by stalled bodies: %d, want 503", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond) // the stalled requests reach the handler asynchronously
	}
	for _, c := range stalled {
		c.Close()
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		resp := post()
		if resp.StatusCode == http.StatusBadRequest { // read, then refused as not a function
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stalled requests went: %d, want 400", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// busyFunctions runs an HTTP function "f" that is always at capacity.
type busyFunctions struct{ wakeFunctions }

func (b *busyFunctions) Running(string) (RunningFunction, bool) {
	return RunningFunction{Version: 1, HTTPMethods: []string{"POST"}}, true
}

func (b *busyFunctions) Invoke(context.Context, string, *luavm.Event, bool, func(*luavm.Result) error) (Invocation, error) {
	return Invocation{Result: &luavm.Result{}, Err: fmt.Errorf("luavm: f v1: %w: no instance free within 5s", luavm.ErrBusy)}, nil
}

// TestHTTPFunctionBusy: a function at capacity (nothing ran) answers 503
// with Retry-After, which a client may retry, not 502 (a failure).
func TestHTTPFunctionBusy(t *testing.T) {
	st, err := store.Open(context.Background(), store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	tok, hash, _ := NewToken()
	srv, err := New(Config{Store: st, Functions: &busyFunctions{wakeFunctions{ch: make(chan struct{})}},
		Tokens: []Token{{Name: "r", Scope: ScopeRead, Hash: hash}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	req := httptest.NewRequest("POST", "/fn/f", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+tok)
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, req)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "busy") {
		t.Fatalf("busy function: %d %q %s, want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"), w.Body.String())
	}
}

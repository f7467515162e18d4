package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// scanRecorder is the real store, recording the after of each ScanLogs.
type scanRecorder struct {
	*store.Store
	mu     sync.Mutex
	afters []uint64
}

func (r *scanRecorder) ScanLogs(ctx context.Context, function, invocationID string, after uint64, limit int) ([]store.LogRecord, uint64, error) {
	r.mu.Lock()
	r.afters = append(r.afters, after)
	r.mu.Unlock()
	return r.Store.ScanLogs(ctx, function, invocationID, after, limit)
}

func (r *scanRecorder) take() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.afters
	r.afters = nil
	return a
}

// wakeFunctions is a Functions whose commit signal the test gives.
type wakeFunctions struct {
	Functions
	mu sync.Mutex
	ch chan struct{}
}

func (w *wakeFunctions) Committed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *wakeFunctions) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
}

// Log pages and followers filtered on an invocation move past the lines
// that do not match: a page reads at most store.MaxLogScan lines, and a
// follower reads each line once instead of the whole log on every commit.
func TestLogsMovePastOtherInvocations(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	const n = 2*store.MaxLogScan + 5000
	now := time.Now().UnixMilli()
	for i := 0; i < n; i += 500 {
		logs := make([]store.LogRecord, 500)
		for j := range logs {
			logs[j] = store.LogRecord{Function: "f", InvocationID: "a", Level: "info", Msg: "m", TS: now}
		}
		if _, err := st.Commit(ctx, &store.Commit{Logs: logs}); err != nil {
			t.Fatal(err)
		}
	}
	rec := &scanRecorder{Store: st}
	fns := &wakeFunctions{ch: make(chan struct{})}
	token, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: rec, Functions: fns, Tokens: []Token{{Name: "r", Scope: ScopeRead, Hash: hash}},
		FollowPoll: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	base := serveLoopback(t, srv)
	get := func(ctx context.Context, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return resp
	}

	// Pages: each reads MaxLogScan lines at most and moves past them.
	var nexts []string
	after := "0"
	for {
		resp := get(ctx, "/v1/logs?invocation_id=nomatch&after="+after)
		var page struct {
			Lines     []any  `json:"lines"`
			NextAfter string `json:"next_after"`
		}
		err := json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || len(page.Lines) != 0 {
			t.Fatalf("page after %s: %+v %v", after, page, err)
		}
		if page.NextAfter == after {
			break
		}
		nexts = append(nexts, page.NextAfter)
		after = page.NextAfter
	}
	if want := fmt.Sprint([]int{store.MaxLogScan, 2 * store.MaxLogScan, n}); fmt.Sprint(nexts) != want {
		t.Fatalf("next_after of the pages: %v, want %s", nexts, want)
	}

	// Follow invocation b: the start is the end; then each commit reads
	// only what is new.
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second) // a follower that misses the line fails, not hangs
	defer cancel()
	rec.take()
	resp := get(fctx, "/v1/logs:follow?invocation_id=b") // headers: the start position is taken
	defer resp.Body.Close()
	// Without a tail the start is the end: the log is not read to find
	// it (every follow read the whole log, up to its quota, first).
	for _, a := range rec.take() {
		if a < n {
			t.Fatalf("follow read the log before its start (from %d)", a)
		}
	}
	for i := 0; i < 3; i++ {
		inv := "a"
		if i == 2 {
			inv = "b"
		}
		if _, err := st.Commit(ctx, &store.Commit{Logs: []store.LogRecord{{Function: "f", InvocationID: inv, Level: "info", Msg: "new", TS: now}}}); err != nil {
			t.Fatal(err)
		}
		fns.wake()
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("follow: no line: %v", sc.Err())
	}
	var line struct {
		Result struct {
			Seq          string `json:"seq"`
			InvocationID string `json:"invocation_id"`
		} `json:"result"`
	}
	if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Result.Seq != strconv.Itoa(n+3) || line.Result.InvocationID != "b" {
		t.Fatalf("follow: %s %v", sc.Bytes(), err)
	}
	afters := rec.take()
	if len(afters) == 0 {
		t.Fatal("follow: no read recorded")
	}
	for _, a := range afters {
		if a < n {
			t.Fatalf("follow read from %d again (reads after the start: %v)", a, afters)
		}
	}
}

// TestFollowTailMemoryBounded: a follow's tail (up to 1000 lines, each up
// to 8 KiB of message and 8 KiB of fields) was collected whole before it
// was sent, and held while a client that does not read received it: 64
// follows (the default MaxFollowers) held about 1 GiB. The tail is now
// streamed from its first line in bounded pages. (The headers come after
// the tail was found, so once every response has its headers the old code
// held every ring.)
func TestFollowTailMemoryBounded(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	msg := strings.Repeat("m", 8000)
	fields := []byte(`{"x":"` + strings.Repeat("f", 7000) + `"}`)
	now := time.Now().UnixMilli()
	for i := 0; i < 1000; i += 50 {
		logs := make([]store.LogRecord, 50)
		for j := range logs {
			logs[j] = store.LogRecord{Function: "f", InvocationID: fmt.Sprint(i + j), Level: "info", Msg: msg, Fields: fields, TS: now}
		}
		if _, err := st.Commit(ctx, &store.Commit{Logs: logs}); err != nil {
			t.Fatal(err)
		}
	}
	token, hash, _ := NewToken()
	srv, err := New(Config{Store: st, Functions: &wakeFunctions{ch: make(chan struct{})}, Tokens: []Token{{Name: "r", Scope: ScopeRead, Hash: hash}},
		FollowPoll: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	base := serveLoopback(t, srv)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var open []*http.Response
	for i := 0; i < 64; i++ {
		req, _ := http.NewRequestWithContext(fctx, "GET", base+"/v1/logs:follow?tail=1000", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("follow %d: %d %s", i, resp.StatusCode, b)
		}
		open = append(open, resp) // never read: a slow client
	}
	grown := int64(heap()) - int64(before)
	for _, r := range open {
		r.Body.Close()
	}
	t.Logf("heap grew by %d MiB with 64 follows open", grown>>20)
	if grown > 256<<20 { // about 90 MiB now: a page and the transport's buffers per follow
		t.Fatalf("64 log follows with tail=1000 hold %d MiB of heap (a list page is bounded at 1 MiB)", grown>>20)
	}
}

// TestFollowTail: a follow with tail=N starts with the last N lines that
// match its filter, oldest first, then streams new lines; fewer than N
// lines in the log stream them all.
func TestFollowTail(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Durability: store.DurabilityNone, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	now := time.Now().UnixMilli()
	commit := func(fn, msg string) {
		t.Helper()
		if _, err := st.Commit(ctx, &store.Commit{Logs: []store.LogRecord{{Function: fn, InvocationID: "i", Level: "info", Msg: msg, TS: now}}}); err != nil {
			t.Fatal(err)
		}
	}
	// 3,000 lines of f (more than a scan page) between lines of g.
	for i := range 3000 {
		commit("f", fmt.Sprint("f", i))
		if i%100 == 0 {
			commit("g", fmt.Sprint("g", i))
		}
	}
	fns := &wakeFunctions{ch: make(chan struct{})}
	token, hash, _ := NewToken()
	srv, err := New(Config{Store: st, Functions: fns, Tokens: []Token{{Name: "r", Scope: ScopeRead, Hash: hash}},
		FollowPoll: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	base := serveLoopback(t, srv)
	// follow reads the tail of fn's lines and, once it has it, sees the
	// next line of fn (committed after one of the other function).
	follow := func(fn, other string, tail int, want ...string) {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(fctx, "GET", fmt.Sprintf("%s/v1/logs:follow?function=%s&tail=%d", base, fn, tail), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var got []string
		for len(got) < len(want) && sc.Scan() {
			var line struct {
				Result struct {
					Msg string `json:"msg"`
				} `json:"result"`
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("%s: %s", sc.Bytes(), err)
			}
			got = append(got, line.Result.Msg)
			if len(got) == len(want)-1 {
				commit(other, other+"-between")
				commit(fn, want[len(want)-1])
				fns.wake()
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("follow of %s with tail=%d: %v, want %v", fn, tail, got, want)
		}
	}
	follow("f", "g", 3, "f2997", "f2998", "f2999", "f-new")
	follow("g", "f", 2, "g2900", "g-between", "g-new")
	// A tail longer than the lines there are: all of them.
	want := []string{}
	for i := 0; i < 3000; i += 100 {
		want = append(want, fmt.Sprint("g", i))
	}
	follow("g", "f", 1000, append(want, "g-between", "g-new", "g-last")...)
}

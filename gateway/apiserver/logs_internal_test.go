package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
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

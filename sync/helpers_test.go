package sync

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

func quietLogger() *slog.Logger {
	if os.Getenv("SYNC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func openStore(t testing.TB, dir string, dur store.Durability) *store.Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := store.Open(context.Background(), store.Options{Dir: dir, GatewayID: "gw", Durability: dur, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// sent is a record committed by a test producer.
type sent struct {
	ID     string
	Seq    uint64
	Stream string
}

// commitRecords commits n records (one commit per chunk of up to 100), each
// routed to targets, in streams s0..s(streams-1) round robin.
func commitRecords(t testing.TB, st *store.Store, n, streams int, targets ...string) []sent {
	t.Helper()
	var out []sent
	for i := 0; i < n; {
		c := &store.Commit{}
		for j := 0; j < 100 && i < n; j, i = j+1, i+1 {
			c.Records = append(c.Records, store.Record{Stream: fmt.Sprintf("s%d", i%streams), Function: "f", Device: "d1",
				EventID: fmt.Sprintf("e%d", i), EventTS: time.Now().UnixMilli(), Data: []byte(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 64))), Targets: targets})
		}
		res, err := st.Commit(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Records {
			out = append(out, sent{ID: r.ID, Seq: r.Seq, Stream: r.Stream})
		}
	}
	return out
}

// upRecord is the part of a delivered line the tests check.
type upRecord struct {
	ID     string          `json:"id"`
	Seq    uint64          `json:"seq"`
	Stream string          `json:"stream"`
	Data   json.RawMessage `json:"data"`
}

// collector gathers what an upstream received, in arrival order.
type collector struct {
	mu   gosync.Mutex
	recs []upRecord
}

func (c *collector) add(rs ...upRecord) {
	c.mu.Lock()
	c.recs = append(c.recs, rs...)
	c.mu.Unlock()
}

func (c *collector) snapshot() []upRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]upRecord(nil), c.recs...)
}

func (c *collector) distinct() int {
	seen := map[string]bool{}
	for _, r := range c.snapshot() {
		seen[r.ID] = true
	}
	return len(seen)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkDelivery verifies the upstream's view: every sent id at least once,
// per stream the first arrivals in sequence order, and every received id
// was sent. It returns the number of duplicate arrivals.
func checkDelivery(t testing.TB, want []sent, got []upRecord) int {
	t.Helper()
	byID := map[string]sent{}
	for _, s := range want {
		byID[s.ID] = s
	}
	seen := map[string]bool{}
	last := map[string]uint64{}
	dups := 0
	for _, r := range got {
		s, ok := byID[r.ID]
		if !ok {
			// Records from an earlier run of a crash test are in want too;
			// anything else is an error.
			t.Errorf("upstream got unknown id %q", r.ID)
			continue
		}
		if r.Seq != s.Seq || r.Stream != s.Stream {
			t.Errorf("id %s arrived as seq %d stream %s, sent as %d %s", r.ID, r.Seq, r.Stream, s.Seq, s.Stream)
		}
		if seen[r.ID] {
			dups++
			continue
		}
		seen[r.ID] = true
		if r.Seq <= last[r.Stream] {
			t.Errorf("stream %s: id %s (seq %d) first arrived after seq %d", r.Stream, r.ID, r.Seq, last[r.Stream])
		}
		last[r.Stream] = r.Seq
	}
	var missing []string
	for _, s := range want {
		if !seen[s.ID] {
			missing = append(missing, s.ID)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Errorf("%d of %d records never reached the upstream, e.g. %v", len(missing), len(want), missing[:min(5, len(missing))])
	}
	return dups
}

// httpUpstream is an httptest server that accepts NDJSON batches, with
// switchable failure modes.
type httpUpstream struct {
	*httptest.Server
	col      collector
	mode     atomic.Value // string: ok | 503 | 429 | 400 | drop | slow
	slow     atomic.Int64 // ns per request in slow mode
	reject   func(upRecord) bool
	requests atomic.Int64
	keys     gosync.Map // idempotency key -> ids joined
	keyErr   atomic.Value
	lastReq  atomic.Int64 // unix ns
	discard  atomic.Bool  // count records only (memory tests, benchmarks)
	count    atomic.Int64 // records accepted
}

func newHTTPUpstream(t testing.TB) *httpUpstream {
	u := &httpUpstream{}
	u.mode.Store("ok")
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *httpUpstream) setMode(m string) { u.mode.Store(m) }

func (u *httpUpstream) serve(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	u.lastReq.Store(time.Now().UnixNano())
	switch u.mode.Load().(string) {
	case "503":
		w.Header().Set("Retry-After", "0")
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	case "429":
		w.Header().Set("Retry-After", "1")
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	case "drop":
		// Read part of the batch, then drop the connection.
		_, _ = io.CopyN(io.Discard, r.Body, 100)
		hj, ok := w.(http.Hijacker)
		if ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.(*net.TCPConn).SetLinger(0)
				_ = c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	case "slow":
		time.Sleep(time.Duration(u.slow.Load()))
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, "bad gzip", http.StatusBadRequest)
			return
		}
		body = zr
	}
	recs, status, err := readNDJSON(body)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	var ids []string
	for _, rec := range recs {
		ids = append(ids, rec.ID)
	}
	key := r.Header.Get("Idempotency-Key")

	joined := strings.Join(ids, ",")
	if u.discard.Load() {
		joined = strconv.Itoa(len(ids)) // bounded memory in memory tests and benchmarks
	}
	if prev, loaded := u.keys.LoadOrStore(key, joined); loaded && prev.(string) != joined {
		u.keyErr.Store(fmt.Sprintf("key %s reused for a different batch", key))
	}
	if u.reject != nil {
		for _, rec := range recs {
			if u.reject(rec) {
				http.Error(w, "refused record "+rec.ID, http.StatusBadRequest)
				return
			}
		}
	}
	if u.mode.Load().(string) == "400" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	u.count.Add(int64(len(recs)))
	if !u.discard.Load() {
		u.col.add(recs...)
	}
	w.WriteHeader(http.StatusNoContent)
}

// startManager runs a manager over st with the given targets until the
// test ends (or the returned stop is called).
func startManager(t testing.TB, st Store, targets ...TargetConfig) (*Manager, func()) {
	t.Helper()
	m, err := New(Options{Store: st, GatewayID: "gw", Logger: quietLogger(), Targets: targets, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once gosync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return m, stop
}

func fastTarget(name, typ string) TargetConfig {
	return TargetConfig{Name: name, Type: typ, MaxRecords: 200, MaxDelay: 5 * time.Millisecond,
		InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, AckTimeout: 5 * time.Second}
}

func statusOf(m *Manager, name string) TargetStatus {
	for _, s := range m.Status() {
		if s.Name == name {
			return s
		}
	}
	return TargetStatus{}
}

var _ = bytes.NewReader

// readNDJSON reads an NDJSON request body of records; on error it also
// returns the HTTP status to answer with.
func readNDJSON(body io.Reader) ([]upRecord, int, error) {
	var recs []upRecord
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec upRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("bad line: %w", err)
		}
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, http.StatusInternalServerError, fmt.Errorf("read: %w", err)
	}
	return recs, 0, nil
}

package sync

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// burstUpstream is an http upstream that takes at most burst records per
// request (413 above it: the target splits the batch) and at most burst
// records between two overloads: a request that would take more answers
// 503, and the count starts again. Each delivery attempt of a larger batch
// thus delivers part of it, then fails. The first request after a 503
// (the start of the next attempt) reports the time since that 503 on gaps.
type burstUpstream struct {
	*httptest.Server
	burst int
	total int // records to receive; done is closed when they all arrived
	gaps  chan time.Duration
	done  chan struct{}
	col   collector

	mu       gosync.Mutex
	taken    int       // records accepted since the last 503
	failedAt time.Time // of the last 503, zero once the next attempt started
	seen     map[string]bool
}

func newBurstUpstream(t testing.TB, burst, total int) *burstUpstream {
	u := &burstUpstream{burst: burst, total: total, gaps: make(chan time.Duration, 1000), done: make(chan struct{}), seen: map[string]bool{}}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *burstUpstream) serve(w http.ResponseWriter, r *http.Request) {
	recs, status, err := readNDJSON(r.Body)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.failedAt.IsZero() {
		select {
		case u.gaps <- now.Sub(u.failedAt):
		default:
		}
		u.failedAt = time.Time{}
	}
	switch {
	case len(recs) > u.burst:
		http.Error(w, fmt.Sprintf("at most %d records per request", u.burst), http.StatusRequestEntityTooLarge)
		return
	case u.taken+len(recs) > u.burst:
		u.taken, u.failedAt = 0, time.Now()
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
		return
	}
	u.taken += len(recs)
	u.col.add(recs...)
	for _, rec := range recs {
		u.seen[rec.ID] = true
	}
	if len(u.seen) == u.total {
		close(u.done)
	}
	w.WriteHeader(http.StatusNoContent)
}

// TestBackoffResetByProgress: a slow but working upstream, which takes
// part of every attempt and fails the rest, is retried after the initial
// backoff every time: the backoff grows only across attempts that
// delivered nothing, never up to max_backoff while the outbox moves.
func TestBackoffResetByProgress(t *testing.T) {
	const n, burst = 100, 10
	st := openStore(t, "", store.DurabilityNone)
	up := newBurstUpstream(t, burst, n)
	want := commitRecords(t, st, n, 1, "cloud")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.HTTP.Compression = "none"
	tc.MaxRecords = n
	tc.InitialBackoff = 20 * time.Millisecond
	tc.MaxBackoff = 10 * time.Second
	m, _ := startManager(t, st, tc)

	// A wait (full jitter) is below InitialBackoff when the attempt
	// counter restarts after progress; without that, after k failures it
	// is uniform below 20ms×2^k (up to 10s), and a dozen attempts exceed
	// the bound all but surely. The bound (50 x the initial backoff)
	// leaves room for a loaded machine.
	const bound = time.Second
	var gaps []time.Duration
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for delivered := false; !delivered; {
		select {
		case g := <-up.gaps:
			gaps = append(gaps, g)
			if g > bound {
				t.Fatalf("attempt %d came %s after the previous one failed with progress (bound %s): the backoff grew; waits: %v", len(gaps)+1, g, bound, gaps)
			}
		case <-up.done:
			delivered = true
		case <-deadline.C:
			t.Fatalf("not delivered after 20s: %d of %d records, waits between attempts: %v", up.col.distinct(), n, gaps)
		}
	}
	if len(gaps) < 5 {
		t.Fatalf("only %d failed attempts with progress; the upstream should fail most attempts: waits %v", len(gaps), gaps)
	}
	if dups := checkDelivery(t, want, up.col.snapshot()); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	// The worker acknowledges, then counts, then sets the state.
	waitFor(t, 5*time.Second, "outbox acknowledged and counted", func() bool {
		s := statusOf(m, "cloud")
		return st.OutboxStats("cloud").Backlog == 0 && s.Delivered == n && s.State == StateConnected
	})
	if s := statusOf(m, "cloud"); s.DeadLettered != 0 {
		t.Errorf("status %+v", s)
	}
	t.Logf("%d attempts failed after partial progress, waits %v", len(gaps), gaps)
}

// countingProxy forwards TCP connections to a target address and counts
// them.
type countingProxy struct {
	ln net.Listener
	n  atomic.Int64
}

func startCountingProxy(t testing.TB, target string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.n.Add(1)
			b, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(b, c)
			go pipe(c, b)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

// TestIdleReconnectHonoursBackoff: two gateways cloned from one image
// (same gateway id, hence the same MQTT client id) take the session from
// each other at every connect. A connection that the broker closes right
// after it was made is a failure: the idle reconnects are spaced by the
// backoff. (A connect that succeeded reset the backoff and set no next
// attempt time: the two reconnected 68 times a second.)
func TestIdleReconnectHonoursBackoff(t *testing.T) {
	mq := mqtttest.StartMosquitto(t)
	px := startCountingProxy(t, mq.Addr())
	mk := func() *Manager {
		st := openStore(t, "", store.DurabilityNone)
		tc := fastTarget("broker", "mqtt")
		tc.MQTT.Broker = "tcp://" + px.ln.Addr().String()
		tc.MQTT.ClientID = "moongate-sync-gw-broker" // both gateways have gateway_id gw
		tc.InitialBackoff = time.Second
		tc.MaxBackoff = 10 * time.Second
		m, err := New(Options{Store: st, GatewayID: "gw", Logger: quietLogger(), Targets: []TargetConfig{tc}}) // default 20ms poll
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return m
	}
	a := mk()
	waitFor(t, 10*time.Second, "first gateway connected", func() bool { return statusOf(a, "broker").Connected })
	start := px.n.Load()
	b := mk()
	waitFor(t, 10*time.Second, "the second gateway's connection", func() bool { return px.n.Load() > start })
	// Counting over a window is the point: how often they reconnect.
	time.Sleep(3 * time.Second)
	got := px.n.Load() - start
	sa, sb := statusOf(a, "broker"), statusOf(b, "broker")
	// With backoff.initial 1s (full jitter, mean 0.5s, growing with each
	// loss) two clients make a handful of connections in 3 s.
	if got > 30 {
		t.Fatalf("%d broker connections in about 3s from two idle targets with backoff.initial 1s (%.0f/s); last errors %q, %q",
			got, float64(got)/3, sa.LastError, sb.LastError)
	}
	// Each connect takes the other's session: the loss is reported.
	if !strings.Contains(sa.LastError, "connection lost") && !strings.Contains(sb.LastError, "connection lost") {
		t.Errorf("last errors %q, %q: the lost connections are not reported", sa.LastError, sb.LastError)
	}
	t.Logf("%d connections in 3s", got)
}

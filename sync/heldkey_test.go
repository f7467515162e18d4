package sync

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// TestHeldRetryKeepsIdempotencyKey: a batch whose POST failed (a 503,
// or an answer lost to the ack timeout after the upstream stored it) is
// retried as is, with the same Idempotency-Key (docs/sync.md), also when
// the outbox quota dropped some of its entries while it waited: trimmed,
// the records still in it were posted again under another key, and an
// upstream that dedupes on the key stored them twice. Found by a review
// (TestRevHeldRetryKeepsIdempotencyKey).
func TestHeldRetryKeepsIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), GatewayID: "gw", Durability: store.DurabilityNone, Logger: quietLogger(),
		Quotas: map[string]store.Quota{"outbox": {MaxBytes: 16 << 10, Policy: store.DropOldest}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	type post struct {
		key string
		ids []string
	}
	var mu gosync.Mutex
	var posts []post
	var ok atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				w.WriteHeader(400)
				return
			}
			body = zr
		}
		recs, code, err := readNDJSON(body)
		if err != nil {
			w.WriteHeader(code)
			return
		}
		p := post{key: r.Header.Get("Idempotency-Key")}
		for _, rc := range recs {
			p.ids = append(p.ids, rc.ID)
		}
		mu.Lock()
		posts = append(posts, p)
		mu.Unlock()
		if !ok.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer up.Close()
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.InitialBackoff, tc.MaxBackoff = 50*time.Millisecond, 100*time.Millisecond
	startManager(t, st, tc)
	commitRecords(t, st, 40, 1, "cloud")
	waitFor(t, 5*time.Second, "the first POST", func() bool { mu.Lock(); defer mu.Unlock(); return len(posts) > 0 })
	// Over the 16 KiB outbox quota: the oldest entries go, some of the
	// held batch's only.
	for st.OutboxStats("cloud").Dropped < 10 {
		commitRecords(t, st, 5, 1, "cloud")
		if _, err := st.RunRetention(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("dropped %d of the held batch of 40", st.OutboxStats("cloud").Dropped)
	ok.Store(true)
	waitFor(t, 10*time.Second, "backlog drained", func() bool { return st.OutboxStats("cloud").Backlog == 0 })
	mu.Lock()
	defer mu.Unlock()
	first := posts[0]
	inFirst := map[string]bool{}
	for _, id := range first.ids {
		inFirst[id] = true
	}
	for _, p := range posts[1:] {
		shared := 0
		for _, id := range p.ids {
			if inFirst[id] {
				shared++
			}
		}
		if shared > 0 && p.key != first.key {
			t.Fatalf("a retry carried %d of the first POST's %d records (of %d) under another Idempotency-Key (%s..., first %s...); dropped %d",
				shared, len(first.ids), len(p.ids), p.key[:12], first.key[:12], st.OutboxStats("cloud").Dropped)
		}
	}
}

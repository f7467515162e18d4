package sync

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// An HTTP upstream answering with megabytes of headers: the target took up
// to Go's default of 10 MiB of them per request (and counted the batch as
// delivered). Headers over 64 KiB fail the request like a broken answer.
func TestHTTPUpstreamHugeHeadersRefused(t *testing.T) {
	var answered atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answered.Add(1)
		w.Header().Set("X-Big", strings.Repeat("a", 2<<20))
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	st := openStore(t, "", store.DurabilityNone)
	commitRecords(t, st, 3, 1, "up")
	cfg := fastTarget("up", "http")
	cfg.HTTP = HTTPConfig{URL: srv.URL}
	m, _ := startManager(t, st, cfg)
	waitFor(t, 10*time.Second, "an error for the huge headers", func() bool {
		return strings.Contains(statusOf(m, "up").LastError, "header")
	})
	if s := statusOf(m, "up"); s.Delivered != 0 || s.Backlog != 3 {
		t.Fatalf("status %+v: want nothing delivered, 3 records kept", s)
	}
	if answered.Load() == 0 {
		t.Fatal("test broken: the upstream was never asked")
	}
}

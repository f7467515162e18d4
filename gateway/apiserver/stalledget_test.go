package apiserver_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"golang.org/x/net/http2"
)

// stalledGETs opens an HTTP/2 connection (prior knowledge) whose stream
// windows are 0 and never opened, sends n GET requests to path, and
// returns once the response headers of all arrived (each function ran
// and its handler is writing the body). resets counts the streams the
// server resets afterwards.
func stalledGETs(t *testing.T, addr, path string, n int, resets *atomic.Int32) {
	t.Helper()
	fr := h2Stalled(t, addr)
	for i := 0; i < n; i++ {
		block := h2Headers([2]string{":method", "GET"}, [2]string{":scheme", "http"}, [2]string{":authority", "x"}, [2]string{":path", path},
			[2]string{"authorization", "Bearer " + readToken})
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
	}
	h2AwaitHeaders(t, fr, n, resets)
}

// TestStalledGETResponseIsCutOff: the response of an HTTP
// function to a request with a body must be written within a minute of
// its first byte (docs/api.md). A GET has no body, so its response gets
// no deadline at all: a read-token client that never opens its HTTP/2
// window keeps every such handler blocked in Write for ever, each holding
// the function's whole response (up to max_result_bytes, 1 MiB): with 16
// streams per connection and api.max_connections 128 connections, 2 GiB
// on a 512 MB gateway. Here 4 connections x 16 streams hold ~64 MB and
// are never released, while the same responses to POSTs are reset at the
// deadline.
func TestStalledGETResponseIsCutOff(t *testing.T) {
	apiserver.SetResponseWriteTimeout(t, 500*time.Millisecond)
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source":   `function handle(event, ctx) return string.rep("y", 1000000) end`,
		"triggers": []obj{{"http": obj{"methods": []string{"GET", "POST"}}}},
		"limits":   obj{"max_result_bytes": "1000000"}}, nil)
	addr := strings.TrimPrefix(e.base, "http://")
	before := heapInUse()
	var resets atomic.Int32
	const conns, streams = 4, 16
	for i := 0; i < conns; i++ {
		stalledGETs(t, addr, "/fn/big/x", streams, &resets)
	}
	held := int64(heapInUse()) - int64(before)
	t.Logf("heap held by %d stalled GET responses: %d MB", conns*streams, held>>20)
	// At 10 x the response write deadline, every stalled response should
	// have been reset and its memory given back.
	deadline := time.Now().Add(5 * time.Second)
	for resets.Load() < conns*streams && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	after := int64(heapInUse()) - int64(before)
	if got := resets.Load(); got < conns*streams {
		t.Fatalf("%d of %d stalled GET responses reset 5 s after the write deadline (500 ms); %d MB of heap still held by them", got, conns*streams, after>>20)
	}
}

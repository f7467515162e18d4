package apiserver_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
)

// TestFollowSuffixKeepsWriteDeadline: limitBody exempts a response
// from the write deadline when the request's path merely ends in
// ":follow" (meant for /v1/logs:follow). Any HTTP function path does
// ("/fn/big/x:follow"), so a read-token client that never opens its
// HTTP/2 window holds every such handler and its whole response (up to
// max_result_bytes) for ever: the hole TestStalledGETResponseIsCutOff
// closed, reopened by a suffix.
func TestFollowSuffixKeepsWriteDeadline(t *testing.T) {
	apiserver.SetResponseWriteTimeout(t, 500*time.Millisecond)
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source":   `function handle(event, ctx) return string.rep("y", 1000000) end`,
		"triggers": []obj{{"http": obj{"methods": []string{"GET", "POST"}}}},
		"limits":   obj{"max_result_bytes": "1000000"}}, nil)
	addr := strings.TrimPrefix(e.base, "http://")
	for _, path := range []string{"/fn/big/x", "/fn/big/x:follow"} {
		before := heapInUse()
		var resets atomic.Int32
		const streams = 16
		stalledGETs(t, addr, path, streams, &resets)
		deadline := time.Now().Add(5 * time.Second)
		for resets.Load() < streams && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		held := int64(heapInUse()) - int64(before)
		if got := resets.Load(); got < streams {
			t.Errorf("GET %s: %d of %d stalled responses reset 5 s after the write deadline (500 ms); %d MB of heap held", path, got, streams, held>>20)
		} else {
			t.Logf("GET %s: all %d stalled responses reset", path, streams)
		}
	}
}

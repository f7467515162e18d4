package apiserver_test

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"golang.org/x/net/http2"
)

// stalledFnCall sends one POST of size body bytes to path over a new
// HTTP/2 connection (prior knowledge) whose stream windows are 0 and never
// opened: the server can send no byte of the response. It returns once the
// response headers arrived (the function ran and the handler writes).
func stalledFnCall(t *testing.T, addr, path string, size int) {
	t.Helper()
	fr := h2Stalled(t, addr)
	// The server's receive windows (1 MiB) before the body.
	gotSettings, gotWindow := false, false
	for !gotSettings || !gotWindow {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				gotSettings = true
				_ = fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			gotWindow = gotWindow || f.StreamID == 0
		}
	}
	block := h2Headers([2]string{":method", "POST"}, [2]string{":scheme", "http"}, [2]string{":authority", "x"}, [2]string{":path", path},
		[2]string{"authorization", "Bearer " + readToken}, [2]string{"content-length", strconv.Itoa(size)})
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("b"), size)
	for len(body) > 0 {
		n := min(len(body), 16384)
		if err := fr.WriteData(1, n == len(body), body[:n]); err != nil {
			t.Fatal(err)
		}
		body = body[n:]
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				go func() { // keep the connection serviced; never grant a window
					for {
						if _, err := fr.ReadFrame(); err != nil {
							return
						}
					}
				}()
				return
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("goaway: %v", f.ErrCode)
		}
	}
}

// TestStalledHTTPFunctionResponseReleasesBodyBudget: a client holding a
// read token calls an HTTP function over HTTP/2 and never opens its
// flow-control window. The function ran and committed; the handler then
// blocked in Write for ever and kept the reservation its request body took
// of the shared body budget (4 x api.max_body_bytes): four such calls made
// every later request with a body (deploys, state writes, invokes, other
// HTTP functions) 503 for as long as the client kept its sockets. The
// response write now has a deadline from its first byte.
func TestStalledHTTPFunctionResponseReleasesBodyBudget(t *testing.T) {
	apiserver.SetResponseWriteTimeout(t, 500*time.Millisecond)
	e := startDaemon(t, daemonConfig(t.TempDir(), "")) // max_body_bytes 1MiB: budget 4MiB
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source":   `function handle(event, ctx) return string.rep("y", 1000000) end`,
		"triggers": []obj{{"http": obj{"methods": []string{"POST"}}}},
		"limits":   obj{"max_result_bytes": "1000000"}}, nil)
	addr := strings.TrimPrefix(e.base, "http://")
	for _, size := range []int{1 << 20, 1 << 20, 1 << 20, 1<<20 - 8} {
		stalledFnCall(t, addr, "/fn/big/x", size)
	}
	// The four bodies were read and their functions returned; the stalled
	// writes end at their deadline and give the budget back.
	deadline := time.Now().Add(20 * time.Second)
	var code int
	var out []byte
	for time.Now().Before(deadline) {
		code, out = e.call("POST", "/v1/functions/big:invoke", adminToken, obj{"event": obj{"payload_text": "{}"}})
		if code != 503 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("every request with a body refused for 20 s while one client holds 4 stalled /fn responses: %d %.300s", code, out)
}

package apiserver_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestGetWithBodyRefused: no GET route reads a body, but one sent with a
// GET was read and its share of the body budget held until the handler
// returned: four log follows of a read token sent with 1 MiB bodies made
// every request with a body 503 for as long as they stayed open. A GET
// with a body is a 400 now, before the body is read.
func TestGetWithBodyRefused(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), "")) // max_body_bytes 1MiB: budget 4MiB
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f",
		"source":   `function handle(event, ctx) return "ok" end`,
		"triggers": []obj{{"http": obj{"methods": []string{"POST"}}}}}, nil)
	addr := strings.TrimPrefix(e.base, "http://")
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		body := bytes.Repeat([]byte("x"), 1<<20)
		fmt.Fprintf(c, "GET /v1/logs:follow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", readToken, len(body))
		go func() { _, _ = c.Write(body) }() // refused unread: the write may fail
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 400 {
			t.Fatalf("follow %d with a body: status %d", i, resp.StatusCode)
		}
	}
	if code, out := e.call("POST", "/v1/functions/f:invoke", adminToken, obj{"event": obj{"payload_text": "{}"}}); code != 200 {
		t.Fatalf("invoke after the follows: %d %.300s", code, out)
	}
	// Without a body, or with an empty chunked one (a Go client given an
	// empty reader sends that), a GET works as before.
	if code, _ := e.call("GET", "/v1/logs?function=f", readToken, nil); code != 200 {
		t.Fatalf("GET without a body: %d", code)
	}
	req, _ := http.NewRequest("GET", e.base+"/v1/logs?function=f", struct{ io.Reader }{strings.NewReader("")})
	req.Header.Set("Authorization", "Bearer "+readToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET with an empty chunked body: %d", resp.StatusCode)
	}
}

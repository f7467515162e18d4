package gateway

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The listener holds at most n connections open: the next is closed
// unread and counted; closing one (once, however often Close is called)
// makes room for exactly one more.
func TestConnLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newConnLimitListener(inner, 2, slog.New(slog.DiscardHandler))
	defer l.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", inner.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	next := func() net.Conn {
		t.Helper()
		select {
		case c := <-accepted:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no connection accepted")
			return nil
		}
	}
	dial()
	dial()
	a, _ := next(), next()
	third := dial()
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("third connection: read %v, want EOF (closed unread)", err)
	}
	if n := l.Shed(); n != 1 {
		t.Fatalf("Shed = %d, want 1", n)
	}
	a.Close()
	a.Close() // gives back one place, not two
	dial()
	next()
	fifth := dial()
	_ = fifth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := fifth.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection past the bound after a double Close: read %v, want EOF", err)
	}
	if n := l.Shed(); n != 2 {
		t.Fatalf("Shed = %d, want 2", n)
	}
}

// api.max_connections reaches the daemon's HTTP server: idle sockets
// holding every place make the next request fail at once, the refusals
// are counted in /metrics, and closed sockets give their places back.
func TestAPIConnectionsBounded(t *testing.T) {
	fnDir := t.TempDir()
	cfg := strings.Replace(testConfig(t.TempDir(), fnDir, ""), `api: {listen: "127.0.0.1:0"}`, `api: {listen: "127.0.0.1:0", max_connections: 2}`, 1)
	p := startInProcess(t, cfg)
	addr := p.d.HTTPAddr().String()
	idle := make([]net.Conn, 2)
	for i := range idle {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle[i] = c
	}
	waitFor(t, 10*time.Second, "a connection shed", func() bool {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		_, err = c.Read(make([]byte, 1))
		return err == io.EOF && p.d.httpLim.Shed() >= 1
	})
	idle[0].Close()
	idle[1].Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var shed int
	waitFor(t, 10*time.Second, "/metrics to be served again", func() bool {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "moongate_api_connections_shed_total "); ok {
				shed, _ = strconv.Atoi(v)
				return true
			}
		}
		t.Fatalf("/metrics lacks moongate_api_connections_shed_total:\n%s", b)
		return false
	})
	if shed < 1 {
		t.Fatalf("moongate_api_connections_shed_total = %d, want at least 1", shed)
	}
}

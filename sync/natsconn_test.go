package sync

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// pipeConn is a net.Conn reading from r (the server's bytes).
type pipeConn struct {
	net.Conn
	r io.Reader
}

func (p *pipeConn) Read(b []byte) (int, error) { return p.r.Read(b) }
func (p *pipeConn) Close() error               { return nil }

// readAllBounded reads stream through a natsBoundedConn, n bytes per read.
func readAllBounded(stream []byte, n int) ([]byte, error) {
	c := &natsBoundedConn{Conn: &pipeConn{r: bytes.NewReader(stream)}, max: 1024}
	var out []byte
	buf := make([]byte, n)
	for {
		k, err := c.Read(buf)
		out = append(out, buf[:k]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// TestNATSBoundedConn: the bytes of a NATS server pass unchanged, at every
// read size; a message announcing more than the bound, a control line
// over the limit or an unreadable message line fail the read before the
// line's end is passed on; after an INFO asking for TLS everything passes.
func TestNATSBoundedConn(t *testing.T) {
	ok := "INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING\r\n+OK\r\n" +
		"MSG _INBOX.a.b 1 5\r\nhello\r\n" +
		"HMSG _INBOX.a.c 1 reply 12 17\r\nNATS/1.0\r\n\r\nhello\r\n" +
		"MSG x 2 1024\r\n" + strings.Repeat("\n", 1024) + "\r\n" + // a payload of line ends: not lines
		"-ERR 'x'\r\nPONG\r\n"
	for n := 1; n <= len(ok)+1; n++ {
		got, err := readAllBounded([]byte(ok), n)
		if err != nil || string(got) != ok {
			t.Fatalf("reads of %d: %v, passed %q", n, err, got)
		}
	}
	for _, bad := range []string{
		"INFO {}\r\nMSG _INBOX.a 1 1025\r\n",
		"INFO {}\r\nHMSG _INBOX.a 1 12 629145600\r\n",
		"MSG _INBOX.a 1 -1\r\n",
		"MSG _INBOX.a 1 x\r\n",
		"MSG 5\r\n",
		// nats.go also takes tabs between fields, and only the top-level
		// tls_required: both let a 600 MB message through before.
		"INFO {}\r\nMSG\t_INBOX.x\t1\t629145600\r\n",
		"INFO {\"tls_required\":false,\"x\":{\"tls_required\":true}}\r\nMSG _INBOX.x 1 629145600\r\n",
		"INFO " + strings.Repeat("x", maxNATSLine+1),
	} {
		for _, n := range []int{1, 7, 4096} {
			got, err := readAllBounded([]byte(bad), n)
			if !errors.Is(err, errNATSInbound) {
				t.Fatalf("%.60q (reads of %d): %v", bad, n, err)
			}
			// nats.go acts on a line at its end: that is never passed.
			if strings.Count(bad, "\n") > 0 && bytes.Count(got, []byte("\n")) >= strings.Count(bad, "\n") {
				t.Fatalf("%.60q: the refused line was passed on whole: %q", bad, got)
			}
		}
	}
	tls := "INFO {\"tls_required\":true}\r\n" + "MSG x 1 999999999\r\n" // encrypted from here on
	if got, err := readAllBounded([]byte(tls), 5); err != nil || string(got) != tls {
		t.Fatalf("after TLS: %v %q", err, got)
	}
}

// FuzzNATSBoundedConn: whatever the server sends, the bytes passed on are
// a prefix of it (all of it when no error).
func FuzzNATSBoundedConn(f *testing.F) {
	f.Add([]byte("INFO {}\r\nMSG a 1 3\r\nabc\r\nPING\r\n"), 3)
	f.Add([]byte("HMSG a 1 2 4\r\nxxyy\r\n"), 1)
	f.Fuzz(func(t *testing.T, stream []byte, n int) {
		n = 1 + (n&0xffff)%64
		got, err := readAllBounded(stream, n)
		if !bytes.HasPrefix(stream, got) || (err == nil && len(got) != len(stream)) {
			t.Fatalf("passed %q of %q (err %v)", got, stream, err)
		}
	})
}

// TestNATSHugeMessageFromServer: a hostile NATS upstream announces a
// 600 MB message on the target's connection; nats.go allocated the
// announced size before reading it (600 MB of heap on a 512 MB gateway).
// The connection is closed at the announcing line instead.
func TestNATSHugeMessageFromServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 600 << 20
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if _, err := fakeNATSConnect(c, ln, 1048576); err != nil {
			served <- err
			return
		}
		fmt.Fprintf(c, "MSG _INBOX.x 1 %d\r\n", size)
		chunk := make([]byte, 1<<20)
		for range size >> 20 {
			if _, err := c.Write(chunk); err != nil {
				served <- nil // the target closed the connection
				return
			}
		}
		served <- errors.New("the target read all 600 MB")
	}()
	st := openStore(t, "", store.DurabilityNone)
	tc := fastTarget("js", "nats")
	tc.NATS.URL = "nats://" + ln.Addr().String()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	startManager(t, st, tc)
	for done := false; !done; {
		select {
		case err := <-served:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case <-time.After(20 * time.Millisecond):
		}
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	if peak > base+64<<20 {
		t.Fatalf("the upstream made the heap grow by %d MiB", (peak-base)>>20)
	}
}

// TestPlainNATS: the bounded connection is used only for servers whose
// bytes it can follow (a websocket's frames or TLS records it cannot).
func TestPlainNATS(t *testing.T) {
	for url, want := range map[string]bool{
		"nats://127.0.0.1:4222": true, "127.0.0.1:4222": true, "NATS://a:1, nats://b:2": true,
		"tls://a:1": false, "ws://a:1": false, "wss://a:1": false, "nats://a:1,ws://b:2": false,
	} {
		if got := plainNATS(url); got != want {
			t.Errorf("plainNATS(%q) = %v, want %v", url, got, want)
		}
	}
}

// fakeNATSConnect plays a NATS server's side of the connect on c (a
// connection accepted on ln): its INFO (max_payload), the client's CONNECT
// and PING, and the PONG. It returns the reader of what the client sends
// next.
func fakeNATSConnect(c net.Conn, ln net.Listener, maxPayload int) (*bufio.Reader, error) {
	fmt.Fprintf(c, "INFO {\"server_id\":\"x\",\"version\":\"2.10.0\",\"go\":\"go\",\"host\":\"127.0.0.1\",\"port\":%d,\"headers\":true,\"max_payload\":%d,\"proto\":1}\r\n", ln.Addr().(*net.TCPAddr).Port, maxPayload)
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(line, "PING") {
			break
		}
	}
	_, err := io.WriteString(c, "PONG\r\n")
	return br, err
}

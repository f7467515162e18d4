package sync

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// TestNATSHugeMessageHiddenFromTheBound: a hostile NATS upstream announces a 600 MB
// message with a carriage return inside the MSG line. nats.go splits the
// arguments on '\r' too and drops the byte before the '\n' after a '\r':
// "MSG _INBOX.x 1\r629145600 5\n" is, to nats.go, a message of 629145600
// bytes, while natsBoundedConn reads its last field "5" and lets it pass.
func TestNATSHugeMessageHiddenFromTheBound(t *testing.T) {
	for name, attack := range map[string]string{
		// nats.go splits the arguments on '\r' and drops the byte before
		// the '\n' of a line with a '\r': a 629145600-byte message to it,
		// one of 5 bytes to natsBoundedConn (its last field).
		"cr-in-msg-line": "MSG _INBOX.x 1\r629145600 5\nab",
		// An INFO after the connection is made changes nothing in
		// nats.go (no TLS upgrade), but natsBoundedConn stops reading.
		"late-info-tls": "INFO {\"tls_required\":true}\r\nMSG _INBOX.x 1 629145600\r\nab",
	} {
		t.Run(name, func(t *testing.T) { hugeMessageAttack(t, attack) })
	}
}

func hugeMessageAttack(t *testing.T, attack string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			closed <- err
			return
		}
		defer c.Close()
		br, err := fakeNATSConnect(c, ln, 1048576)
		if err != nil {
			closed <- err
			return
		}
		io.WriteString(c, attack)
		// Wait for the target to close the connection (what it must do).
		_, err = io.Copy(io.Discard, br)
		closed <- err
	}()
	st := openStore(t, "", store.DurabilityNone)
	tc := fastTarget("js", "nats")
	tc.NATS.URL = "nats://" + ln.Addr().String()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	startManager(t, st, tc)
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		if peak > base+64<<20 {
			t.Fatalf("the upstream made the heap grow by %d MiB ", (peak-base)>>20)
		}
		select {
		case <-closed:
			return // the target refused the line and closed the connection
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the target neither closed the connection nor grew the heap")
		}
	}
}

// After a message's payload nats.go takes one byte unread and ignores the
// rest up to the next '\n' (MSG_END); the bound skipped exactly a CRLF and
// read the rest of that line as a control line: a "MSG ... 40" there had
// it skip the next 42 bytes as a payload, hiding a MSG announcing 600 MB
// that nats.go read and allocated.
func TestNATSHugeMessageAfterShortTrailer(t *testing.T) {
	hugeMessageAttack(t, "MSG _INBOX.x 1 1\r\nXabMSG _INBOX.y 1 40\r\nMSG _INBOX.x 1 629145600\r\nabcdefghijklmnop")
}

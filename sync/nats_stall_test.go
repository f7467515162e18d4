package sync

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// TestNATSStalledUpstreamHonoursAckTimeout: a NATS upstream that completes the
// handshake, then stops reading (a hung server process whose kernel still
// took the connection). ack_timeout is 1s: the target should give up on
// the batch within about that and the manager stop promptly. nats.go's
// publish flushes its buffer to the socket synchronously, under the
// connection lock, bounded only by its FlusherTimeout (default 1 minute),
// which the target never sets: Deliver hangs in PublishMsgAsync, and
// Close (the manager's shutdown) waits for the same lock.
func TestNATSStalledUpstreamHonoursAckTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stallAll := make(chan struct{})
	defer close(stallAll)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				if _, err := fakeNATSConnect(c, ln, 8388608); err != nil {
					return
				}
				<-stallAll // never read again
			}(c)
		}
	}()
	st := openStore(t, "", store.DurabilityNone)
	pad := strings.Repeat("p", 100<<10)
	for i := 0; i < 300; {
		c := &store.Commit{}
		for j := 0; j < 8 && i < 300; j, i = j+1, i+1 {
			c.Records = append(c.Records, store.Record{Stream: "s", Data: []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad)), Targets: []string{"js"}})
		}
		if _, err := st.Commit(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	tc := fastTarget("js", "nats")
	tc.NATS.URL = "nats://" + ln.Addr().String()
	tc.AckTimeout = time.Second
	tc.MaxRecords = 2000
	tc.MaxBytes = 32 << 20
	m, stop := startManager(t, st, tc)
	// statusWithin returns the target's status unless Status takes more
	// than d.
	statusWithin := func(d time.Duration) (TargetStatus, bool) {
		ch := make(chan TargetStatus, 1)
		go func() { ch <- statusOf(m, "js") }()
		select {
		case s := <-ch:
			return s, true
		case <-time.After(d):
			return TargetStatus{}, false
		}
	}
	var s TargetStatus
	start := time.Now()
	for time.Since(start) < 4*time.Second {
		var ok bool
		if s, ok = statusWithin(2 * time.Second); !ok {
			t.Errorf("ack_timeout 1s: Manager.Status (GET /v1/sync) blocked for more than 2s, %s after the start", time.Since(start).Round(time.Millisecond))
			break
		}
		if s.LastError != "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.LastError == "" {
		t.Errorf("ack_timeout 1s: no failure reported %s after the start", time.Since(start).Round(time.Millisecond))
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Errorf("stopping the manager (daemon shutdown) took more than 5s")
	}
}

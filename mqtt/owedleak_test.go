package mqtt

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Messages from short-lived publishers (a new client id each time, as
// with clients that connect with an empty id) queued for a persistent
// subscriber while it is away are resent when it comes back. Once the
// subscriber has acknowledged them all and every publisher is long gone,
// the broker must not keep anything per publisher.
func TestSessionsOwedForgetsGonePublishers(t *testing.T) {
	const n = 200
	b := openSessionBroker(t, t.TempDir())
	in := newInbox()
	sub := dialPersistent(t, b.e, "sub", in, "t/#")
	sub.Disconnect(100)
	for i := range n {
		id := fmt.Sprintf("pub-%d-%s", i, strings.Repeat("x", 8<<10))
		p := mustDial(t, brokerURL(b.e), id)
		if err := waitToken(t, p.Publish("t/x", 1, false, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		p.Disconnect(50)
	}
	waitFor(t, "publishers gone", 10*time.Second, func() bool { return b.e.Stats().ClientsConnected == 0 })
	// The subscriber comes back, gets and acknowledges everything, leaves.
	sub = mustDial(t, brokerURL(b.e), "sub", persistent(in))
	in.wait(t, n)
	waitFor(t, "acknowledgements", 10*time.Second, func() bool { return b.e.Stats().Inflight == 0 })
	sub.Disconnect(100)
	waitFor(t, "subscriber gone", 10*time.Second, func() bool { return b.e.Stats().ClientsConnected == 0 })

	h := b.e.sessions
	h.mu.Lock()
	entries, bytes := len(h.owed), 0
	for id := range h.owed {
		bytes += len(id)
	}
	h.mu.Unlock()
	if entries > 0 {
		t.Fatalf("no client connected, nothing in flight, yet the session hook keeps %d owed entries holding %d bytes of client ids of gone publishers", entries, bytes)
	}
}

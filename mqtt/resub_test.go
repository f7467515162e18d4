package mqtt

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// TestExternalTriggerChangeLeavesNoGap: replacing a filter by another that
// also covers the topic (t/+ by t/+/#, a trigger changed by a deploy) while
// a device publishes: every message the broker acknowledged to the device
// reaches the Handler. The old filter was unsubscribed before the new one
// was subscribed, and messages in between were delivered to nobody.
func TestExternalTriggerChangeLeavesNoGap(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	ps := newPayloadSet()
	x := startExternal(t, m.URL(), "gw-gap", func(ctx context.Context, msg *Message) error { ps.add(msg); return nil }, "t/+")
	pub := mustDial(t, m.URL(), "device")
	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			tok := pub.Publish("t/d1", 1, false, []byte(fmt.Sprintf("%d", n)))
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				done <- fmt.Errorf("publish %d: %v", n, tok.Error())
				return
			}
			sent.Add(1)
		}
	}()
	filters := [][]string{{"t/+"}, {"t/+/#"}}
	for i := 1; i <= 50; i++ {
		if err := x.SetFilters(context.Background(), filters[i%2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := int(sent.Load())
	deadline := time.Now().Add(10 * time.Second)
	for ps.distinct() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := ps.distinct(); got != n {
		t.Fatalf("%d messages acknowledged to the device by the broker, %d reached the Handler", n, got)
	}
}

// TestExternalRetainedReplayNotHandled: every connection subscribes again,
// and the broker replays each retained message matching a filter with the
// RETAIN flag set: a device's retained status ran again at every restart
// or reconnect. A replay is acknowledged and not handled; a retained
// message published while moongate is subscribed arrives with RETAIN clear
// and is handled once.
func TestExternalRetainedReplayNotHandled(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	pub := mustDial(t, m.URL(), "device")
	if err := waitToken(t, pub.Publish("r/before", 1, true, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	x := startExternal(t, m.URL(), "gw-retained", rec.handle, "r/#")
	if err := waitToken(t, pub.Publish("r/status", 1, true, []byte("online"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the live retained publish", 10*time.Second, func() bool { return rec.len() == 1 })
	if err := x.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	x = startExternal(t, m.URL(), "gw-retained", rec.handle, "r/#")
	// The broker replays the two retained topics when it takes the
	// SUBSCRIBE, before the marker exists.
	if err := waitToken(t, pub.Publish("r/x", 1, false, []byte("marker"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the marker", 10*time.Second, func() bool { return rec.len() == 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var got []string
	for _, msg := range rec.msgs {
		got = append(got, fmt.Sprintf("%s=%s retain=%v", msg.Topic, msg.Payload, msg.Retain))
	}
	if fmt.Sprint(got) != "[r/status=online retain=false r/x=marker retain=false]" {
		t.Fatalf("handled %v", got)
	}
	// (Topics are handled in parallel lanes: the replays may be counted
	// after the marker was handled.)
	waitFor(t, "two replays counted (r/before, r/status)", 10*time.Second, func() bool { return x.Stats().RetainedReplays == 2 })
}

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

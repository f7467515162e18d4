package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// countLua returns the event's sequence number as a record and publishes an
// acknowledgement that the test observes. The acknowledgement is retained:
// after a restart of the embedded broker the observer resubscribes, and
// acknowledgements published before it did still reach it.
const countLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  mqtt.publish("ack/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1, retain = true})
  return {n = r.n}
end
`

// ackObserver counts distinct (device, n) acknowledgements.
type ackObserver struct {
	mu   sync.Mutex
	seen map[string]bool
	n    atomic.Int64
}

func (o *ackObserver) has(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[key]
}

func observeAcks(t testing.TB, url string) *ackObserver {
	o := &ackObserver{seen: map[string]bool{}}
	subscribed := make(chan error, 1)
	// Subscribe on every connection: the embedded broker forgets
	// subscriptions when the daemon restarts.
	connectWith(t, url, fmt.Sprintf("observer-%d", rand.Int()), true, func(c paho.Client) {
		tok := c.Subscribe("ack/#", 1, func(_ paho.Client, m paho.Message) {
			k := m.Topic() // ack/DEVICE/N
			o.mu.Lock()
			if !o.seen[k] {
				o.seen[k] = true
				o.n.Add(1)
			}
			o.mu.Unlock()
		})
		go func() {
			tok.Wait()
			select {
			case subscribed <- tok.Error():
			default:
			}
		}()
	})
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("subscribe acks: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("subscribe acks: timeout")
	}
	return o
}

// publishSequences publishes perDevice events n=0.. for each device, QoS 1,
// and returns when all of them were acknowledged. Each device is a client
// of its own, with a persistent session, that publishes one event at a time
// like device firmware, so the order a device sent in is well defined. When
// a publish fails because the broker went away under it, paho resends it
// (DUP) from its session store after reconnecting; the device waits until
// the gateway has processed it (seen by acks) before the next one, as
// firmware that waits for its acknowledgement would.
func publishSequences(t testing.TB, url string, acks *ackObserver, devices, perDevice int) {
	var wg sync.WaitGroup
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conns atomic.Int64 // connections made, reconnects included
			c, err := tryConnect(t, url, fmt.Sprintf("dev%02d-%d", d, rand.Int()), false, func(paho.Client) { conns.Add(1) })
			if err != nil {
				t.Error(err)
				return
			}
			topic := fmt.Sprintf("devices/dev%02d/telemetry", d)
			for n := range perDevice {
				before := conns.Load()
				tok := c.Publish(topic, 1, false, fmt.Sprintf(`{"n":%d}`, n))
				if !tok.WaitTimeout(120 * time.Second) {
					t.Errorf("publish %s %d: no acknowledgement", topic, n)
					return
				}
				// paho may complete the token of a message in flight across
				// a reconnect without its PUBACK, and resends it after
				// reconnecting in a goroutine that the next publish can
				// overtake (PITFALLS.md): firmware that waits for its
				// acknowledgement would not send n+1 yet, so wait until n
				// was processed.
				if tok.Error() != nil || conns.Load() != before {
					if !poll(120*time.Second, func() bool { return acks.has(fmt.Sprintf("ack/dev%02d/%d", d, n)) }) {
						t.Errorf("resent %s %d not processed after 120s", topic, n)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// checkExactlyOnceInOrder opens the data directory and checks that every
// (device, n) has exactly one record and that each device's records are in
// order.
func checkExactlyOnceInOrder(t *testing.T, dataDir, function string, devices, perDevice int) {
	t.Helper()
	st, err := store.Open(context.Background(), store.Options{Dir: dataDir})
	if err != nil {
		t.Fatalf("reopen store: %v", err)
	}
	defer st.Close()
	recs := allRecords(t, st, function)
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	count := map[string]map[int]int{}
	last := map[string]int{}
	outOfOrder := 0
	for _, r := range recs {
		var v struct{ N int }
		if err := json.Unmarshal(r.Data, &v); err != nil {
			t.Fatalf("record %s: %v", r.Data, err)
		}
		if count[r.Device] == nil {
			count[r.Device] = map[int]int{}
			last[r.Device] = -1
		}
		count[r.Device][v.N]++
		if v.N <= last[r.Device] {
			if outOfOrder < 5 {
				t.Logf("out of order: device %s n=%d (seq %d, event %s, ts %d) after n=%d", r.Device, v.N, r.Seq, r.EventID, r.EventTS, last[r.Device])
			}
			outOfOrder++
		}
		last[r.Device] = v.N
	}
	missing, doubled := 0, 0
	for d := range devices {
		dev := fmt.Sprintf("dev%02d", d)
		for n := range perDevice {
			switch c := count[dev][n]; {
			case c == 0:
				missing++
			case c > 1:
				doubled++
			}
		}
	}
	if missing != 0 || doubled != 0 || outOfOrder != 0 || len(recs) != devices*perDevice {
		t.Fatalf("records: %d (want %d), missing %d, doubled %d, out of order %d", len(recs), devices*perDevice, missing, doubled, outOfOrder)
	}
}

// TestNothingLostNothingDoubledSIGKILL drives 20,000 QoS 1 events through
// external-broker mode while the daemon is killed with SIGKILL at three
// random moments and restarted each time.
func TestNothingLostNothingDoubledSIGKILL(t *testing.T) {
	const devices, perDevice = 20, 1000
	m := mqtttest.StartMosquitto(t)
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "count", countLua, referenceManifest)
	cfgPath := filepath.Join(t.TempDir(), "moongate.yaml")
	cfg := testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-crash"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	acks := observeAcks(t, m.URL())
	c := startChild(t, cfgPath)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, m.URL(), acks, devices, perDevice) }()

	total := int64(devices * perDevice)
	kills := []int64{rand.Int64N(total / 4), total/4 + rand.Int64N(total/4), total/2 + rand.Int64N(total/3)}
	sort.Slice(kills, func(i, j int) bool { return kills[i] < kills[j] })
	for _, at := range kills {
		waitFor(t, 120*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d acknowledgements", acks.n.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 180*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	c.term(t)
	checkExactlyOnceInOrder(t, dataDir, "count", devices, perDevice)
}

// drainInProcess runs the daemon of cfgYAML in-process until its inbox is
// empty and everything queued is done, then stops it.
func drainInProcess(t *testing.T, cfgYAML string) {
	t.Helper()
	p := startInProcess(t, cfgYAML)
	waitFor(t, 120*time.Second, "an empty inbox", func() bool {
		return p.d.Store().InboxLen() == 0 && p.d.Gateway().Stats().Backlog == 0
	})
	p.stop(t)
}

// TestEmbeddedCleanRestart drives events through the embedded broker and
// restarts the daemon with SIGTERM in the middle: nothing acknowledged is
// lost or doubled, order holds.
func TestEmbeddedCleanRestart(t *testing.T) {
	const devices, perDevice = 10, 300
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "count", countLua, referenceManifest)
	cfgPath, url := childConfig(t, dataDir, fnDir)
	c := startChild(t, cfgPath)
	acks := observeAcks(t, url)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, url, acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	waitFor(t, 60*time.Second, "a third of the acknowledgements", func() bool { return acks.n.Load() >= total/3 })
	c.term(t)
	c = startChild(t, cfgPath)
	// Every publish is acknowledged by the daemon, so durable in its inbox.
	<-pubDone
	c.term(t)
	// Process what is left on a fresh port, then count.
	drainInProcess(t, testConfig(dataDir, fnDir, ""))
	checkExactlyOnceInOrder(t, dataDir, "count", devices, perDevice)
}

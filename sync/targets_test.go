package sync

import (
	"net"
	gosync "sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// TestMQTTOutage: under sustained load mosquitto is stopped, stays down
// while records pile up, and comes back; every record reaches the
// subscriber, first arrivals in order per stream.
func TestMQTTOutage(t *testing.T) {
	mq := mqtttest.StartMosquitto(t)
	col := mqttSubscriber(t, mq.URL())
	st := openStore(t, "", store.DurabilityNone)
	tc := fastTarget("broker", "mqtt")
	tc.MQTT.Broker = mq.URL()
	tc.Inflight = 64
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "connected while idle", func() bool { return statusOf(m, "broker").Connected })
	p := startProducer(t, st, 10, "broker")
	waitFor(t, 10*time.Second, "first deliveries", func() bool { return col.distinct() > 200 })
	mq.Stop()
	waitFor(t, 10*time.Second, "disconnected", func() bool { return statusOf(m, "broker").State == StateDisconnected })
	before := p.count()
	waitFor(t, 10*time.Second, "backlog while down", func() bool { return p.count() > before+1000 })
	if s := statusOf(m, "broker"); s.Connected || s.Backlog < 1000 || s.LastError == "" {
		t.Errorf("status while down: %+v", s)
	}
	mq.Restart()
	// Deliveries resume while the load goes on. (Waiting for them to catch
	// up with a producer that keeps going failed under -race on a loaded
	// machine, where delivery is not much faster than 5,000 records/s.)
	resumed := col.distinct()
	waitFor(t, 30*time.Second, "deliveries resumed", func() bool { return col.distinct() > resumed+200 })
	want := p.result(t)
	waitFor(t, 60*time.Second, "all records", func() bool { return col.distinct() == len(want) })
	dups := checkDelivery(t, want, col.snapshot())
	waitFor(t, 5*time.Second, "outbox acknowledged", func() bool { return st.OutboxStats("broker").Backlog == 0 })
	t.Logf("%d records, %d duplicate arrivals", len(want), dups)
}

// TestNATSOutage: the same with nats-server -js; the stream holds every
// record exactly once (Nats-Msg-Id de-duplication).
func TestNATSOutage(t *testing.T) {
	ns := startNATS(t)
	createStream(t, ns.url())
	st := openStore(t, "", store.DurabilityNone)
	tc := fastTarget("js", "nats")
	tc.NATS.URL = ns.url()
	tc.Inflight = 64
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "connected while idle", func() bool { return statusOf(m, "js").Connected })
	p := startProducer(t, st, 10, "js")
	waitFor(t, 10*time.Second, "first deliveries", func() bool { return streamCount(ns.url()) > 200 })
	ns.stop()
	waitFor(t, 10*time.Second, "disconnected", func() bool { return statusOf(m, "js").State == StateDisconnected })
	before := p.count()
	waitFor(t, 10*time.Second, "backlog while down", func() bool { return p.count() > before+1000 })
	ns.start()
	want := p.result(t)
	waitFor(t, 30*time.Second, "all records", func() bool { return streamCount(ns.url()) >= len(want) })
	got := streamRecords(t, ns.url())
	if dups := checkDelivery(t, want, got); dups != 0 {
		t.Errorf("%d duplicates in the stream", dups)
	}
	if len(got) != len(want) {
		t.Errorf("stream holds %d messages for %d records", len(got), len(want))
	}
	waitFor(t, 5*time.Second, "outbox acknowledged", func() bool { return st.OutboxStats("js").Backlog == 0 })
}

// TestTwoTargetsIndependent: a record routed to two targets reaches both;
// one target being down does not hold the other back.
func TestTwoTargetsIndependent(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	a, b := newHTTPUpstream(t), newHTTPUpstream(t)
	b.setMode("503")
	ta, tb := fastTarget("a", "http"), fastTarget("b", "http")
	ta.HTTP.URL, tb.HTTP.URL = a.URL, b.URL
	startManager(t, st, ta, tb)
	want := commitRecords(t, st, 500, 2, "a", "b")
	waitFor(t, 10*time.Second, "a has all", func() bool { return a.col.distinct() == len(want) })
	if st.OutboxStats("b").Backlog != int64(len(want)) {
		t.Fatalf("b backlog %d", st.OutboxStats("b").Backlog)
	}
	b.setMode("ok")
	waitFor(t, 10*time.Second, "b has all", func() bool { return b.col.distinct() == len(want) })
	checkDelivery(t, want, a.col.snapshot())
	checkDelivery(t, want, b.col.snapshot())
}

// TestStopWhileConnecting: an upstream that accepts TCP connections and
// never answers does not delay the manager's stop by the ack timeout.
func TestStopWhileConnecting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu gosync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	st := openStore(t, "", store.DurabilityNone)
	commitRecords(t, st, 10, 1, "m", "n", "h")
	m, h, n := fastTarget("m", "mqtt"), fastTarget("h", "http"), fastTarget("n", "nats")
	m.MQTT.Broker = "tcp://" + ln.Addr().String()
	h.HTTP.URL = "http://" + ln.Addr().String()
	n.NATS.URL = "nats://" + ln.Addr().String()
	for _, tc := range []*TargetConfig{&m, &h, &n} {
		tc.AckTimeout = 30 * time.Second
	}
	_, stop := startManager(t, st, m, h, n)
	waitFor(t, 5*time.Second, "connections to the silent upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) >= 3
	})
	start := time.Now()
	stop()
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("stop took %s", el)
	}
	if got := st.OutboxStats("m").Backlog + st.OutboxStats("h").Backlog + st.OutboxStats("n").Backlog; got != 30 {
		t.Fatalf("backlog %d after stop, want 30", got)
	}
}

package sync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// A target's priority outbox numbers its entries from 1, as its normal
// outbox does: a batch prepared ahead for one (Preparer) must not be sent
// for a batch of the other with the same sequences. It was (matched on
// sequences only), and the priority records were acknowledged unsent.

// sameSeqBatches returns two batches of one sequence range whose records
// differ, as the normal and the priority outbox of a target can hold.
func sameSeqBatches() (normal, prio []store.OutboxEntry) {
	for i := range 10 {
		seq := uint64(11 + i)
		normal = append(normal, store.OutboxEntry{Seq: seq, Size: 64, Record: store.Record{ID: fmt.Sprintf("gw-%d", 100+i), Stream: "telemetry", Function: "f", Data: []byte(`{"n":1}`)}})
		prio = append(prio, store.OutboxEntry{Seq: seq, Size: 64, Record: store.Record{ID: fmt.Sprintf("gw-%d", 200+i), Stream: "alerts", Function: "f", Data: []byte(`{"n":2}`)}})
	}
	return normal, prio
}

func deliverPrio(t *testing.T, tgt Target) []store.OutboxEntry {
	t.Helper()
	normal, prio := sameSeqBatches()
	tgt.(Preparer).Prepare(normal)
	res, err := tgt.Deliver(context.Background(), prio)
	if err != nil || res.Done != len(prio) {
		t.Fatalf("deliver: %+v %v", res, err)
	}
	return prio
}

func TestHTTPPreparedBatchOfAnotherOutbox(t *testing.T) {
	up := newHTTPUpstream(t)
	cfg := fastTarget("cloud", "http")
	cfg.HTTP.URL = up.URL
	cfg.withDefaults()
	tgt, err := newHTTPTarget(cfg, Env{GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	prio := deliverPrio(t, tgt)
	got := map[string]bool{}
	for _, r := range up.col.snapshot() {
		got[r.ID] = true
	}
	for _, e := range prio {
		if !got[e.Record.ID] {
			t.Fatalf("priority record %s not sent (upstream has %v)", e.Record.ID, got)
		}
	}
}

func TestNATSPreparedBatchOfAnotherOutbox(t *testing.T) {
	ns := startNATS(t)
	createStream(t, ns.url())
	cfg := fastTarget("js", "nats")
	cfg.NATS.URL = ns.url()
	cfg.withDefaults()
	tgt, err := newNATSTarget(cfg, Env{GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	prio := deliverPrio(t, tgt)
	got := map[string]bool{}
	for _, r := range streamRecords(t, ns.url()) {
		got[r.ID] = true
	}
	for _, e := range prio {
		if !got[e.Record.ID] {
			t.Fatalf("priority record %s not in the stream (it has %v)", e.Record.ID, got)
		}
	}
}

// failFirstNormal fails its first batch of the normal outbox, committing a
// large priority record meanwhile (the priority outbox then spends the
// day's budget); every other batch is delivered.
type failFirstNormal struct {
	st     *store.Store
	failed atomic.Bool
}

func (f *failFirstNormal) Deliver(_ context.Context, b []store.OutboxEntry) (Result, error) {
	if b[0].Record.Stream != "alerts" && f.failed.CompareAndSwap(false, true) {
		big := fmt.Sprintf(`{"alert":"%s"}`, strings.Repeat("a", 1500))
		if _, err := f.st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(big), Targets: []string{PriorityOutbox("cloud")}}}}); err != nil {
			return Result{}, err
		}
		return Result{}, errors.New("upstream down")
	}
	return Result{Done: len(b)}, nil
}

func (f *failFirstNormal) Close() error { return nil }

// countPrioReads counts the reads of the priority outbox of "cloud".
type countPrioReads struct {
	*store.Store
	n atomic.Int64
}

func (c *countPrioReads) OutboxRead(ctx context.Context, target string, after uint64, limit, maxBytes int) ([]store.OutboxEntry, error) {
	if target == PriorityOutbox("cloud") {
		c.n.Add(1)
	}
	return c.Store.OutboxRead(ctx, target, after, limit, maxBytes)
}

// TestPausedWithPendingBatchIdles: a normal batch being retried when the
// day's budget runs out waits for the next day like the rest of the
// outbox. It was handed back at once and refused at once, in a loop that
// read the priority outbox ~700,000 times a second until midnight UTC.
func TestPausedWithPendingBatchIdles(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	ft := &failFirstNormal{st: st}
	if err := Register(Module{ID: ModulePrefix + "test-failfirstnormal", New: func(TargetConfig, Env) (Target, error) { return ft, nil }}); err != nil {
		t.Fatal(err)
	}
	commitRecords(t, st, 10, 1, "cloud")
	tc := fastTarget("cloud", "test-failfirstnormal")
	tc.MaxRecords, tc.DailyBudget, tc.PriorityStreams = 10, 2000, []string{"alerts"}
	cs := &countPrioReads{Store: st}
	m, _ := startManager(t, cs, tc)
	waitFor(t, 10*time.Second, "paused over the budget", func() bool { return statusOf(m, "cloud").State == StatePaused })
	// Over a second of the pause: an idle worker polls every 5 ms here.
	start, r0 := time.Now(), cs.n.Load()
	<-time.After(time.Second)
	if n := cs.n.Load() - r0; n > 1000 {
		t.Fatalf("busy while paused: %d priority outbox reads in %v", n, time.Since(start))
	}
	if s := statusOf(m, "cloud"); s.State != StatePaused || s.Backlog != 10 {
		t.Fatalf("status %+v: want paused with the 10 records kept", s)
	}
}

// TestMQTTControlCharacterStream: a record whose stream name holds a
// control character (valid UTF-8, taken by the store) made a topic that
// mosquitto refuses by closing the connection: first in line on every
// retry, it blocked the outbox for good. Such characters become '_'.
func TestMQTTControlCharacterStream(t *testing.T) {
	mq := mqtttest.StartMosquitto(t)
	col := mqttSubscriber(t, mq.URL())
	st := openStore(t, "", store.DurabilityNone)
	commitRecords(t, st, 1, 1, "broker") // ordinary record first: the connection works
	if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "bad\tstream", Function: "f", Data: []byte(`{}`), Targets: []string{"broker"}}}}); err != nil {
		t.Fatal(err)
	}
	commitRecords(t, st, 5, 1, "broker")
	tc := fastTarget("broker", "mqtt")
	tc.MQTT.Broker = mq.URL()
	m, _ := startManager(t, st, tc)
	waitFor(t, 20*time.Second, "all 7 records at the broker", func() bool { return col.distinct() == 7 })
	if s := statusOf(m, "broker"); s.Backlog != 0 {
		t.Fatalf("status %+v", s)
	}
}

// TestBudgetCountedToItsDay: what is delivered after midnight UTC counts
// against the new day. It went to the old day's count, which the next
// check then wiped: the new day's first deliveries were free.
func TestBudgetCountedToItsDay(t *testing.T) {
	w := &worker{cfg: TargetConfig{DailyBudget: 1000}}
	w.budgetDay, w.budgetUsed = utcDay(time.Now())-1, 900 // yesterday's count
	w.count([]store.OutboxEntry{{Size: 300}, {Size: 200}}, nil)
	if w.budgetDay != utcDay(time.Now()) || w.budgetUsed != 500 {
		t.Fatalf("day %d used %d, want today %d and 500", w.budgetDay, w.budgetUsed, utcDay(time.Now()))
	}
	if !w.budgetAllows(500) || w.budgetAllows(501) {
		t.Fatal("today's budget does not count today's deliveries")
	}
}

package bench

import (
	"strings"
	"testing"
	"time"
)

func TestSeqTS(t *testing.T) {
	for _, tc := range []struct {
		in      string
		seq     uint64
		ts      int64
		wantErr bool
	}{
		{`{"seq":42,"ts":1764170000123,"temp":21.5,"hum":40.00}`, 42, 1764170000123, false},
		{`{"fan":"on","seq":1.234567e+06,"ts":1.764170000123e+12}`, 1234567, 1764170000123, false}, // Lua's json.encode
		{`{"ts":1,"seq":7}`, 7, 1, false},
		{`{"seq":0}`, 0, 0, true},
		{`{"seq":1.5}`, 0, 0, true},
		{`{"seq":"3"}`, 0, 0, true},
		{`{"temp":1}`, 0, 0, true},
		{``, 0, 0, true},
	} {
		seq, ts, ok := seqTS([]byte(tc.in))
		if ok == tc.wantErr || (ok && (seq != tc.seq || ts != tc.ts)) {
			t.Errorf("seqTS(%s) = %d, %d, %v; want %d, %d, ok %v", tc.in, seq, ts, ok, tc.seq, tc.ts, !tc.wantErr)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	// The record's own seq comes first: the event's is data.seq.
	line := `{"id":"bench-9","seq":9,"gateway":"bench","stream":"bench","function":"bench","device":"sim-00003","event_id":"e","event_ts":1,"processed_ts":2,"clock_synced":true,"data":{"seq":5,"ts":1764170000000,"temp":20,"temp_f":68}}`
	dev, seq, ts, err := parseUpstream([]byte(line))
	if err != nil || dev != "sim-00003" || seq != 5 || ts != 1764170000000 {
		t.Fatalf("parseUpstream = %q %d %d %v", dev, seq, ts, err)
	}
	if _, _, _, err := parseUpstream([]byte(`{"device":"d","data":{}}`)); err == nil {
		t.Fatal("record without data.seq accepted")
	}
	if _, _, _, err := parseUpstream([]byte(`not json`)); err == nil {
		t.Fatal("garbage accepted")
	}
}

// TestTrackerLoss checks the loss accounting the CI step relies on: an
// acknowledged event missing at one sink is lost, duplicates are counted
// apart, and events of other devices are strays.
func TestTrackerLoss(t *testing.T) {
	tr := newTracker("sim-", 100, 2, 2)
	base := time.Unix(1_700_000_000, 0)
	for dev, n := range map[string]int{"sim-00100": 3, "sim-00101": 2} {
		for s := 1; s <= n; s++ {
			tr.ack(dev, uint64(s), base)
		}
	}
	at := base.Add(2 * time.Millisecond).UnixNano()
	for _, sink := range []int{0, 1} {
		tr.recv(sink, "sim-00100", 1, 0, at)
		tr.recv(sink, "sim-00100", 2, 0, at)
		tr.recv(sink, "sim-00100", 3, 0, at)
		tr.recv(sink, "sim-00101", 1, 0, at)
	}
	tr.recv(0, "sim-00101", 2, 0, at) // sink 1 never gets it
	tr.recv(0, "sim-00100", 1, 0, at) // duplicate
	tr.recv(0, "sim-00099", 1, 0, at) // another phase's device
	if got := tr.pending(true, 0); got != 1 {
		t.Fatalf("pending = %d, want 1", got)
	}
	o := tr.outcome(true)
	if o.acked != 5 || o.complete != 4 || o.missing != 1 || len(o.missingEx) != 1 || o.missingEx[0] != "sim-00101#2" {
		t.Fatalf("outcome %+v", o)
	}
	if tr.dups.Load() != 1 || tr.stray.Load() != 1 {
		t.Fatalf("dups %d stray %d", tr.dups.Load(), tr.stray.Load())
	}
	if len(o.lat) != 4 || o.lat[0] != 2*time.Millisecond {
		t.Fatalf("latencies %v", o.lat)
	}
	// QoS 0: no acks; events received at every sink count.
	if o0 := tr.outcome(false); o0.complete != 4 {
		t.Fatalf("qos0 complete %d", o0.complete)
	}
}

// Every complete event's send time and latency is kept for --latencies and
// written in send order.
func TestLatencySamples(t *testing.T) {
	tr := newTracker("sim-", 0, 2, 1)
	tr.keepSamples = true
	base := time.Unix(1000, 0)
	tr.ack("sim-00001", 1, base.Add(time.Millisecond))
	tr.send("sim-00001", 1, base.Add(time.Millisecond))
	tr.ack("sim-00000", 1, base.Add(3*time.Millisecond))
	tr.send("sim-00000", 1, base.Add(3*time.Millisecond))
	tr.ack("sim-00000", 2, base.Add(4*time.Millisecond)) // never received
	tr.recv(0, "sim-00001", 1, 0, base.Add(6*time.Millisecond).UnixNano())
	tr.recv(0, "sim-00000", 1, 0, base.Add(5*time.Millisecond).UnixNano())
	o := tr.outcome(true)
	if len(o.samples) != 2 {
		t.Fatalf("samples %+v, want the 2 complete events", o.samples)
	}
	var b strings.Builder
	if err := writeLatencies(&b, "moongate embedded qos1", 5000, o.samples); err != nil {
		t.Fatal(err)
	}
	want := "moongate embedded qos1\t5000\t1000001000000\t5000000\n" +
		"moongate embedded qos1\t5000\t1000003000000\t2000000\n"
	if b.String() != want {
		t.Fatalf("latencies written:\n%q\nwant\n%q", b.String(), want)
	}
}

func TestQuantile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if quantile(d, 0.5) != 50 || quantile(d, 0.99) != 99 || quantile(d, 1) != 100 || quantile(nil, 0.5) != 0 {
		t.Fatal("quantile")
	}
}

package gateway

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// upLua turns telemetry into a record of stream "readings" and counts the
// events of each device in its state.
const upLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  state.incr("count/" .. e.device)
  return {n = r.n}
end
`

// aggLua runs on every record of "readings": it keeps a running sum and
// stores where each record came from.
const aggLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  local sum = state.incr("sum", r.n)
  return {n = r.n, sum = sum, record_id = e.record_id, source = e.source, stream = e.stream, trigger = e.trigger}
end
`

// watchLua runs on every change of up's "count/" keys.
const watchLua = `
function handle(e, ctx)
  local c = json.decode(e.payload)
  return {fn = c["function"], key = c.key, old = c.old, new = c.new, trigger = e.trigger, capkey = e.key}
end
`

func TestChainStreamAndStateTriggers(t *testing.T) {
	const devices, perDevice = 3, 10
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "up", upLua, referenceManifest+"stream: readings\n")
	writeFunction(t, fnDir, "agg", aggLua, "triggers:\n  - stream: readings\n")
	writeFunction(t, fnDir, "watch", watchLua, "triggers:\n  - state: {function: up, prefix: \"count/\"}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	url := "tcp://" + p.d.MQTTAddr().String()
	for d := range devices {
		c := connect(t, url, fmt.Sprintf("dev%d", d), true)
		for n := range perDevice {
			publish(t, c, fmt.Sprintf("devices/dev%d/telemetry", d), 1, fmt.Appendf(nil, `{"n":%d}`, n+1))
		}
	}
	st := p.d.Store()
	total := devices * perDevice
	waitFor(t, 30*time.Second, "chained records", func() bool {
		return len(allRecords(t, st, "agg")) == total && len(allRecords(t, st, "watch")) == total
	})

	ups := allRecords(t, st, "up")
	upIDs := map[string]store.Record{}
	for _, r := range ups {
		upIDs[r.ID] = r
	}
	if len(upIDs) != total {
		t.Fatalf("%d up records, want %d", len(upIDs), total)
	}
	// Every up record triggered agg exactly once, in order per device.
	seen := map[string]bool{}
	lastN := map[string]int{}
	for _, r := range allRecords(t, st, "agg") {
		var v struct {
			N                       int
			RecordID                string `json:"record_id"`
			Source, Stream, Trigger string
		}
		if err := json.Unmarshal(r.Data, &v); err != nil {
			t.Fatal(err)
		}
		up, ok := upIDs[v.RecordID]
		if !ok || seen[v.RecordID] {
			t.Fatalf("agg record for %q: known %v, seen before %v", v.RecordID, ok, seen[v.RecordID])
		}
		seen[v.RecordID] = true
		if v.Source != "up" || v.Stream != "readings" || v.Trigger != "stream" || r.Device != up.Device {
			t.Errorf("agg event fields: %+v, device %q (up record device %q)", v, r.Device, up.Device)
		}
		if v.N <= lastN[r.Device] {
			t.Errorf("device %s: n=%d after n=%d", r.Device, v.N, lastN[r.Device])
		}
		lastN[r.Device] = v.N
	}
	sum, ok, err := st.GetState(t.Context(), "agg", "sum")
	if want := fmt.Sprint(devices * perDevice * (perDevice + 1) / 2); err != nil || !ok || string(sum) != want {
		t.Errorf("agg sum = %s (%v, %v), want %s", sum, ok, err, want)
	}
	// Every state change reached watch with the values before and after.
	changes := map[string][]int{} // key -> new values in order
	for _, r := range allRecords(t, st, "watch") {
		var v struct {
			Fn, Key, Trigger, Capkey string
			Old                      *int
			New                      int
		}
		if err := json.Unmarshal(r.Data, &v); err != nil {
			t.Fatal(err)
		}
		if v.Fn != "up" || v.Trigger != "state" || v.Capkey != v.Key || !strings.HasPrefix(v.Key, "count/") {
			t.Errorf("watch event: %+v", v)
		}
		old := 0
		if v.Old != nil {
			old = *v.Old
		}
		if v.New != old+1 {
			t.Errorf("%s: old %d new %d", v.Key, old, v.New)
		}
		changes[v.Key] = append(changes[v.Key], v.New)
	}
	for d := range devices {
		got := changes[fmt.Sprintf("count/dev%d", d)]
		if len(got) != perDevice || got[0] != 1 || got[perDevice-1] != perDevice || !sort.IntsAreSorted(got) {
			t.Errorf("dev%d changes %v", d, got)
		}
	}
}

// TestChainCycleBounded deploys a function that feeds itself: the chain is
// cut at the hop limit and the event that would pass it is a dead letter.
func TestChainCycleBounded(t *testing.T) {
	fnDir := t.TempDir()
	const loopLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  emit("loop", {hop = (r.hop or 0) + 1})
  return nil
end
`
	writeFunction(t, fnDir, "loop", loopLua, "triggers:\n  - mqtt: devices/{device}/telemetry\n  - stream: loop\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {max_hops: 3}\n"))
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d1", true)
	publish(t, c, "devices/d1/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	var dls []store.DeadLetter
	waitFor(t, 20*time.Second, "the dead letter", func() bool {
		var err error
		dls, err = st.ListDeadLetters(t.Context(), "loop", 0, 10)
		return err == nil && len(dls) > 0
	})
	// The MQTT event (hop 0) and three chained ones each emitted a record.
	recs := allRecords(t, st, "loop")
	if len(recs) != 4 {
		t.Fatalf("%d records before the cut, want 4", len(recs))
	}
	if !strings.Contains(dls[0].Error, ErrHopLimit.Error()) {
		t.Fatalf("dead letter error %q", dls[0].Error)
	}
	ev, hops, err := decodeEventHops(dls[0].Event)
	if err != nil || hops != 4 || string(ev.Payload) != `{"hop":4}` {
		t.Fatalf("dead-lettered event: hops %d payload %s err %v", hops, ev.Payload, err)
	}
	waitFor(t, 5*time.Second, "an empty inbox", func() bool { return st.InboxLen() == 0 })
}

// TestReplayHopLimitDeadLetterRuns: a dead letter of the hop limit kept
// its hop count when replayed, so it was dead-lettered again at once (the
// API said "replayed"): the docs say it "can be inspected and replayed".
// Replayed after the cycle was fixed, it runs, as an origin.
func TestReplayHopLimitDeadLetterRuns(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "loop", `
function handle(e, ctx)
  emit("loop", {hop = 1})
  return nil
end
`, "triggers:\n  - mqtt: devices/{device}/telemetry\n  - stream: loop\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {max_hops: 2}\n"))
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d1", true)
	publish(t, c, "devices/d1/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	var dls []store.DeadLetter
	waitFor(t, 20*time.Second, "the dead letter", func() bool {
		var err error
		dls, err = st.ListDeadLetters(t.Context(), "loop", 0, 10)
		return err == nil && len(dls) == 1
	})
	if !strings.Contains(dls[0].Error, ErrHopLimit.Error()) {
		t.Fatalf("dead letter error %q", dls[0].Error)
	}
	// The cycle fixed: the new version emits to another stream.
	writeFunction(t, fnDir, "loop", `
function handle(e, ctx)
  emit("fixed", {replayed = true})
  return nil
end
`, "triggers:\n  - mqtt: devices/{device}/telemetry\n  - stream: loop\n")
	waitFor(t, 20*time.Second, "the fixed version", func() bool {
		f := p.d.Gateway().Lookup("loop")
		return f != nil && f.Version > 1
	})
	if err := p.d.Gateway().Requeue(t.Context(), dls[0].Function, dls[0].Key, dls[0].Event, dls[0].Seq); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the replayed event's record", func() bool {
		for _, r := range allRecords(t, st, "loop") {
			if r.Stream == "fixed" {
				return true
			}
		}
		return false
	})
	waitFor(t, 5*time.Second, "an empty inbox", func() bool { return st.InboxLen() == 0 })
	if dls, err := st.ListDeadLetters(t.Context(), "loop", 0, 10); err != nil || len(dls) != 0 {
		t.Fatalf("after the replay: %d dead letters (%v), want none", len(dls), err)
	}
}

// TestChainBreadthBounded: a function that emits 10 records to a stream
// it listens to, so that each event chains 10 more (10^8 events by the hop
// limit alone). Its origin may cause 100 chained events: the 10 it chains
// get 9 each, and each of them, whose outputs would chain 10, is
// dead-lettered with ErrChainBudget, nothing of it committed. A replay of
// one of those dead letters gets the whole budget again.
func TestChainBreadthBounded(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "amp", `
function handle(e, ctx)
  for i = 1, 10 do emit("amp", {i = i}) end
  return nil
end
`, "triggers:\n  - mqtt: devices/{device}/telemetry\n  - stream: amp\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {max_chain_events: 100}\n"))
	c := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d1", true)
	publish(t, c, "devices/d1/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	var dls []store.DeadLetter
	waitFor(t, 20*time.Second, "the chain to end", func() bool {
		var err error
		dls, err = st.ListDeadLetters(t.Context(), "amp", 0, 100)
		return err == nil && len(dls) >= 10 && st.InboxLen() == 0
	})
	if len(dls) != 10 {
		t.Fatalf("%d dead letters, want 10", len(dls))
	}
	for _, dl := range dls {
		if !strings.Contains(dl.Error, ErrChainBudget.Error()) || !strings.Contains(dl.Error, "would chain 10 events, 9 left of the 100") {
			t.Fatalf("dead letter error %q", dl.Error)
		}
		_, hops, budget, err := decodeEventChain(dl.Event)
		if err != nil || hops != 1 || budget != 9 {
			t.Fatalf("dead-lettered event: hops %d budget %d err %v", hops, budget, err)
		}
	}
	if recs := allRecords(t, st, "amp"); len(recs) != 10 {
		t.Fatalf("%d records, want the origin's 10 only", len(recs))
	}
	// Replayed, a dead letter is an origin again: its 10 records are
	// committed, and its 10 chained events are cut as before.
	if err := p.d.Gateway().Requeue(t.Context(), "amp", dls[0].Key, dls[0].Event, dls[0].Seq); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the replay's chain to end", func() bool {
		n, err := st.ListDeadLetters(t.Context(), "amp", 0, 100)
		return err == nil && len(n) == 19 && st.InboxLen() == 0
	})
	if recs := allRecords(t, st, "amp"); len(recs) != 20 {
		t.Fatalf("%d records after the replay, want 20", len(recs))
	}
}

func TestEventChainRoundTrip(t *testing.T) {
	ev := &luavm.Event{ID: "x", Payload: []byte(`{}`), Trigger: "stream", Captures: map[string]string{"stream": "s"}}
	for _, c := range [][2]int{{1, 0}, {1, 999}, {maxHops + 1, maxChainEvents}} {
		got, h, b, err := decodeEventChain(encodeChained(ev, c[0], c[1]))
		if err != nil || h != c[0] || b != c[1] || got.Captures["stream"] != "s" {
			t.Errorf("%v: got %d %d, %v", c, h, b, err)
		}
	}
	// Events without a budget: an origin, and a chained event written
	// before budgets.
	for _, b := range [][]byte{encodeEvent(ev), encodeEventHops(ev, 3)} {
		if _, _, budget, err := decodeEventChain(b); err != nil || budget != -1 {
			t.Errorf("format %d: budget %d, %v", b[0], budget, err)
		}
	}
	over := encodeChained(ev, 1, 0)
	over = binary.AppendUvarint(over[:len(over)-1], maxChainEvents+1)
	for name, b := range map[string][]byte{
		"budget too big":  over,
		"unknown format":  append([]byte{eventFormatV3 + 1}, encodeChained(ev, 1, 1)[1:]...),
		"budget trailing": append(encodeChained(ev, 1, 1), 0),
	} {
		if _, _, _, err := decodeEventChain(b); !errors.Is(err, ErrBadEvent) {
			t.Errorf("%s: %v", name, err)
		}
	}
	v2 := encodeEventHops(ev, 1)
	v2[0] = eventFormatV3 // a hop count, no budget
	if _, _, _, err := decodeEventChain(v2); !errors.Is(err, ErrBadEvent) {
		t.Errorf("V3 without a budget: %v", err)
	}
}

func TestEventHopsRoundTrip(t *testing.T) {
	ev := &luavm.Event{ID: "x", Payload: []byte(`{}`), Trigger: "stream", Captures: map[string]string{"stream": "s"}}
	for _, hops := range []int{0, 1, 7, maxHops, maxHops + 1} {
		got, h, err := decodeEventHops(encodeEventHops(ev, hops))
		if err != nil || h != hops || got.Captures["stream"] != "s" {
			t.Errorf("hops %d: got %d, %v", hops, h, err)
		}
	}
	bad := encodeEventHops(ev, 1)
	for name, b := range map[string][]byte{
		"hops zero":    append(append([]byte{}, bad[:len(bad)-1]...), 0),
		"hops too big": append(append([]byte{}, bad[:len(bad)-1]...), 0xea, 0x07), // 1002
		"hops missing": bad[:len(bad)-1],
		"trailing":     append(append([]byte{}, bad...), 1),
	} {
		if _, _, err := decodeEventHops(b); !errors.Is(err, ErrBadEvent) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// ackAggLua is aggLua for the crash test: it acknowledges each record it
// processed to the observer.
const ackAggLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  mqtt.publish("ack/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1, retain = true})
  return {n = r.n, record_id = e.record_id}
end
`

// TestChainSIGKILL kills the daemon with SIGKILL while events flow through
// a chain (telemetry -> up -> stream readings -> agg): afterwards every event
// has exactly one up record and every up record triggered agg exactly once,
// in order per device.
func TestChainSIGKILL(t *testing.T) {
	const devices, perDevice = 8, 300
	m := mqtttest.StartMosquitto(t)
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "up", "function handle(e) return {n = json.decode(e.payload).n} end", referenceManifest+"stream: readings\n")
	writeFunction(t, fnDir, "agg", ackAggLua, "triggers:\n  - stream: readings\n")
	cfgPath := filepath.Join(t.TempDir(), "moongate.yaml")
	if err := os.WriteFile(cfgPath, []byte(testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-chain"))), 0o644); err != nil {
		t.Fatal(err)
	}
	acks := observeAcks(t, m.URL())
	c := startChild(t, cfgPath)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, m.URL(), acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	kills := []int64{rand.Int64N(total / 3), total/3 + rand.Int64N(total/3), 2*total/3 + rand.Int64N(total/4)}
	for _, at := range kills {
		waitFor(t, 120*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d chained acknowledgements", acks.n.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 180*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	c.term(t)
	checkExactlyOnceInOrder(t, dataDir, "up", devices, perDevice)
	checkExactlyOnceInOrder(t, dataDir, "agg", devices, perDevice)
	// And agg's records point at distinct up records.
	st, err := store.Open(t.Context(), store.Options{Dir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ids := map[string]bool{}
	for _, r := range allRecords(t, st, "up") {
		ids[r.ID] = true
	}
	for _, r := range allRecords(t, st, "agg") {
		var v struct {
			RecordID string `json:"record_id"`
		}
		_ = json.Unmarshal(r.Data, &v)
		if !ids[v.RecordID] {
			t.Fatalf("agg record for unknown or repeated up record %q", v.RecordID)
		}
		delete(ids, v.RecordID)
	}
	if len(ids) != 0 {
		t.Fatalf("%d up records triggered no agg run", len(ids))
	}
}

// TestChainFromInvoke: what a committed API invocation emits triggers the
// downstream functions too.
func TestChainFromInvoke(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "up", upLua, "triggers:\n  - http: {methods: [POST]}\nstream: readings\n")
	writeFunction(t, fnDir, "agg", aggLua, "triggers:\n  - stream: readings\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	ev := &luavm.Event{Payload: []byte(`{"n":5}`), Trigger: "invoke", Captures: map[string]string{"device": "d9"}}
	res, err := p.d.Gateway().Invoke(t.Context(), "up", ev, true, nil)
	if err != nil || res.Err != nil || !res.Committed {
		t.Fatalf("invoke: %v %v", err, res)
	}
	st := p.d.Store()
	waitFor(t, 20*time.Second, "the chained record", func() bool { return len(allRecords(t, st, "agg")) == 1 })
	r := allRecords(t, st, "agg")[0]
	if r.Device != "d9" || !strings.Contains(string(r.Data), `"source":"up"`) {
		t.Fatalf("chained record %s device %q", r.Data, r.Device)
	}
}

// TestStateEventLeavesOutWhatDoesNotFit: a state change whose old and new
// values do not fit in one event together (a 600 KB value replaced by
// another) still commits; its watchers get the event without the old
// value (old_omitted). Before, the chained event (1.2 MB) made the commit
// of the change fail for good once a function watched that state.
func TestStateEventLeavesOutWhatDoesNotFit(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "big", `function handle(e) state.set("big", string.rep(e.payload, 600000)) end`,
		"triggers:\n  - http: {methods: [POST]}\nlimits: {max_effect_bytes: 700KiB}\n")
	writeFunction(t, fnDir, "watch", `function handle(e)
  local p = json.decode(e.payload)
  local function size(v) if type(v) == "string" then return #v end return 0 end
  return {old = size(p.old), new = size(p.new), old_omitted = p.old_omitted == true}
end`, "triggers:\n  - state: {function: big}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	for i, payload := range []string{"a", "b"} {
		res, err := p.d.Gateway().Invoke(t.Context(), "big", &luavm.Event{Payload: []byte(payload), Trigger: "invoke"}, true, nil)
		if err != nil {
			t.Fatalf("invocation %d: %v", i+1, err)
		}
		if res.Err != nil {
			t.Fatalf("invocation %d failed: %v", i+1, res.Err)
		}
	}
	st := p.d.Store()
	if !poll(10*time.Second, func() bool { return len(allRecords(t, st, "watch")) == 2 }) {
		dl, _ := st.ListDeadLetters(t.Context(), "", 0, 10)
		for _, d := range dl {
			t.Logf("dead letter %s: %s", d.Function, d.Error)
		}
		t.Fatalf("%d watcher records, want 2", len(allRecords(t, st, "watch")))
	}
	recs := allRecords(t, st, "watch")
	if got := string(recs[0].Data); got != `{"new":600000,"old":0,"old_omitted":false}` {
		t.Errorf("first change: %s", got)
	}
	if got := string(recs[1].Data); got != `{"new":600000,"old":0,"old_omitted":true}` {
		t.Errorf("second change: %s, want the new value and old_omitted", got)
	}
}

// TestStateEventOnlyOnChange: a delete of a key that is not there, or a
// value set again unchanged, runs no watcher; a change does.
func TestStateEventOnlyOnChange(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "src", `function handle(e)
  if e.payload == "noop" then state.delete("k/x") else state.set("k/x", 1) end
end`, "triggers:\n  - http: {methods: [POST]}\n")
	writeFunction(t, fnDir, "watch", `function handle(e) return json.decode(e.payload) end`, "triggers:\n  - state: {function: src, prefix: \"k/\"}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	for _, payload := range []string{"noop", "set", "set"} { // absent key deleted; set; set to the same value
		res, err := p.d.Gateway().Invoke(t.Context(), "src", &luavm.Event{Payload: []byte(payload), Trigger: "invoke"}, true, nil)
		if err != nil || res.Err != nil {
			t.Fatal(err, res.Err)
		}
	}
	// One more change after them: events of one key run in order, so once
	// its record is there any earlier event's would be too.
	res, err := p.d.Gateway().Invoke(t.Context(), "src", &luavm.Event{Payload: []byte("noop"), Trigger: "invoke"}, true, nil)
	if err != nil || res.Err != nil {
		t.Fatal(err, res.Err)
	}
	st := p.d.Store()
	waitFor(t, 10*time.Second, "the delete's event", func() bool { return len(allRecords(t, st, "watch")) >= 2 })
	var got []string
	for _, r := range allRecords(t, st, "watch") {
		got = append(got, string(r.Data))
	}
	if want := []string{`{"function":"src","key":"k/x","new":1,"old":null}`, `{"function":"src","key":"k/x","new":null,"old":1}`}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("watcher records %q, want only the two changes %q", got, want)
	}
}

// TestChainBudgetBoundedByTheSetting: a chained event written while
// max_chain_events was larger spends at most the current setting (it
// spent its old budget after the setting was lowered).
func TestChainBudgetBoundedByTheSetting(t *testing.T) {
	g := &Gateway{opts: Options{MaxChainEvents: 10}}
	ft := &funcTable{chain: buildChainIndex(map[string]*Function{"f": {Name: "f", Streams: []string{"s"}}})}
	// An event of budget 500 in the inbox (written with max_chain_events 1000).
	_, hops, budget, err := decodeEventChain(encodeChained(&luavm.Event{ID: "x"}, 1, 500))
	if err != nil {
		t.Fatal(err)
	}
	c := &store.Commit{Records: []store.Record{{Stream: "s", Data: []byte(`{}`)}}}
	if err := g.chainCommit(ft, c, hops, budget); err != nil {
		t.Fatal(err)
	}
	out := c.Chain(store.Change{Record: &c.Records[0]})
	_, _, child, err := decodeEventChain(out[0].Event)
	if err != nil {
		t.Fatal(err)
	}
	if child > g.opts.MaxChainEvents {
		t.Fatalf("chained event carries a budget of %d with max_chain_events %d", child, g.opts.MaxChainEvents)
	}
}

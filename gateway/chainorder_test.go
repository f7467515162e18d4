package gateway

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// TestStateTriggerOrderPerKey: state-triggered events are ordered per key
// (docs/functions.md). Commits of different lanes (devices) that change
// one key chain events to one lane of the watcher: they ran in the order
// their callers woke up after a group commit, not that of the changes
// (2 runs in 5 had some out of order). The store's committer hands them
// over in order now (Store.SetChained). Found by a review
// (TestReviStateTriggerOrderPerKey).
func TestStateTriggerOrderPerKey(t *testing.T) {
	const devices, perDevice = 8, 50
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "counter", `function handle(e) state.incr("total") end`, referenceManifest)
	writeFunction(t, fnDir, "mirror", `function handle(e)
  local c = json.decode(e.payload)
  state.set("seen", c.new)
  return {old = c.old, new = c.new}
end`, "triggers:\n  - state: {function: counter, prefix: \"total\"}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	url := "tcp://" + p.d.MQTTAddr().String()
	var wg sync.WaitGroup
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tryConnect(t, url, fmt.Sprintf("ord%d", d), true, nil)
			if err != nil {
				t.Error(err)
				return
			}
			for n := range perDevice {
				if err := tryPublish(c, fmt.Sprintf("devices/d%d/telemetry", d), 1, fmt.Appendf(nil, `{"n":%d}`, n)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := p.d.Store()
	total := devices * perDevice
	waitFor(t, 30*time.Second, "every change mirrored", func() bool { return len(allRecords(t, st, "mirror")) == total })
	prev, disorder := 0, 0
	for _, r := range recordsBySeq(t, st, "mirror") {
		var x struct{ Old, New int }
		_ = json.Unmarshal(r.Data, &x)
		if x.New != prev+1 {
			if disorder < 5 {
				t.Logf("mirror ran the change %d->%d after the change to %d", x.Old, x.New, prev)
			}
			disorder++
		}
		prev = x.New
	}
	seen, _, _ := st.GetState(t.Context(), "mirror", "seen")
	if disorder > 0 {
		t.Fatalf("%d of %d state-triggered events of key \"total\" ran out of order (mirror's last seen value %s, counter's total %d)", disorder, total, seen, total)
	}
}

// TestStreamOrderWithoutDevice: stream-triggered events of records
// without a device are ordered per stream (docs/functions.md), also when
// committed invocations (API / HTTP calls) commit them concurrently (3
// runs in 3 had some out of order). Found by a review
// (TestReviStreamOrderWithoutDevice).
func TestStreamOrderWithoutDevice(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "src", `function handle(e) emit("s", {x = 1}) end`, "triggers:\n  - http: {methods: [POST]}\n")
	writeFunction(t, fnDir, "lis", `function handle(e) return {rid = e.record_id} end`, "triggers:\n  - stream: s\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	g := p.d.Gateway()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if r, err := g.Invoke(t.Context(), "src", &luavm.Event{Trigger: "invoke"}, true, nil); err != nil || !r.Committed {
					t.Errorf("invoke: %v %+v", err, r)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := p.d.Store()
	waitFor(t, 30*time.Second, "every record listened to", func() bool { return len(allRecords(t, st, "lis")) == 400 })
	seqOf := map[string]uint64{}
	for _, r := range allRecords(t, st, "src") {
		seqOf[r.ID] = r.Seq
	}
	var prev uint64
	disorder := 0
	for _, r := range recordsBySeq(t, st, "lis") {
		var x struct{ Rid string }
		_ = json.Unmarshal(r.Data, &x)
		s := seqOf[x.Rid]
		if s < prev {
			if disorder < 5 {
				t.Logf("listener ran record seq %d after record seq %d", s, prev)
			}
			disorder++
		}
		prev = max(prev, s)
	}
	if disorder > 0 {
		t.Fatalf("%d of 400 stream-triggered events of stream s (no device) ran out of record order", disorder)
	}
}

// recordsBySeq is allRecords in commit order (allRecords lists them by
// event time, which for a listener is its source's: the time a call
// started, not the order the calls committed).
func recordsBySeq(t *testing.T, st *store.Store, function string) []store.Record {
	t.Helper()
	recs := allRecords(t, st, function)
	slices.SortFunc(recs, func(a, b store.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	return recs
}

package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

const referenceManifest = "triggers:\n  - mqtt: devices/{device}/telemetry\n"

// allRecords reads every record of a function, oldest first.
func allRecords(t testing.TB, st *store.Store, function string) []store.Record {
	t.Helper()
	var out []store.Record
	cursor := ""
	for {
		recs, next, err := st.QueryRecords(context.Background(), store.Query{Function: function, Limit: 1000, Cursor: cursor})
		if err != nil {
			t.Fatalf("query records: %v", err)
		}
		out = append(out, recs...)
		if next == "" || len(recs) == 0 {
			return out
		}
		cursor = next
	}
}

// subscribe collects messages on filter into a channel.
func subscribe(t testing.TB, c paho.Client, filter string) <-chan paho.Message {
	t.Helper()
	ch := make(chan paho.Message, 1024)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { ch <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return ch
}

func expectMessage(t testing.TB, ch <-chan paho.Message, topic, payload string) {
	t.Helper()
	select {
	case m := <-ch:
		if m.Topic() != topic || string(m.Payload()) != payload {
			t.Fatalf("got %s %s, want %s %s", m.Topic(), m.Payload(), topic, payload)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no message on %s", topic)
	}
}

// runReferenceFlow publishes two readings and checks the command back and
// the two records.
func runReferenceFlow(t *testing.T, p *inProcess, url string) {
	sub := connect(t, url, "observer", true)
	cmds := subscribe(t, sub, "devices/+/cmd")
	dev := connect(t, url, "d1", true)
	publish(t, dev, "devices/d1/telemetry", 1, []byte(`{"temp":85}`))
	publish(t, dev, "devices/d1/telemetry", 1, []byte(`{"temp":20.5}`))
	expectMessage(t, cmds, "devices/d1/cmd", `{"fan":"on"}`)

	st := p.d.Store()
	waitFor(t, 20*time.Second, "two records", func() bool { return len(allRecords(t, st, "reference")) == 2 })
	recs := allRecords(t, st, "reference")
	var got []map[string]float64
	for _, r := range recs {
		var m map[string]float64
		if err := json.Unmarshal(r.Data, &m); err != nil {
			t.Fatalf("record data %s: %v", r.Data, err)
		}
		got = append(got, m)
		if r.Device != "d1" || r.Stream != "reference" || r.EventID == "" || r.ID == "" {
			t.Errorf("record metadata: %+v", r)
		}
	}
	if got[0]["temp"] != 85 || got[0]["temp_f"] != 185 || got[1]["temp"] != 20.5 || got[1]["temp_f"] != 68.9 {
		t.Errorf("records: %v", got)
	}
	select {
	case m := <-cmds:
		t.Errorf("unexpected command %s %s", m.Topic(), m.Payload())
	default:
	}
}

func TestEndToEndEmbeddedBroker(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))

	base := "http://" + p.d.HTTPAddr().String()
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, _ := httpGet(t, base+"/readyz"); code != 200 {
		t.Errorf("readyz: %d", code)
	}
	runReferenceFlow(t, p, "tcp://"+p.d.MQTTAddr().String())
}

func TestEndToEndExternalMosquitto(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, externalMQTT(m.URL(), "moongate-e2e")))
	if p.d.MQTTAddr() != nil {
		t.Fatalf("external mode has an embedded broker address")
	}
	runReferenceFlow(t, p, m.URL())
}

// TestManyFunctionsOneTopic: every matching function gets the event once.
func TestManyFunctionsOneTopic(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "a", `function handle(e) return {fn="a", device=e.device} end`, referenceManifest)
	writeFunction(t, fnDir, "b", `function handle(e) return {fn="b", topic=e.topic} end`,
		"triggers:\n  - mqtt: devices/+/telemetry\n  - mqtt: devices/#\n")
	writeFunction(t, fnDir, "c", `function handle(e) return {fn="c"} end`, "triggers:\n  - mqtt: other/#\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d7", true)
	publish(t, dev, "devices/d7/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	waitFor(t, 20*time.Second, "records of a and b", func() bool {
		return len(allRecords(t, st, "a")) == 1 && len(allRecords(t, st, "b")) == 1
	})
	if n := len(allRecords(t, st, "c")); n != 0 {
		t.Errorf("c ran %d times on a topic it does not match", n)
	}
	a := allRecords(t, st, "a")[0]
	b := allRecords(t, st, "b")[0]
	if a.EventID != b.EventID || string(a.Data) != `{"device":"d7","fn":"a"}` {
		t.Errorf("a=%s (%s) b=%s (%s)", a.Data, a.EventID, b.Data, b.EventID)
	}
}

func TestTimerTrigger(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "tick", `function handle(e) return {trigger=e.trigger} end`, "triggers:\n  - timer: \"@every 1s\"\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "a timer record", func() bool { return len(allRecords(t, st, "tick")) >= 1 })
	if r := allRecords(t, st, "tick")[0]; string(r.Data) != `{"trigger":"timer"}` {
		t.Errorf("timer record %s", r.Data)
	}
}

// TestBadInputAndFailingFunction: malformed and empty payloads and a
// function that always fails end in the dead letters with their reason,
// and other devices keep being served.
func TestBadInputAndFailingFunction(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	writeFunction(t, fnDir, "broken", `function handle(e) error("boom " .. e.device) end`, "triggers:\n  - mqtt: devices/{device}/bad\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {retry: {max_attempts: 2, initial_backoff: 5ms, max_backoff: 10ms}}\n"))
	url := "tcp://" + p.d.MQTTAddr().String()
	bad := connect(t, url, "bad", true)
	good := connect(t, url, "good", true)
	publish(t, bad, "devices/m/telemetry", 1, []byte(`{"temp": 2`))
	publish(t, bad, "devices/e/telemetry", 1, nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 100 {
			if err := tryPublish(bad, fmt.Sprintf("devices/b%d/bad", i%5), 1, []byte(`{}`)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 300 {
		publish(t, good, fmt.Sprintf("devices/g%d/telemetry", i%10), 1, []byte(`{"temp":1}`))
	}
	wg.Wait()
	st := p.d.Store()
	waitFor(t, 30*time.Second, "300 good records", func() bool { return len(allRecords(t, st, "reference")) == 300 })
	waitFor(t, 30*time.Second, "102 dead letters", func() bool {
		dl, err := st.ListDeadLetters(context.Background(), "", 0, 1000)
		return err == nil && len(dl) == 102
	})
	dl, _ := st.ListDeadLetters(context.Background(), "reference", 0, 10)
	if len(dl) != 2 {
		t.Fatalf("reference dead letters: %d", len(dl))
	}
	for _, d := range dl {
		if d.Attempts != 2 || !strings.Contains(strings.ToLower(d.Error), "json") {
			t.Errorf("dead letter: attempts %d error %q", d.Attempts, d.Error)
		}
	}
	broken, _ := st.ListDeadLetters(context.Background(), "broken", 0, 1000)
	if len(broken) != 100 || !strings.Contains(broken[0].Error, "boom b") {
		t.Errorf("broken dead letters: %d, first %+v", len(broken), broken[0])
	}
	// The counters go up after the commit returns, which is after the
	// store shows its outputs.
	waitFor(t, 10*time.Second, "stats: 300 processed, 102 dead-lettered", func() bool {
		s := p.d.Gateway().Stats()
		return s.DeadLettered == 102 && s.Processed == 300
	})
}

// TestExampleFunctions runs the README's walk-through on the shipped
// example functions.
func TestExampleFunctions(t *testing.T) {
	p := startInProcess(t, testConfig(t.TempDir(), "../docs/examples/functions", ""))
	if n := len(p.d.Gateway().Functions()); n != 2 {
		t.Fatalf("example functions loaded: %d, want 2", n)
	}
	runReferenceFlow(t, p, "tcp://"+p.d.MQTTAddr().String())
}

// TestFunctionVersions: a changed file is deployed as the next version
// while the gateway runs; without a functions directory the store's active
// versions are deployed at start.
func TestFunctionVersions(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	src := `function handle(e, ctx) return {v = %d, version = ctx.version} end`
	writeFunction(t, fnDir, "ver", fmt.Sprintf(src, 1), referenceManifest)
	p := startInProcess(t, testConfig(dataDir, fnDir, ""))
	url := "tcp://" + p.d.MQTTAddr().String()
	dev := connect(t, url, "dv", true)
	publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "first record", func() bool { return len(allRecords(t, st, "ver")) == 1 })

	writeFunction(t, fnDir, "ver", fmt.Sprintf(src, 2), referenceManifest)
	waitFor(t, 10*time.Second, "version 2 deployed", func() bool {
		fns := p.d.Gateway().Functions()
		return len(fns) == 1 && fns[0].Version == 2
	})
	publish(t, dev, "devices/dv/telemetry", 1, []byte(`{}`))
	waitFor(t, 10*time.Second, "second record", func() bool { return len(allRecords(t, st, "ver")) == 2 })
	recs := allRecords(t, st, "ver")
	if string(recs[0].Data) != `{"v":1,"version":1}` || string(recs[1].Data) != `{"v":2,"version":2}` {
		t.Errorf("records %s, %s", recs[0].Data, recs[1].Data)
	}
	p.stop(t)

	// Restart without the directory: version 2 comes from the store.
	p2 := startInProcess(t, testConfig(dataDir, "", ""))
	fns := p2.d.Gateway().Functions()
	if len(fns) != 1 || fns[0].Name != "ver" || fns[0].Version != 2 {
		t.Fatalf("functions after restart: %+v", fns)
	}
}

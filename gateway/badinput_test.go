package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// TestLimitBreachGoesStraightToDeadLetters: a function that breaches a
// sandbox limit is not retried, and other functions keep running.
func TestLimitBreachGoesStraightToDeadLetters(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "spin", `function handle(e) while true do end end`,
		"triggers:\n  - mqtt: devices/{device}/spin\nlimits: {max_steps: 100000}\n")
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {retry: {max_attempts: 5, initial_backoff: 1s}}\n"))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "spinner", true)
	publish(t, dev, "devices/s/spin", 1, []byte(`{}`))
	publish(t, dev, "devices/s/telemetry", 1, []byte(`{"temp":1}`))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		dl, err := st.ListDeadLetters(context.Background(), "spin", 0, 10)
		return err == nil && len(dl) == 1
	})
	dl, _ := st.ListDeadLetters(context.Background(), "spin", 0, 10)
	if dl[0].Attempts != 1 || !strings.Contains(strings.ToLower(dl[0].Error), "budget") {
		t.Errorf("dead letter: attempts %d, error %q", dl[0].Attempts, dl[0].Error)
	}
	waitFor(t, 10*time.Second, "the other function's record", func() bool { return len(allRecords(t, st, "reference")) == 1 })
}

// TestOversizePayloadExternal: a payload over the limit that reaches
// moongate through an external broker is acknowledged (redelivery would
// fail forever) and kept as a dead letter with its reason and a bounded
// head of the payload.
func TestOversizePayloadExternal(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, externalMQTT(m.URL(), "moongate-oversize")+"  max_payload: 64KiB\n"))
	dev := connect(t, m.URL(), "big", true)
	publish(t, dev, "devices/big/telemetry", 1, bytes.Repeat([]byte("x"), 1<<20))
	publish(t, dev, "devices/big/telemetry", 0, bytes.Repeat([]byte("y"), 1<<19)) // QoS 0: sizes by arrival order
	publish(t, dev, "devices/big/telemetry", 1, []byte(`{"temp":3}`))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "the normal record", func() bool { return len(allRecords(t, st, "reference")) == 1 })
	waitFor(t, 10*time.Second, "the dead letters", func() bool {
		dl, err := st.ListDeadLetters(context.Background(), "", 0, 10)
		return err == nil && len(dl) == 2
	})
	dl, _ := st.ListDeadLetters(context.Background(), "", 0, 10)
	for i, size := range []int{1 << 20, 1 << 19} {
		if want := fmt.Sprintf("payload too large: %d bytes, limit 65536", size); !strings.Contains(dl[i].Error, want) || len(dl[i].Event) > 70<<10 {
			t.Errorf("dead letter %d: %q (want %q), %d bytes kept", i, dl[i].Error, want, len(dl[i].Event))
		}
	}
	if s := p.d.Gateway().Stats(); s.Rejected != 2 {
		t.Errorf("rejected: %d", s.Rejected)
	}
}

// TestHugePayloadExternalNotHeld: a device publishing 64 MiB through an
// external broker that takes it (mosquitto's default message_size_limit
// is 256 MiB) costs the gateway about max_payload, not the payload: the
// connection cuts it as it reads. paho allocated the whole packet first (a
// Pi Zero has 512 MiB; a QoS 1 message came back after every restart).
// The device publishes from another process (mosquitto_pub), so that the
// allocations counted here are the gateway's.
func TestHugePayloadExternalNotHeld(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, externalMQTT(m.URL(), "moongate-huge")+"  max_payload: 64KiB\n"))
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st := p.d.Store()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(m.Port()), "-i", "huge-device",
		"-t", "devices/huge/telemetry", "-q", "1", "-f", big).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	waitFor(t, 30*time.Second, "the dead letter", func() bool {
		dl, err := st.ListDeadLetters(context.Background(), "", 0, 10)
		return err == nil && len(dl) == 1
	})
	runtime.ReadMemStats(&after)
	dl, _ := st.ListDeadLetters(context.Background(), "", 0, 10)
	if !strings.Contains(dl[0].Error, "payload too large: 67108864 bytes, limit 65536") {
		t.Errorf("dead letter: %q", dl[0].Error)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes while a 64 MiB message went by", alloc)
	if alloc > 24<<20 {
		t.Errorf("a 64 MiB message cost the gateway %d bytes of allocation", alloc)
	}
	if s := p.d.ingest.(*mqtt.External).Stats(); s.Clipped != 1 {
		t.Errorf("clipped: %d", s.Clipped)
	}
	// And the gateway carries on.
	dev := connect(t, m.URL(), "small", true)
	publish(t, dev, "devices/small/telemetry", 1, []byte(`{"temp":3}`))
	waitFor(t, 10*time.Second, "the normal record", func() bool { return len(allRecords(t, st, "reference")) == 1 })
}

// TestOversizePayloadEmbedded: the embedded broker refuses a payload over
// the limit before it reaches the pipeline; the gateway keeps serving.
func TestOversizePayloadEmbedded(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "mqtt:\n  max_payload: 64KiB\n  embedded: {listen: \"127.0.0.1:0\"}\n"))
	url := "tcp://" + p.d.MQTTAddr().String()
	big := connect(t, url, "big", true)
	tok := big.Publish("devices/big/telemetry", 1, false, bytes.Repeat([]byte("x"), 1<<20))
	tok.WaitTimeout(2 * time.Second) // refused: the broker drops the client, the token may never complete
	dev := connect(t, url, "small", true)
	publish(t, dev, "devices/small/telemetry", 1, []byte(`{"temp":3}`))
	st := p.d.Store()
	waitFor(t, 10*time.Second, "the normal record", func() bool { return len(allRecords(t, st, "reference")) == 1 })
	if r := allRecords(t, st, "reference")[0]; r.Device != "small" {
		t.Errorf("record from %q", r.Device)
	}
	// The refusal is visible to the operator. (The big client reconnects
	// by itself and may send its message again: at least once.)
	var m string
	metric := func(name string) int {
		for _, l := range strings.Split(m, "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("%s: %v", l, err)
				}
				return n
			}
		}
		t.Fatalf("/metrics lacks %s:\n%s", name, m)
		return 0
	}
	// A resend counts as received, then as refused: scrape until the two
	// agree.
	waitFor(t, 5*time.Second, "mqtt metrics counting one accepted publish and the refused ones", func() bool {
		_, m = httpGet(t, "http://"+p.d.HTTPAddr().String()+"/metrics")
		oversize := metric(`moongate_mqtt_rejected_total{reason="oversize"}`)
		return oversize >= 1 && metric("moongate_mqtt_received_total") == oversize+1
	})
	if metric(`moongate_mqtt_rejected_total{reason="unauthorized"}`) != 0 {
		t.Errorf("unauthorized refusals counted:\n%s", m)
	}
	// The broker's state: the "small" client connected (the big one may be
	// reconnecting); retained, only mochi's own $SYS topics.
	if c := metric("moongate_mqtt_clients_connected"); c < 1 || c > 2 || metric("moongate_mqtt_sessions") < c {
		t.Errorf("mqtt state metrics:\n%s", m)
	}
	if r := metric("moongate_mqtt_retained"); r < 10 || r > 40 {
		t.Errorf("mqtt state metrics:\n%s", m)
	}
}

// TestHandleRejectsInvalidTopic: the intake check behind the brokers' own
// (both refuse invalid UTF-8): such a message is dead-lettered, not run.
func TestHandleRejectsInvalidTopic(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, "triggers:\n  - mqtt: \"#\"\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, ""))
	g := p.d.Gateway()
	for _, topic := range []string{"devices/\xff\xfe/telemetry", ""} {
		if err := g.handle(context.Background(), &mqtt.Message{Topic: topic, Payload: []byte(`{"temp":1}`), QoS: 1}); err != nil {
			t.Fatalf("handle %q: %v", topic, err)
		}
	}
	dl, err := p.d.Store().ListDeadLetters(context.Background(), "", 0, 10)
	if err != nil || len(dl) != 2 || !strings.Contains(dl[0].Error, "invalid topic") {
		t.Fatalf("dead letters %v %+v", err, dl)
	}
	if n := len(allRecords(t, p.d.Store(), "reference")); n != 0 {
		t.Errorf("records: %d", n)
	}
}

// TestOutputsRefusedForGood: outputs the store can never take (an invalid
// stream name, a device capture over the store's limit) and a function
// failing on a large event do not hold their lane: each event goes to the
// dead letters, with the reason and (the large one) its whole event, and
// the next events of the same lane are processed. Before, each was retried
// forever, and its lane (and the backlog's room) never freed.
func TestOutputsRefusedForGood(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "streams", `function handle(e)
  if e.payload == "bad" then emit(("s"):rep(2000), {x = 1}) end
  if e.payload == "nul" then emit("a\0b", {x = 1}) end
  if e.payload == "nobucket" then blob.delete("nosuch", "x") end
  return {p = e.payload}
end`, "triggers:\n  - mqtt: s/{device}\n")
	writeFunction(t, fnDir, "longdev", `function handle(e) return {x = 1} end`, "triggers:\n  - mqtt: long/{device}/t\n")
	writeFunction(t, fnDir, "fails", `function handle(e) error("boom") end`, "triggers:\n  - mqtt: f/{device}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "pipeline: {retry: {max_attempts: 2, initial_backoff: 10ms}}\n"))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "refused", true)
	for _, pl := range []string{"ok1", "bad", "ok2", "nul", "nobucket", "ok3"} {
		publish(t, dev, "s/d1", 1, []byte(pl))
	}
	// The embedded broker refuses topics over 1 KiB (mqtt.MaxTopicLen); an
	// external broker may pass one: straight to the intake.
	if err := p.d.Gateway().handle(context.Background(), &mqtt.Message{Topic: "long/" + strings.Repeat("d", 2000) + "/t", Payload: []byte(`{}`), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 200<<10) // under the default max_payload (256KiB)
	publish(t, dev, "f/d1", 1, big)
	st := p.d.Store()
	waitFor(t, 20*time.Second, "the records of the good events", func() bool { return len(allRecords(t, st, "streams")) == 3 })
	for i, r := range allRecords(t, st, "streams") {
		if want := `{"p":"ok` + strconv.Itoa(i+1) + `"}`; string(r.Data) != want {
			t.Errorf("record %d: %s, want %s", i, r.Data, want)
		}
	}
	var dls []store.DeadLetter
	waitFor(t, 20*time.Second, "five dead letters", func() bool {
		var err error
		dls, err = st.ListDeadLetters(context.Background(), "", 0, 10)
		return err == nil && len(dls) == 5
	})
	byFn := map[string][]store.DeadLetter{}
	for _, dl := range dls {
		byFn[dl.Function] = append(byFn[dl.Function], dl)
	}
	// emit refuses a stream name the store would refuse (the function
	// fails, saying why); the store refuses a device capture over its
	// limit and a blob operation on an unknown bucket.
	wantErr := []string{"stream name longer than 1024 bytes", "stream name contains a NUL byte", "outputs refused by the store: store: invalid argument: store: not found: bucket", "outputs refused by the store: store: invalid argument"}
	for i, dl := range append(byFn["streams"], byFn["longdev"]...) {
		if i >= len(wantErr) || !strings.Contains(dl.Error, wantErr[i]) {
			t.Errorf("dead letter %d of %s: %q", i, dl.Function, dl.Error)
		}
	}
	if len(byFn["streams"]) != 3 || len(byFn["longdev"]) != 1 || len(byFn["fails"]) != 1 {
		t.Fatalf("dead letters by function: %v", byFn)
	}
	if dl := byFn["fails"][0]; !strings.Contains(dl.Error, "boom") || dl.Attempts != 2 || len(dl.Event) < len(big) {
		t.Errorf("dead letter of the large event: attempts %d, %d bytes kept, error %q", dl.Attempts, len(dl.Event), dl.Error)
	}
	// The counters go up after the commit returns, which is after the
	// store shows its outputs.
	waitFor(t, 10*time.Second, "stats: 3 processed, 5 dead-lettered", func() bool {
		s := p.d.Gateway().Stats()
		return s.Processed == 3 && s.DeadLettered == 5
	})
}

// TestLargestPayloadIsProcessed: an event of the largest payload the
// configuration allows (1MiB) is queued and run: the store's value limit
// is sized for the payload and its topic. Before, such an event was over
// the store's 1 MiB limit with its topic and was refused (and redelivered)
// forever.
func TestLargestPayloadIsProcessed(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "size", `function handle(e) return {n = #e.payload} end`, "triggers:\n  - mqtt: big/{device}\n")
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "mqtt:\n  max_payload: 1MiB\n  embedded: {listen: \"127.0.0.1:0\"}\n"))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "big", true)
	publish(t, dev, "big/"+strings.Repeat("d", 1000), 1, bytes.Repeat([]byte("x"), 1<<20))
	st := p.d.Store()
	waitFor(t, 20*time.Second, "the record", func() bool { return len(allRecords(t, st, "size")) == 1 })
	if r := allRecords(t, st, "size")[0]; string(r.Data) != `{"n":1048576}` {
		t.Errorf("record %s", r.Data)
	}
}

// TestUnauthenticatedConnectionsShed: mqtt.embedded.max_unauthenticated
// and max_unauthenticated_per_address reach the broker, and connections
// past them are counted in /metrics.
func TestUnauthenticatedConnectionsShed(t *testing.T) {
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, "mqtt:\n  embedded: {listen: \"127.0.0.1:0\", max_unauthenticated: 2, max_unauthenticated_per_address: 1}\n"))
	addr := p.d.MQTTAddr().String()
	idle, err := net.Dial("tcp", addr) // holds 127.0.0.1's only slot: never sends CONNECT
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	shed := func() int {
		_, m := httpGet(t, "http://"+p.d.HTTPAddr().String()+"/metrics")
		for _, l := range strings.Split(m, "\n") {
			if v, ok := strings.CutPrefix(l, "moongate_mqtt_connections_shed_total "); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		t.Fatalf("/metrics lacks moongate_mqtt_connections_shed_total")
		return 0
	}
	if n := shed(); n != 0 {
		t.Fatalf("shed before: %d", n)
	}
	// The slot is taken at accept; the second connection from the address
	// is closed unread.
	waitFor(t, 10*time.Second, "a connection shed", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
		return shed() >= 1
	})
	// Another address (any of 127.0.0.0/8 is one on Linux) has the
	// listener's other slot: its CONNECT (MQTT 3.1.1, anonymous, id "x")
	// is accepted.
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'x'}); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK from another address: % x, %v", ack, err)
	}
}

// TestStreamNameLimitsAgree pins luavm's check of emitted stream names to
// the store's limit on names: what emit accepts, the store keeps.
func TestStreamNameLimitsAgree(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Commit(ctx, &store.Commit{Records: []store.Record{{Stream: strings.Repeat("s", luavm.MaxStreamNameBytes), Data: []byte(`1`)}}}); err != nil {
		t.Fatalf("a stream name emit accepts: %v", err)
	}
	if _, err := st.Commit(ctx, &store.Commit{Records: []store.Record{{Stream: strings.Repeat("s", luavm.MaxStreamNameBytes+1), Data: []byte(`1`)}}}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("a stream name one byte longer: %v, want ErrInvalid", err)
	}
}

// TestSourceLimitsAgree pins the source limit of deploys and the
// functions_dir loader to the Lua compiler's: a source one accepts, the
// other compiles.
func TestSourceLimitsAgree(t *testing.T) {
	if trigger.MaxSourceBytes != luavm.DefaultMaxSourceBytes {
		t.Fatalf("trigger.MaxSourceBytes %d, luavm.DefaultMaxSourceBytes %d", trigger.MaxSourceBytes, luavm.DefaultMaxSourceBytes)
	}
}

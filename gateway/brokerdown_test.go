package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// TestTimersRunWhileExternalBrokerDown: the external broker is down when
// the daemon starts (still booting, or gone). Timer functions do not need
// it and run at once (Run waited in Ingest.Start, so nothing ran until the
// broker came up); their local publishes wait in the publish outbox and go
// out once it is up, and device events flow from then on. (Found by a
// review: TestRev8TimersRunWhileExternalBrokerDown.)
func TestTimersRunWhileExternalBrokerDown(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	m.Stop() // its port is known, nothing listens there
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "tick", `function handle(e)
  mqtt.publish("out/tick", "tick", {qos = 1})
  return {trigger = e.trigger}
end`, "triggers:\n  - timer: \"@every 1s\"\n")
	writeFunction(t, fnDir, "status", statusLua, "triggers:\n  - mqtt: devices/{device}/status\n")
	cfg, err := config.Parse("test.yaml", []byte(testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-down"))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := NewDaemon(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	waitFor(t, 15*time.Second, "a record of the timer function while the broker is down", func() bool {
		return len(allRecords(t, d.Store(), "tick")) > 0
	})
	if d.Gateway().Ready() {
		t.Fatal("the gateway says ready with its broker down")
	}
	// A replay (dead letters) works too: it needs the inbox, not the broker.
	ev := &luavm.Event{Payload: []byte("replayed"), Captures: map[string]string{"device": "d0"}, Trigger: "mqtt"}
	if err := d.Gateway().Requeue(ctx, "status", "d0", encodeEvent(ev), 0); err != nil {
		t.Fatalf("requeue while the broker is down: %v", err)
	}
	waitFor(t, 15*time.Second, "the replayed event's record", func() bool { return len(allRecords(t, d.Store(), "status")) == 1 })

	m.Restart()
	got := make(chan struct{}, 1)
	sub := connect(t, m.URL(), "watcher", true)
	if tok := sub.Subscribe("out/tick", 1, func(paho.Client, paho.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	waitFor(t, 30*time.Second, "gateway ready once the broker is up", d.Gateway().Ready)
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no publish of the timer function reached the broker once it was up")
	}
	dev := connect(t, m.URL(), "d1", true)
	publish(t, dev, "devices/d1/status", 1, []byte("online"))
	waitFor(t, 20*time.Second, "the device event's record", func() bool { return len(allRecords(t, d.Store(), "status")) == 2 })
}

// TestLocalPublishFailuresLoggedOnce: while the external broker is away,
// every commit with a local publish (and every second) tries the publish
// outbox again; each failure was a warning line (a timer or HTTP function
// filled the journal of a Pi with one line per event). The failure is
// logged when it starts, then at most once a minute, and its end once.
func TestLocalPublishFailuresLoggedOnce(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "ping", `function handle(e)
  mqtt.publish("out/ping", e.payload, {qos = 1})
  return {}
end`, "triggers:\n  - mqtt: in/ping\n")
	logs := &lockedBuffer{}
	p := startInProcessLog(t, testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-pubfail")), logs)
	g := p.d.Gateway()
	m.Stop()
	waitFor(t, 20*time.Second, "the gateway sees the broker gone", func() bool { return !g.Ready() })
	const n = 30
	for i := range n {
		r, err := g.Invoke(t.Context(), "ping", &luavm.Event{Payload: []byte{'a' + byte(i%26)}, Trigger: "http"}, true, nil)
		if err != nil || r.Err != nil || !r.Committed {
			t.Fatalf("invoke %d: %+v %v", i, r, err)
		}
	}
	waitFor(t, 10*time.Second, "a logged publish failure", func() bool {
		return strings.Contains(logs.String(), "local publish failed")
	})
	// The invocations' commits and the publisher's tick try again: each
	// failed try is counted.
	waitFor(t, 10*time.Second, "failed tries after the first", func() bool { return g.Stats().PublishRetries >= 3 })
	if c := strings.Count(logs.String(), "local publish failed"); c != 1 {
		t.Fatalf("%d failure lines for one outage of %d publishes:\n%s", c, n, logs.String())
	}

	m.Restart()
	waitFor(t, 30*time.Second, "the publishes sent after the broker came back", func() bool { return g.Stats().Published >= n })
	waitFor(t, 5*time.Second, "the end of the failure logged", func() bool {
		return strings.Contains(logs.String(), "local publishes go out again")
	})
}

// TestFailureLogThrottles: the first failure is logged, repeats within a
// minute are counted, the next line carries their number, and the end is
// logged once.
func TestFailureLogThrottles(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var f failureLog
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 100 {
		f.fail(log, t0.Add(time.Duration(i)*100*time.Millisecond), "down")
	}
	f.fail(log, t0.Add(failureLogEvery), "down")
	f.recovered(log, "up")
	f.recovered(log, "up")
	got := buf.String()
	if c := strings.Count(got, "msg=down"); c != 2 {
		t.Fatalf("%d failure lines, want 2 (start, then a minute later):\n%s", c, got)
	}
	if !strings.Contains(got, "failures_since_last_logged=100") || strings.Count(got, "msg=up failures=101") != 1 {
		t.Fatalf("counts:\n%s", got)
	}
}

// flakyIngest is the embedded broker with every second local publish
// failing as on a link that drops (not the message's fault), while on.
type flakyIngest struct {
	*mqtt.Embedded
	on    atomic.Bool
	calls atomic.Int64
}

func (f *flakyIngest) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	if f.on.Load() && f.calls.Add(1)%2 == 0 {
		return fmt.Errorf("mqtt: publish %s: %w", topic, mqtt.ErrNotConnected)
	}
	return f.Embedded.Publish(ctx, topic, payload, qos, retain)
}

// TestLocalPublishFlappingLoggedOnce: tries that send some publishes and
// then fail are one failure that goes on, not a recovery and a new
// failure each time (two lines per try on a flapping link). Found by a
// review (TestRevPartialBatchFailureThrottled).
func TestLocalPublishFlappingLoggedOnce(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "ping", `function handle(e)
  mqtt.publish("out/a", e.payload, {qos = 1})
  mqtt.publish("out/b", e.payload, {qos = 1})
  mqtt.publish("out/c", e.payload, {qos = 1})
  return {}
end`, "triggers:\n  - mqtt: in/ping\n")
	logs := &lockedBuffer{}
	var fl *flakyIngest
	p := startInProcessWith(t, testConfig(dataDir, fnDir, ""), logs, func(d *Daemon) {
		fl = &flakyIngest{Embedded: d.ingest.(*mqtt.Embedded)}
		d.gw.opts.Ingest = fl
	})
	g := p.d.Gateway()
	fl.on.Store(true)
	const n = 20
	for i := range n {
		r, err := g.Invoke(t.Context(), "ping", &luavm.Event{Payload: []byte{'a' + byte(i)}, Trigger: "http"}, true, nil)
		if err != nil || r.Err != nil || !r.Committed {
			t.Fatalf("invoke %d: %+v %v", i, r, err)
		}
	}
	waitFor(t, 30*time.Second, "ten failed tries", func() bool { return g.Stats().PublishRetries >= 10 })
	if f, u := strings.Count(logs.String(), "local publish failed"), strings.Count(logs.String(), "local publishes go out again"); f != 1 || u != 0 {
		t.Fatalf("%d failure lines and %d recovery lines for one flapping outage:\n%s", f, u, logs.String())
	}
	fl.on.Store(false)
	waitFor(t, 30*time.Second, "every publish sent", func() bool { return g.Stats().Published >= 3*n })
	waitFor(t, 5*time.Second, "the end of the failure logged", func() bool {
		return strings.Count(logs.String(), "local publishes go out again") == 1
	})
}

// TestRequeueBeforeRunSaysStarting: a replay before Run queued the inbox
// backlog is refused (ErrStopped, 503) with a message that says the
// gateway is starting, not "stopped".
func TestRequeueBeforeRunSaysStarting(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	st, err := store.Open(t.Context(), store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	emb, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Store: st, Ingest: emb, Logger: quiet, Runtime: luavm.NewRuntime(luavm.Options{Logger: quiet})})
	if err != nil {
		t.Fatal(err)
	}
	err = g.Requeue(t.Context(), "f", "k", encodeEvent(&luavm.Event{Payload: []byte("x")}), 0)
	if !errors.Is(err, ErrStopped) || !strings.Contains(err.Error(), "not started yet") {
		t.Fatalf("requeue before Run: %v", err)
	}
}

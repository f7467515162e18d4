package gateway

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// An event of a, taken while v1 is deployed, waits for a's only instance
// (a call over the API holds it). v2 (stream s2) is deployed: the waiting
// event moves to v2 and runs v2's code. While it runs, v3 (stream s3) is
// deployed. v2's record is then written where v1's manifest says (stream
// s1): ranAs only knows the current version and the one being deployed.
func TestOutputsOfVersionReplacedTwiceGoToItsStream(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	ver := func(v int64, stream, src string) *Function {
		return &Function{Name: "a", Fingerprint: stream, Version: v, Stream: stream,
			Patterns: []*trigger.Pattern{trigger.MustParsePattern("a/{device}")},
			Spec: luavm.Spec{Source: []byte(src), MaxConcurrency: 1, QueueTimeout: 20 * time.Second,
				Limits: luavm.Limits{Timeout: 10 * time.Second, MaxSteps: 10_000_000_000}}}
	}
	busy := func(ms int, out string) string {
		return `function handle(e)
  local t0 = time.now_ms()
  while time.now_ms() - t0 < ` + strconv.Itoa(ms) + ` do end
  return {v = "` + out + `"}
end`
	}
	v1 := ver(1, "s1", busy(1500, "v1"))
	g := runGateway(t, Options{Store: st, Runtime: rt}, v1)

	// A direct call holds v1's only instance.
	go func() { _, _ = g.Invoke(ctx, "a", &luavm.Event{Trigger: "invoke"}, false, nil) }()
	waitFor(t, 10*time.Second, "the direct call running", func() bool { ps, _ := rt.Stats("a"); return ps.Busy == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "a/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event waiting for an instance", func() bool { ps, _ := rt.Stats("a"); return ps.Waiting == 1 })

	if err := g.SetFunctions(ctx, []*Function{ver(2, "s2", busy(3000, "v2"))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a's event running on v2", func() bool {
		ps, _ := rt.Stats("a")
		return ps.Version == 2 && ps.Busy == 1
	})
	if err := g.SetFunctions(ctx, []*Function{ver(3, "s3", busy(0, "v3"))}); err != nil {
		t.Fatal(err)
	}
	if n := len(allRecords(t, st, "a")); n != 0 {
		t.Fatalf("v2's invocation ended before v3 was deployed (%d records): test setup", n)
	}
	waitFor(t, 20*time.Second, "a's record", func() bool { return len(allRecords(t, st, "a")) == 1 })
	r := allRecords(t, st, "a")[0]
	if string(r.Data) != `{"v":"v2"}` {
		t.Fatalf("record %s: test setup", r.Data)
	}
	if r.Stream != "s2" {
		t.Fatalf("v2's record went to stream %q (v1's manifest), want %q (v2's)", r.Stream, "s2")
	}
}

package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// TestStringResultWithinLimitIsStored: a function returns a string of
// 200,000 bytes, under max_result_bytes (256 KiB by default). The gateway
// stores it as a JSON string with encoding/json, which writes "<" (and
// ">", "&", control bytes, every byte that is not UTF-8) as a six-byte
// escape: the record is 1.2 MB, over the store's 1 MiB value limit, and
// the event goes to the dead letters ("outputs refused") although the
// function stayed within its documented limits.
func TestStringResultWithinLimitIsStored(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	f := &Function{Name: "s", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("s/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return string.rep("<", 200000) end`)}}
	g := runGateway(t, Options{Store: st}, f)
	if err := g.handle(ctx, &mqtt.Message{Topic: "s/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the event consumed", func() bool { return st.InboxLen() == 0 })
	dls, err := st.ListDeadLetters(ctx, "s", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 0 {
		t.Fatalf("a 200,000-byte string result (limit 256 KiB) was dead-lettered: %s", dls[0].Error)
	}
	if n := len(allRecords(t, st, "s")); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
}

// A string whose JSON encoding is over max_result_bytes (control bytes
// take six each) fails the invocation with ErrResultTooLarge, a clear
// dead letter, rather than an outputs-refused one from the store; a
// string that fits is stored as luavm encodes it (`<` as itself).
func TestStringResultCheckedAsStored(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	f := &Function{Name: "s", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("s/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e)
  if e.payload == "big" then return string.rep("\1", 100000) end
  return "a<b\1"
end`)}}
	g := runGateway(t, Options{Store: st}, f)
	for i, p := range []string{"big", "small"} {
		if err := g.handle(ctx, &mqtt.Message{Topic: "s/d1", Payload: []byte(p), QoS: 1, ClientID: "d1", PacketID: uint16(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "both events consumed", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	dls, err := st.ListDeadLetters(ctx, "s", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || !strings.Contains(dls[0].Error, "result too large") {
		t.Fatalf("dead letters %+v, want one: result too large", dls)
	}
	recs := allRecords(t, st, "s")
	if len(recs) != 1 || string(recs[0].Data) != `"a<b\u0001"` {
		t.Fatalf("records %+v, want one: \"a<b\\u0001\"", recs)
	}
}

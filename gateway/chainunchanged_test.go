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

// TestUnchangedStateDoesNotSpendChainBudget: a state write that
// changes nothing triggers nothing (docs/functions.md), yet chainCommit
// counts every watched state operation against the event's chain budget.
// With max_chain_events 1, an event that re-sets a watched key to the
// value it has and changes one other key chains exactly one event, but
// it is dead-lettered with ErrChainBudget ("would chain 2 events").
func TestUnchangedStateDoesNotSpendChainBudget(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	counter := &Function{Name: "counter", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("c/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e)
  state.set("k/mode", "auto")        -- usually unchanged
  state.set("k/last", e.payload)     -- changes
end`)}}
	watch := &Function{Name: "watch", Fingerprint: "v1", StateWatches: []trigger.StateTrigger{{Function: "counter", Prefix: "k/"}},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return json.decode(e.payload) end`)}}
	g := runGateway(t, Options{Store: st, MaxChainEvents: 1}, counter, watch)
	// The operator set the mode already (one chained event: within budget).
	if err := g.WriteState(ctx, store.StateChange{Function: "counter", Key: "k/mode", Op: store.StateSet, Value: []byte(`"auto"`)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the watcher's first record", func() bool { return len(allRecords(t, st, "watch")) == 1 })
	if err := g.handle(ctx, &mqtt.Message{Topic: "c/d1", Payload: []byte(`7`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the event consumed", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	dls, err := st.ListDeadLetters(ctx, "counter", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 0 {
		t.Fatalf("an event whose outputs chain one event (budget 1) was dead-lettered: %s", dls[0].Error)
	}
}

// When the state changes do change (two watched keys, budget 1), the
// commit chains more than the budget: the event is dead-lettered with
// ErrChainBudget, as before, now refused by the commit itself.
func TestChangedStateOverChainBudgetDeadLettered(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	counter := &Function{Name: "counter", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("c/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e)
  state.set("k/a", e.payload)
  state.set("k/b", e.payload)
end`)}}
	watch := &Function{Name: "watch", Fingerprint: "v1", StateWatches: []trigger.StateTrigger{{Function: "counter", Prefix: "k/"}},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return json.decode(e.payload) end`)}}
	g := runGateway(t, Options{Store: st, MaxChainEvents: 1}, counter, watch)
	if err := g.handle(ctx, &mqtt.Message{Topic: "c/d1", Payload: []byte(`7`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the event consumed", func() bool { return st.InboxLen() == 0 && g.Stats().Backlog == 0 })
	dls, err := st.ListDeadLetters(ctx, "counter", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || !strings.Contains(dls[0].Error, ErrChainBudget.Error()) {
		t.Fatalf("dead letters %+v, want one for the chain budget", dls)
	}
	if v, ok, _ := st.GetState(ctx, "counter", "k/a"); ok {
		t.Fatalf("state k/a = %s: the refused commit was applied", v)
	}
}

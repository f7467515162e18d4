package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// TestChainedEntriesStayWithTheRunningGateway: a running gateway's chained
// entries reach its dispatcher through the func of Store.SetChained, which
// Run sets: a second gateway made on the same store and not run (New set
// it at first) took them, and the first one's downstream function did not
// run until a restart. Found by a review
// (TestRevChainedEntriesOfRunningGatewayAfterSecondNew).
func TestChainedEntriesStayWithTheRunningGateway(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	up := &Function{Name: "up", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")}, Stream: "s",
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {p = e.payload} end`)}}
	down := &Function{Name: "down", Fingerprint: "v1", Streams: []string{"s"},
		Spec: luavm.Spec{Source: []byte(`function handle(e, ctx) return {got = e.payload} end`)}}
	g := runGateway(t, Options{Store: st}, up, down)
	// Control: the chain works with one gateway.
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`1`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "down's first record", func() bool { return len(allRecords(t, st, "down")) == 1 })
	_ = newGateway(t, Options{Store: st}) // second gateway on the same store, never run
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`2`), QoS: 1, ClientID: "d1", PacketID: 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "up's second record", func() bool { return len(allRecords(t, st, "up")) == 2 })
	if !poll(5*time.Second, func() bool { return len(allRecords(t, st, "down")) == 2 }) {
		t.Fatalf("down ran %d times of 2 (inbox holds %d, backlog %d): the running gateway's chained entry went to the second gateway's SetChained func",
			len(allRecords(t, st, "down")), st.InboxLen(), g.Stats().Backlog)
	}
}

package gateway

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

func usageTotals(t *testing.T, st *store.Store, fn string) (inv, errs int64) {
	t.Helper()
	us, err := st.QueryUsage(context.Background(), fn, 0, time.Now().Add(time.Hour).UnixMilli(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		inv += u.Invocations
		errs += u.Errors
	}
	return inv, errs
}

// TestRunWhoseCommitIsRefusedIsMetered: while a reject_new records
// quota is full, an event's commit is refused (a quota that clears up: the
// event is retried without end). Every retry runs the function again, and
// none of those runs is metered: usage shows no invocation at all.
func TestRunWhoseCommitIsRefusedIsMetered(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Quotas: map[string]store.Quota{store.SpaceRecords: {MaxBytes: 4096, Policy: store.RejectNew}}})
	// Fill the records quota.
	if _, err := st.Commit(ctx, &store.Commit{Records: []store.Record{{Stream: "x", Function: "other", Data: []byte(`"` + strings.Repeat("a", 3500) + `"`)}}}); err != nil {
		t.Fatal(err)
	}
	rt := luavm.NewRuntime(luavm.Options{Logger: slog.New(slog.DiscardHandler)})
	f := &Function{Name: "f", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("t/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {pad = string.rep("b", 1500)} end`)}}
	g := runGateway(t, Options{Store: st, Runtime: rt, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}}, f)
	if err := g.handle(ctx, &mqtt.Message{Topic: "t/d1", Payload: []byte(`{}`), QoS: 1, ClientID: "d1", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the function run 5 times", func() bool { ps, _ := rt.Stats("f"); return ps.Invocations >= 5 })
	ps, _ := rt.Stats("f")
	if inv, _ := usageTotals(t, st, "f"); inv == 0 {
		t.Fatalf("the function ran %d times (its commit refused by a full quota each time), usage metered %d invocations", ps.Invocations, inv)
	}
}

// TestEventOfMissingFunctionNotMeteredAsRun: an event whose function
// is not deployed is dead-lettered without running anything; it is
// metered all the same as an invocation of that function that failed
// (a call refused busy, which ran nothing either, is not metered).
func TestEventOfMissingFunctionNotMeteredAsRun(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	g := runGateway(t, Options{Store: st})
	ev := luavm.Event{ID: "e1", Topic: "t/d1", Payload: []byte(`{}`), Trigger: "mqtt"}
	if err := g.enqueue(ctx, []store.InboxEntry{{Function: "gone", Key: "d1", Event: encodeEvent(&ev)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		dls, err := st.ListDeadLetters(ctx, "gone", 0, 10)
		return err == nil && len(dls) == 1
	})
	if inv, errs := usageTotals(t, st, "gone"); inv != 0 || errs != 0 {
		t.Fatalf("nothing ran (no such function), usage metered %d invocations, %d errors", inv, errs)
	}
}

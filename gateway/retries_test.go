package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/mqtt"
	"github.com/moongate-edge/moongate/store"
)

// TestRetriesBoundedAcrossRestart: max_attempts is the number of
// invocations in all. The count was kept in memory: after a restart an
// event that had failed twice of three got three more attempts, the first
// without its backoff, and its dead letter said 3. The count and the next
// attempt's time are kept in the store (AttemptsStateFunction).
func TestRetriesBoundedAcrossRestart(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	f := func() *Function {
		return &Function{Name: "bad", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("bad/{device}")},
			Spec: luavm.Spec{Source: []byte(`function handle(e) error("always") end`)}}
	}
	opts := Options{Store: st, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: 300 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}}
	g1 := newGateway(t, opts, f())
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g1.Run(runCtx) }()
	waitFor(t, 10*time.Second, "ready", g1.Ready)
	if err := g1.handle(ctx, &mqtt.Message{Topic: "bad/d", Payload: []byte(`{}`), QoS: 1, ClientID: "c", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "two failed attempts", func() bool { return g1.Stats().Failed == 2 })
	stop()
	<-ran
	first := g1.Stats().Failed
	// The record: two attempts, the next due a backoff after the second.
	kvs, _, err := st.ListState(ctx, AttemptsStateFunction, "", 10, "")
	var rec attemptRecord
	if err != nil || len(kvs) != 1 || json.Unmarshal(kvs[0].Value, &rec) != nil || rec.N != 2 {
		t.Fatalf("attempt records: %v %v", kvs, err)
	}

	g2 := runGateway(t, opts, f())
	waitFor(t, 20*time.Second, "the dead letter", func() bool {
		dls, _ := st.ListDeadLetters(ctx, "bad", 0, 10)
		return len(dls) == 1
	})
	dls, _ := st.ListDeadLetters(ctx, "bad", 0, 10)
	total := first + g2.Stats().Failed
	if total > 3 {
		t.Fatalf("max_attempts 3, but the event ran %d times (%d before the restart, %d after); its dead letter says %d attempts",
			total, first, g2.Stats().Failed, dls[0].Attempts)
	}
	if dls[0].TS < rec.Due {
		t.Fatalf("third attempt at %d, before its backoff ended at %d", dls[0].TS, rec.Due)
	}
	if dls[0].Attempts != 3 {
		t.Fatalf("dead letter says %d attempts, want 3", dls[0].Attempts)
	}
	// The consuming commit deleted the record.
	if kvs, _, err := st.ListState(ctx, AttemptsStateFunction, "", 10, ""); err != nil || len(kvs) != 0 {
		t.Fatalf("attempt records left: %v %v", kvs, err)
	}
}

// TestResumedBackoffCappedAfterClockStep: a restored backoff ends at a
// wall time written before the restart; with the clock a day behind after
// it (a Pi without a clock, NTP stepping back) the lane waited the whole
// difference. It waits at most max_backoff.
func TestResumedBackoffCappedAfterClockStep(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	f := func() *Function {
		return &Function{Name: "bad", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("bad/{device}")},
			Spec: luavm.Spec{Source: []byte(`function handle(e) error("always") end`)}}
	}
	opts := Options{Store: st, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: 300 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}}
	ahead := opts
	ahead.Now = func() time.Time { return time.Now().Add(24 * time.Hour) } // the clock before the restart
	g1 := newGateway(t, ahead, f())
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g1.Run(runCtx) }()
	waitFor(t, 10*time.Second, "ready", g1.Ready)
	if err := g1.handle(ctx, &mqtt.Message{Topic: "bad/d", Payload: []byte(`{}`), QoS: 1, ClientID: "c", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a failed attempt", func() bool { return g1.Stats().Failed >= 1 })
	stop()
	<-ran

	runGateway(t, opts, f()) // the clock after the restart: a day behind
	waitFor(t, 10*time.Second, "the dead letter (max_backoff is 300ms)", func() bool {
		dls, _ := st.ListDeadLetters(ctx, "bad", 0, 10)
		return len(dls) == 1
	})
}

// TestAttemptRecordsOverStateQuotaKeepUsage: once the attempt records
// filled the state quota, a failed attempt's commit was refused for good
// and its usage and logs were lost with its count. They are kept without
// the count.
func TestAttemptRecordsOverStateQuotaKeepUsage(t *testing.T) {
	ctx := context.Background()
	quotas := map[string]store.Quota{}
	for k, q := range store.DefaultQuotas {
		quotas[k] = q
	}
	quotas[store.SpaceState] = store.Quota{MaxBytes: 2048, Policy: store.RejectNew}
	st := quietStore(t, store.Options{Quotas: quotas})
	fn := &Function{Name: "bad", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("bad/{device}")},
		Spec: luavm.Spec{Source: []byte(`function handle(e) log.info("trying") error("always") end`)}}
	opts := Options{Store: st, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second, MaxBackoff: time.Second}}
	g := runGateway(t, opts, fn)
	const n = 80
	for i := range n {
		if err := g.handle(ctx, &mqtt.Message{Topic: fmt.Sprintf("bad/d%d", i), Payload: []byte(`{}`), QoS: 1, ClientID: "c", PacketID: uint16(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "every event dead-lettered", func() bool {
		dls, _ := st.ListDeadLetters(ctx, "bad", 0, 1000)
		return len(dls) == n
	})
	us, err := st.QueryUsage(ctx, "bad", 0, time.Now().Add(time.Hour).UnixMilli(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var inv, errs int64
	for _, u := range us {
		inv += u.Invocations
		errs += u.Errors
	}
	if inv != 3*n || errs != 3*n {
		t.Fatalf("ran %d invocations (Stats().Failed = %d), usage metered %d invocations, %d errors", 3*n, g.Stats().Failed, inv, errs)
	}
}

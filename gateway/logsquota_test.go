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

// TestLogsOverQuotaDoNotDeadLetterSuccess: a function that succeeds but
// logs more than the whole logs quota still has its record committed (logs
// are diagnostics: the store leaves them out). It was dead-lettered with
// ErrOutputsRefused, and a replay failed the same way.
func TestLogsOverQuotaDoNotDeadLetterSuccess(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Quotas: map[string]store.Quota{store.SpaceLogs: {MaxBytes: 16 << 10}}})
	src := `function handle(e)
  for i = 1, 5 do log.info(string.rep("x", 4000)) end
  return {ok = true}
end`
	f := &Function{Name: "chatty", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("chatty/{device}")},
		Spec: luavm.Spec{Source: []byte(src)}}
	g := runGateway(t, Options{Store: st, Retry: RetryPolicy{MaxAttempts: 2, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}}, f)
	if err := g.handle(ctx, &mqtt.Message{Topic: "chatty/d", Payload: []byte(`{}`), QoS: 1, ClientID: "c", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the event consumed", func() bool { return st.InboxLen() == 0 && g.disp.backlog() == 0 })
	dls, _ := st.ListDeadLetters(ctx, "chatty", 0, 10)
	recs := allRecords(t, st, "chatty")
	if len(dls) != 0 || len(recs) != 1 {
		msg := ""
		if len(dls) > 0 {
			msg = dls[0].Error
		}
		t.Fatalf("successful invocation: %d records, %d dead letters (%s)", len(recs), len(dls), msg)
	}
}

// TestFullLogsSpaceDoesNotStallOthers: with the logs space on reject_new
// (a policy the configuration offers), once one function had filled it,
// every event of every function that logged a line was retried without end
// (ErrQuota "clears up"), although only diagnostics were refused. Now the
// lines that do not fit are left out and the events are committed.
func TestFullLogsSpaceDoesNotStallOthers(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Quotas: map[string]store.Quota{store.SpaceLogs: {MaxBytes: 16 << 10, Policy: store.RejectNew}}})
	mk := func(name, src string) *Function {
		return &Function{Name: name, Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern(name + "/{device}")},
			Spec: luavm.Spec{Source: []byte(src)}}
	}
	hog := mk("hog", `function handle(e) log.info(string.rep("x", 8000)) return {ok = true} end`)
	other := mk("other", `function handle(e) log.info(string.rep("y", 500)) return {ok = true} end`)
	g := runGateway(t, Options{Store: st, Retry: RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}}, hog, other)
	for i := range 4 {
		if err := g.handle(ctx, &mqtt.Message{Topic: "hog/d", Payload: []byte(`{}`), QoS: 1, ClientID: "h", PacketID: uint16(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "hog's four records", func() bool { return len(allRecords(t, st, "hog")) == 4 })
	if n, _, _ := st.ScanLogs(ctx, "hog", "", 0, 10); len(n) != 2 {
		t.Fatalf("%d of hog's lines kept, want the 2 that fit", len(n))
	}
	if err := g.handle(ctx, &mqtt.Message{Topic: "other/d", Payload: []byte(`{}`), QoS: 1, ClientID: "o", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	if !poll(5*time.Second, func() bool { return len(allRecords(t, st, "other")) == 1 }) {
		dls, _ := st.ListDeadLetters(ctx, "", 0, 10)
		t.Fatalf("other's event not committed after 5 s (inbox %d, dead letters %d): a full logs space holds every function that logs", st.InboxLen(), len(dls))
	}
}

// TestFailedAttemptAtStopIsMetered: an attempt that failed (and would be
// retried) while the gateway was stopping ran all the same: its logs and
// usage are kept like any other failed attempt's (keepAttempt). The stop
// check returned before keepAttempt, so they were lost.
func TestFailedAttemptAtStopIsMetered(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{})
	src := `function handle(e)
  log.warn("about to fail")
  local t0 = time.now_ms()
  while time.now_ms() - t0 < 400 do end
  error("boom")
end`
	f := &Function{Name: "flaky", Fingerprint: "v1", Patterns: []*trigger.Pattern{trigger.MustParsePattern("flaky/{device}")},
		Spec: luavm.Spec{Source: []byte(src), Limits: luavm.Limits{Timeout: 10 * time.Second, MaxSteps: 10_000_000_000}}}
	g := newGateway(t, Options{Store: st, Retry: RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Second, MaxBackoff: time.Second}}, f)
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g.Run(runCtx) }()
	defer func() { stop(); <-ran }()
	waitFor(t, 10*time.Second, "ready", g.Ready)
	if err := g.handle(ctx, &mqtt.Message{Topic: "flaky/d", Payload: []byte(`{}`), QoS: 1, ClientID: "c", PacketID: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the invocation running", func() bool { return len(g.invoking) == 1 })
	stop()
	select {
	case <-ran:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop")
	}
	ran <- nil
	if g.Stats().Failed != 1 {
		t.Fatalf("failed attempts %d, want 1", g.Stats().Failed)
	}
	us, err := st.QueryUsage(ctx, "flaky", 0, 0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var inv, errs int64
	for _, u := range us {
		inv += u.Invocations
		errs += u.Errors
	}
	logs, _, _ := st.ScanLogs(ctx, "flaky", "", 0, 10)
	if inv != 1 || errs != 1 || len(logs) != 1 {
		t.Fatalf("the failed attempt ran (Stats().Failed=1) but usage shows %d invocations, %d errors, and %d log lines were kept", inv, errs, len(logs))
	}
}

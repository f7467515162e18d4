package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// A rollback to a stored version that cannot be loaded "restores the
// previous version": nothing should change for the running one. A version
// whose stored manifest no longer parses (stored by an older moongate)
// removes the function for the time of the rollback: its "@every" phase
// record is deleted (restarted from now) and the function is logged as
// removed.
func TestFailedRollbackKeepsRunningVersion(t *testing.T) {
	ctx := context.Background()
	logs := &lockedBuffer{}
	p := startInProcessLog(t, testConfig(t.TempDir(), "", ""), logs)
	d := p.d
	if _, err := d.DeployFunction(ctx, DeployRequest{Name: "tk", Manifest: []byte("triggers:\n  - timer: \"@every 1h\"\n"),
		Source: []byte(`function handle(e) return {} end`)}); err != nil {
		t.Fatal(err)
	}
	const key = "tk/@every 1h0m0s"
	var phase string
	waitFor(t, 10*time.Second, "the recorded start of the first interval", func() bool {
		v, ok, _ := d.Store().GetState(ctx, TimerStateFunction, key)
		phase = string(v)
		return ok
	})
	// An old version whose manifest today's parser refuses.
	if _, err := d.Store().PutFunction(ctx, store.FunctionRecord{Name: "tk", Manifest: []byte("triggers:\n  - timer: \"@every 1h\"\n  - timer: 60m\n"),
		Source: []byte(`function handle(e) return {old = true} end`), SHA256: "old"}); err != nil {
		t.Fatal(err)
	}
	// Reset the active version to v1 (PutFunction without Active leaves it).
	start := time.Now()
	waitFor(t, time.Second, "the clock past the recorded phase", func() bool { return time.Now().UnixMilli() > start.UnixMilli()+1 })
	_, err := d.RollbackFunction(ctx, "tk", 2)
	if err == nil {
		t.Fatal("rollback to a version that does not load succeeded")
	}
	if f := d.Gateway().Lookup("tk"); f == nil || f.Version != 1 {
		t.Fatalf("after the failed rollback tk runs %+v", f)
	}
	var now string
	waitFor(t, 10*time.Second, "the phase record", func() bool {
		v, ok, _ := d.Store().GetState(ctx, TimerStateFunction, key)
		now = string(v)
		return ok
	})
	if now != phase {
		t.Errorf("a failed rollback changed the running version's @every phase: recorded %s before, %s after (err %v)", phase, now, err)
	}
	if strings.Contains(logs.String(), "function removed") {
		t.Errorf("a failed rollback removed the running function from the gateway for a while (events unmatched or dead-lettered meanwhile)")
	}
}

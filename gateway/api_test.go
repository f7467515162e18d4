package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/luavm"
)

// The gateway side of the management API: synchronous invoke (dry run and
// committed), requeue of dead letters, the commit signal, and function
// management against the store.
func TestInvokeRequeueCommitted(t *testing.T) {
	p := startInProcess(t, testConfig(t.TempDir(), "", ""))
	ctx := context.Background()
	d, g := p.d, p.d.Gateway()
	if _, err := d.DeployFunction(ctx, DeployRequest{Name: "ref", Manifest: []byte(referenceManifest), Source: []byte(referenceLua)}); err != nil {
		t.Fatal(err)
	}
	ev := func() *luavm.Event {
		return &luavm.Event{Payload: []byte(`{"temp": 90}`), Captures: map[string]string{"device": "d1"}, Trigger: "invoke"}
	}
	r, err := g.Invoke(ctx, "ref", ev(), false, nil)
	if err != nil || r.Err != nil || r.Committed || len(r.Result.Effects) != 1 || r.EventID == "" {
		t.Fatalf("dry run: %+v %v", r, err)
	}
	if n := len(allRecords(t, d.Store(), "ref")); n != 0 {
		t.Fatalf("dry run stored %d records", n)
	}
	wake := g.Committed()
	r, err = g.Invoke(ctx, "ref", ev(), true, nil)
	if err != nil || !r.Committed {
		t.Fatalf("commit: %+v %v", r, err)
	}
	select {
	case <-wake:
	case <-time.After(10 * time.Second):
		t.Fatal("Committed not closed after a commit")
	}
	if n := len(allRecords(t, d.Store(), "ref")); n != 1 {
		t.Fatalf("committed invoke stored %d records", n)
	}
	waitFor(t, 10*time.Second, "the committed publish", func() bool { return g.Stats().Published == 1 })
	if _, err := g.Invoke(ctx, "nope", ev(), false, nil); !errors.Is(err, ErrNoFunction) {
		t.Fatalf("unknown function: %v", err)
	}

	// Requeue runs the event through the current version, durably queued.
	if err := g.Requeue(ctx, "ref", "d1", encodeEvent(ev()), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the requeued record", func() bool { return len(allRecords(t, d.Store(), "ref")) == 2 })
	if err := g.Requeue(ctx, "nope", "k", encodeEvent(ev()), 0); !errors.Is(err, ErrNoFunction) {
		t.Fatalf("requeue to an unknown function: %v", err)
	}
	if err := g.Requeue(ctx, "ref", "k", []byte("garbage"), 0); !errors.Is(err, ErrBadEvent) {
		t.Fatalf("requeue of garbage: %v", err)
	}

	// Rollback to an identical older version still switches versions.
	if _, err := d.DeployFunction(ctx, DeployRequest{Name: "ref", Manifest: []byte(referenceManifest), Source: []byte(referenceLua + "\n")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeployFunction(ctx, DeployRequest{Name: "ref", Manifest: []byte(referenceManifest), Source: []byte(referenceLua)}); err != nil {
		t.Fatal(err)
	}
	if f := g.Lookup("ref"); f == nil || f.Version != 3 {
		t.Fatalf("after two deploys: %+v", f)
	}
	if _, err := d.RollbackFunction(ctx, "ref", 1); err != nil || g.Lookup("ref").Version != 1 {
		t.Fatalf("rollback to identical v1: %v %+v", err, g.Lookup("ref"))
	}
	if _, err := d.DeleteFunction(ctx, "ref"); err != nil || g.Lookup("ref") != nil {
		t.Fatalf("delete: %v", err)
	}

	// After the stop, invoke and requeue refuse.
	p.stop(t)
	if _, err := g.Invoke(ctx, "ref", ev(), false, nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("invoke after stop: %v", err)
	}
	if err := g.Requeue(ctx, "ref", "k", encodeEvent(ev()), 0); !errors.Is(err, ErrStopped) {
		t.Fatalf("requeue after stop: %v", err)
	}
}

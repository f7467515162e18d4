package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/moongate-edge/moongate/gateway"
)

// hangUpCtx is a request context whose client hangs up while the request
// waits: it is cancelled at the first check after something waited on it
// (called Done), as when the client disconnects while the store write
// syncs. Deterministic: no timing involved.
type hangUpCtx struct {
	context.Context
	mu        sync.Mutex
	waited    bool
	cancelled bool
	done      chan struct{}
}

func newHangUpCtx() *hangUpCtx {
	return &hangUpCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *hangUpCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waited = true
	return c.done
}

func (c *hangUpCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waited && !c.cancelled {
		c.cancelled = true
		close(c.done)
	}
	if c.cancelled {
		return context.Canceled
	}
	return nil
}

// consistent checks that the gateway runs exactly the active versions of
// the store, and returns the running names.
func consistent(t *testing.T, d *gateway.Daemon) []string {
	t.Helper()
	recs, err := d.Store().ListFunctions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var stored, running []string
	for _, r := range recs {
		if r.Active {
			stored = append(stored, fmt.Sprintf("%s@%d", r.Name, r.Version))
		}
	}
	for _, f := range d.Gateway().Functions() {
		running = append(running, fmt.Sprintf("%s@%d", f.Name, f.Version))
	}
	slices.Sort(stored)
	slices.Sort(running)
	if !slices.Equal(stored, running) {
		t.Fatalf("the gateway runs %v, the store's active versions are %v", running, stored)
	}
	return running
}

// A function change whose request is cancelled at the worst moment (the
// store write done, the reload not yet) is carried through: the other
// functions keep running and the gateway runs what the store holds.
func TestManageCancelledRequest(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	d := e.d
	src := func(v int) []byte {
		return fmt.Appendf(nil, "function handle(event, ctx)\n  return {v = %d}\nend\n", v)
	}
	deploy := func(ctx context.Context, name string, v int) error {
		_, err := d.DeployFunction(ctx, gateway.DeployRequest{Name: name, Manifest: []byte("triggers:\n  - mqtt: t/" + name + "\n"), Source: src(v)})
		return err
	}
	for _, name := range []string{"keep", "victim", "other"} {
		if err := deploy(context.Background(), name, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := deploy(context.Background(), "other", 2); err != nil {
		t.Fatal(err)
	}
	consistent(t, d)

	// Delete.
	if _, err := d.DeleteFunction(newHangUpCtx(), "victim"); err != nil {
		t.Fatalf("delete with a client that hung up: %v", err)
	}
	if got := consistent(t, d); !slices.Equal(got, []string{"keep@1", "other@2"}) {
		t.Fatalf("after the delete: %v", got)
	}
	// Deploy.
	if err := deploy(newHangUpCtx(), "keep", 2); err != nil {
		t.Fatalf("deploy with a client that hung up: %v", err)
	}
	if got := consistent(t, d); !slices.Equal(got, []string{"keep@2", "other@2"}) {
		t.Fatalf("after the deploy: %v", got)
	}
	// Rollback.
	if _, err := d.RollbackFunction(newHangUpCtx(), "other", 1); err != nil {
		t.Fatalf("rollback with a client that hung up: %v", err)
	}
	if got := consistent(t, d); !slices.Equal(got, []string{"keep@2", "other@1"}) {
		t.Fatalf("after the rollback: %v", got)
	}

	// A request cancelled before it starts changes nothing.
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.DeleteFunction(cancelled, "keep"); !errors.Is(err, context.Canceled) {
		t.Fatalf("delete with a cancelled context: %v", err)
	}
	if err := deploy(cancelled, "keep", 3); !errors.Is(err, context.Canceled) {
		t.Fatalf("deploy with a cancelled context: %v", err)
	}
	if _, err := d.RollbackFunction(cancelled, "keep", 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("rollback with a cancelled context: %v", err)
	}
	if got := consistent(t, d); !slices.Equal(got, []string{"keep@2", "other@1"}) {
		t.Fatalf("after the cancelled requests: %v", got)
	}
}

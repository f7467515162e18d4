package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/store"
)

// This file is the daemon's function management for the API: deploy,
// roll back and delete, each a change of the store's active version
// followed by a reload of the gateway's function table (atomic per
// function: in-flight invocations finish on the old version).
//
// A request's context is honoured until its change starts: once the
// manager's lock is held and the reads are done, the store write and the
// reload run to the end under context.WithoutCancel (the store bounds its
// own waits: it fails pending writes when it closes). A client that hangs
// up half-way would otherwise leave a write given up on ("it may still be
// applied") or a reload that cannot read the store, and the gateway
// running something else than the store holds.

// DeployRequest is a function to deploy through the API.
type DeployRequest struct {
	Name     string
	Manifest []byte // NAME.yaml
	Source   []byte // NAME.lua
	DryRun   bool   // validate only
}

// DeployResult is the outcome of a deploy.
type DeployResult struct {
	Function  store.FunctionRecord // the active version (Version 0 for a dry run)
	Unchanged bool                 // identical to the active version: nothing stored
}

// manager serialises the function changes made through the API.
type manager struct {
	mu sync.Mutex
}

// DeployFunction validates a function (name, manifest, compile), then
// unless req.DryRun stores it as the next version, makes it active and
// reloads the gateway. When the new version fails to load, the previous
// active version is restored and the error returned. Errors: ErrFunctionsDir,
// ErrInvalidFunction (wrapping the precise error), store errors.
func (d *Daemon) DeployFunction(ctx context.Context, req DeployRequest) (DeployResult, error) {
	f, err := d.ValidateFunction(req.Name, req.Manifest, req.Source)
	if err != nil {
		return DeployResult{}, err
	}
	sha := f.Fingerprint
	if req.DryRun {
		return DeployResult{Function: store.FunctionRecord{Name: req.Name, Source: req.Source, Manifest: req.Manifest, SHA256: sha}}, nil
	}
	if d.cfg.FunctionsDir != "" {
		return DeployResult{}, ErrFunctionsDir
	}
	d.mgr.mu.Lock()
	defer d.mgr.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return DeployResult{}, err
	}
	prev, err := d.store.GetFunction(ctx, req.Name, 0)
	switch {
	case err == nil && prev.SHA256 == sha:
		if lf := d.gw.Lookup(req.Name); lf != nil && lf.Version == prev.Version {
			return DeployResult{Function: prev, Unchanged: true}, nil
		}
	case err == nil || errors.Is(err, store.ErrNotFound):
	default:
		return DeployResult{}, err
	}
	wctx := context.WithoutCancel(ctx) // see the top of the file
	v, err := d.store.PutFunction(wctx, store.FunctionRecord{Name: req.Name, Source: req.Source, Manifest: req.Manifest, SHA256: sha, Active: true})
	if err != nil {
		return DeployResult{}, fmt.Errorf("store function %s: %w", req.Name, err)
	}
	if err := d.reloadCheck(wctx, req.Name, v); err != nil {
		// Put the previous version back (or none).
		d.restore(wctx, req.Name, prev.Version)
		return DeployResult{}, err
	}
	rec, err := d.store.GetFunction(wctx, req.Name, v)
	return DeployResult{Function: rec}, err
}

// restore makes version of name active again (0: none) after a failed
// load, and reloads.
func (d *Daemon) restore(ctx context.Context, name string, version int64) {
	if err := d.store.SetActive(ctx, name, version); err != nil {
		d.log.Error("restore previous version", "function", name, "err", err)
	}
	if err := d.reload(ctx); err != nil {
		d.log.Error("reload after restoring the previous version", "function", name, "err", err)
	}
}

// ValidateFunction checks a function as DeployFunction would, without
// storing or deploying anything. Errors wrap ErrInvalidFunction.
func (d *Daemon) ValidateFunction(name string, manifest, source []byte) (*Function, error) {
	invalid := func(err error) (*Function, error) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidFunction, err)
	}
	if !trigger.ValidFunctionName(name) {
		return invalid(fmt.Errorf("%w %q: use [a-z0-9][a-z0-9_-]{0,62}", trigger.ErrFunctionName, name))
	}
	for _, f := range d.forward {
		if f.Name == name {
			// The forward's function runs under that name: a deploy would be
			// reported done and never run.
			return invalid(fmt.Errorf("name %q is used by a sync.forward entry", name))
		}
	}
	if len(source) > trigger.MaxSourceBytes {
		return invalid(fmt.Errorf("source is %d bytes, larger than the limit of %d", len(source), trigger.MaxSourceBytes))
	}
	m, err := trigger.ParseManifest(name+".yaml", manifest)
	if err != nil {
		return invalid(err)
	}
	if _, err := d.rt.Compile(name, source); err != nil {
		return invalid(err)
	}
	f, err := FunctionFromManifest(&trigger.Function{Manifest: m, Source: source, SHA256: trigger.Fingerprint(manifest, source)}, d.cfg)
	if err != nil {
		return invalid(err)
	}
	return f, nil
}

// RollbackFunction makes version of name active (0: the highest version
// below the active one) and reloads. Errors: ErrFunctionsDir,
// store.ErrNotFound, a load failure (the previous version is restored).
func (d *Daemon) RollbackFunction(ctx context.Context, name string, version int64) (store.FunctionRecord, error) {
	if d.cfg.FunctionsDir != "" {
		return store.FunctionRecord{}, ErrFunctionsDir
	}
	d.mgr.mu.Lock()
	defer d.mgr.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return store.FunctionRecord{}, err
	}
	// The version numbers only: a version's source is not kept.
	var versions []int64
	var active int64
	err := d.store.EachVersion(ctx, name, func(v store.FunctionRecord) error {
		versions = append(versions, v.Version)
		if v.Active {
			active = v.Version
		}
		return nil
	})
	if err != nil {
		return store.FunctionRecord{}, err
	}
	if version == 0 {
		for _, v := range versions {
			if v < active || active == 0 {
				version = v
			}
		}
		if version == 0 || version == active {
			return store.FunctionRecord{}, fmt.Errorf("%w: function %q has no version below the active version %d", store.ErrNotFound, name, active)
		}
	}
	// The target is built first: one that cannot run (a manifest this
	// build no longer parses, limits the configuration refuses) is refused
	// with the running version untouched; made active, the reload would
	// drop the function for a moment (events unmatched, its timers' phase
	// lost) before the previous version was restored.
	r, err := d.store.GetFunction(ctx, name, version)
	if err != nil {
		return store.FunctionRecord{}, err
	}
	if f := d.fromRecord(r); f == nil || f.LoadErr != nil {
		why := errors.New("its stored manifest does not parse (see the gateway log)")
		if f != nil {
			why = f.LoadErr
		}
		return store.FunctionRecord{}, fmt.Errorf("%w: rollback %s to version %d: %w", ErrInvalidFunction, name, version, why)
	}
	wctx := context.WithoutCancel(ctx) // see the top of the file
	if err := d.store.SetActive(wctx, name, version); err != nil {
		return store.FunctionRecord{}, err
	}
	if err := d.reloadCheck(wctx, name, version); err != nil {
		d.restore(wctx, name, active)
		return store.FunctionRecord{}, err
	}
	return d.store.GetFunction(wctx, name, version)
}

// DeleteFunction removes name from the gateway and deletes every stored
// version (state, records and logs are kept). It returns the number of
// versions deleted. Errors: ErrFunctionsDir, store.ErrNotFound.
func (d *Daemon) DeleteFunction(ctx context.Context, name string) (int, error) {
	if d.cfg.FunctionsDir != "" {
		return 0, ErrFunctionsDir
	}
	d.mgr.mu.Lock()
	defer d.mgr.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	if err := d.store.EachVersion(ctx, name, func(store.FunctionRecord) error { n++; return nil }); err != nil {
		return 0, err
	}
	wctx := context.WithoutCancel(ctx) // see the top of the file
	if err := d.store.DeleteFunction(wctx, name); err != nil {
		return 0, err
	}
	return n, d.reload(wctx)
}

// FunctionsFromDir reports whether the functions are loaded from a
// directory (and so cannot be changed through the API).
func (d *Daemon) FunctionsFromDir() bool { return d.cfg.FunctionsDir != "" }

// reload makes the gateway's functions the active versions in the store.
// When the store cannot be read, the running functions are left as they
// are (an empty list would remove them all) and the error is returned.
func (d *Daemon) reload(ctx context.Context) error {
	fns, err := d.storedFunctions(ctx, false)
	if err != nil {
		return fmt.Errorf("reload functions (the running ones are kept): %w", err)
	}
	return d.gw.SetFunctions(ctx, d.withForwards(fns))
}

// reloadCheck reloads and checks that version of name is the one running.
func (d *Daemon) reloadCheck(ctx context.Context, name string, version int64) error {
	err := d.reload(ctx)
	if f := d.gw.Lookup(name); f == nil || f.Version != version {
		if err == nil {
			err = errors.New("not loaded (see the gateway log)")
		}
		return fmt.Errorf("%w: deploy %s version %d: %w", ErrInvalidFunction, name, version, err)
	}
	return nil
}

package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
)

// Function is a deployed function as the gateway routes to it.
type Function struct {
	Name        string
	Version     int64
	Fingerprint string // changes when the source or manifest change
	Patterns    []*trigger.Pattern
	Schedules   []Schedule
	Stream      string   // stream of the return value (default: the name)
	Sync        []string // upstream targets of its records
	OrderBy     string   // capture that orders its events, or trigger.OrderTopic / "" for the topic
	// Streams are the streams whose records run the function (stream triggers).
	Streams []string
	// StateWatches are the state changes that run the function (state triggers).
	StateWatches []trigger.StateTrigger
	// Uploads are the blobs that run the function (upload triggers).
	Uploads []trigger.UploadTrigger
	Spec    luavm.Spec
	// HTTPMethods are the methods of its http triggers (the API serves them
	// at /fn/NAME/...); empty when it has none.
	HTTPMethods []string
	// LoadErr, when not nil, is why the function could not be loaded (its
	// stored limits no longer fit the configuration, its source does not
	// compile). It is routed as usual, so that its events are not taken
	// for unmatched messages, but each is dead-lettered (ErrNotLoaded)
	// instead of run; it has no timers, and Lookup does not return it.
	LoadErr error
}

// orderKey is the lane of an event: events with one key run in order.
func (f *Function) orderKey(topic string, captures map[string]string) string {
	if f.OrderBy != "" && f.OrderBy != trigger.OrderTopic {
		if v, ok := captures[f.OrderBy]; ok {
			return v
		}
	}
	return topic
}

type funcTable struct {
	byName map[string]*Function
	chain  chainIndex
}

// SetFunctions makes fns the whole set of deployed functions: new and
// changed ones are compiled and deployed (atomically per function: in-flight
// invocations finish on the old version), missing ones are removed. A
// function that fails to deploy keeps its previous version; the errors are
// returned joined.
func (g *Gateway) SetFunctions(ctx context.Context, fns []*Function) error {
	return g.setFunctions(ctx, fns, nil)
}

// setFunctions is SetFunctions, except that a deployed function named in
// keep and missing from fns keeps its running version instead of being
// removed (its new files failed to load).
func (g *Gateway) setFunctions(ctx context.Context, fns []*Function, keep map[string]bool) error {
	g.deployMu.Lock()
	defer g.deployMu.Unlock()
	g.deploys++
	old := g.funcs.Load().byName
	next := make(map[string]*Function, len(fns))
	for name := range keep {
		if prev := old[name]; prev != nil {
			next[name] = prev
		}
	}
	var errs []error
	var changed []*Function
	deploying := make(map[string]*Function, len(fns))
	for _, f := range fns {
		if f.Stream == "" {
			f.Stream = f.Name
		}
		deploying[f.Name] = f
	}
	g.deploying.Store(&deploying)
	defer g.deploying.Store(nil)
	for _, f := range fns {
		prev := old[f.Name]
		if prev != nil && prev.Fingerprint == f.Fingerprint && f.Fingerprint != "" && prev.LoadErr == nil && f.LoadErr == nil {
			next[f.Name] = prev
			continue
		}
		if f.LoadErr == nil {
			f.Spec.Name = f.Name
			f.Spec.Version = f.Version
			f.Spec.Tag = f // ranAs
			if err := g.opts.Runtime.Deploy(ctx, f.Spec); err != nil {
				errs = append(errs, fmt.Errorf("deploy %s: %w", f.Name, err))
				f.LoadErr = err
			}
		}
		if f.LoadErr != nil && prev != nil && prev.LoadErr == nil {
			// A running version stays rather than a version that
			// cannot run.
			next[f.Name] = prev
			continue
		}
		next[f.Name] = f
		changed = append(changed, f)
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			g.match.Remove(name)
			g.stopTimer(name).stop()
			g.pruneTicks(name, nil)
			g.slotsMu.Lock()
			delete(g.slots, name)
			g.slotsMu.Unlock()
		}
	}
	for _, f := range changed {
		g.match.Set(f.Name, f.Patterns)
	}
	g.funcs.Store(&funcTable{byName: next, chain: buildChainIndex(next)})
	// Remove from the runtime only after the table no longer routes to them.
	for name := range old {
		if _, ok := next[name]; !ok {
			g.opts.Runtime.Remove(name)
			g.log.Info("function removed", "function", name)
		}
	}
	for _, f := range changed {
		// The previous version's loops end before the new ones read the
		// last recorded tick.
		prev := g.stopTimer(f.Name)
		prev.stop()
		g.pruneTicks(f.Name, f.Schedules)
		if f.LoadErr != nil {
			g.log.Error("function not loaded; its events are dead-lettered until a version that loads is deployed", "function", f.Name, "version", f.Version, "err", f.LoadErr)
			continue
		}
		g.startTimer(f, prev).stop()
		g.log.Info("function deployed", "function", f.Name, "version", f.Version, "mqtt", len(f.Patterns), "timers", len(f.Schedules))
	}
	if g.filtersOn {
		if err := g.opts.Ingest.SetFilters(ctx, g.match.Filters()); err != nil {
			errs = append(errs, fmt.Errorf("subscribe: %w", err))
		}
	}
	return errors.Join(errs...)
}

// functionTurns is the dispatcher's turns of function: fnSlots of its
// max_concurrency, or nil (no limit) for a function not deployed (its
// events go to the dead letters).
func (g *Gateway) functionTurns(function string) chan struct{} {
	f := g.funcs.Load().byName[function]
	if f == nil {
		return nil
	}
	return g.fnSlots(function, f.Spec.MaxConcurrency)
}

// fnSlots returns the turns of function's events: n (its max_concurrency;
// 0: the runtime's default) at a time, but at most Options.Workers - 1, so
// that one of the gateway's turns stays for the other functions' events
// (with the defaults, max_concurrency 4 and 2 workers on a one-core Pi, a
// slow function took them all and every other function's events waited
// behind its invocations). A redeploy that changes n gives a new set (the
// calls holding the old one give their turns back to it).
func (g *Gateway) fnSlots(function string, n int) chan struct{} {
	if n <= 0 {
		n = luavm.DefaultMaxConcurrency
	}
	n = min(n, max(1, g.opts.Workers-1))
	g.slotsMu.Lock()
	defer g.slotsMu.Unlock()
	c := g.slots[function]
	if c == nil || cap(c) != n {
		if g.slots == nil {
			g.slots = map[string]chan struct{}{}
		}
		c = make(chan struct{}, n)
		g.slots[function] = c
	}
	return c
}

// ranAs returns the Function of the version of f that produced res (its
// Spec.Tag, given back in res), or f: the outputs of a version's code go
// where its manifest says (stream, sync targets), whatever was deployed
// while it waited and ran (an invocation waiting for an instance moves to
// a new version; that version may be replaced in turn before it ends).
func (g *Gateway) ranAs(f *Function, res *luavm.Result) *Function {
	if res == nil {
		return f
	}
	if t, ok := res.Tag.(*Function); ok && t.Name == f.Name {
		return t // the version that ran, deployed by setFunctions
	}
	if res.Version == f.Version {
		return f
	}
	if cur := g.funcs.Load().byName[f.Name]; cur != nil && cur.Version == res.Version {
		return cur
	}
	if d := g.deploying.Load(); d != nil {
		if nf := (*d)[f.Name]; nf != nil && nf.Version == res.Version {
			return nf
		}
	}
	return f
}

// Functions returns the deployed functions (not those that failed to
// load).
func (g *Gateway) Functions() []*Function {
	t := g.funcs.Load()
	out := make([]*Function, 0, len(t.byName))
	for _, f := range t.byName {
		if f.LoadErr == nil {
			out = append(out, f)
		}
	}
	return out
}

// FunctionFromManifest builds a deployable Function from a loaded manifest
// and source, with the function defaults of cfg under the manifest's own
// limits.
func FunctionFromManifest(tf *trigger.Function, cfg *config.Config) (*Function, error) {
	m := tf.Manifest
	if m == nil {
		return nil, errors.New("no manifest")
	}
	if err := m.CheckWith(cfg.Functions); err != nil {
		return nil, err
	}
	d := cfg.Functions
	l := m.Limits
	spec := luavm.Spec{
		Name:   m.Name,
		Source: tf.Source,
		Limits: luavm.Limits{
			Timeout:        pick(l.Timeout.Std(), d.Timeout.Std()),
			MaxSteps:       pick(l.MaxSteps, d.MaxSteps),
			MaxMemory:      pick(int64(l.MaxMemory), int64(d.MaxMemory)),
			MaxCallDepth:   l.MaxCallDepth,
			MaxResultBytes: int(l.MaxResultBytes),
			MaxEffects:     l.MaxEffects,
			MaxEffectBytes: int(l.MaxEffectBytes),
		},
		Config:         m.Config,
		MinInstances:   pick(m.MinInstances, d.MinInstances),
		MaxConcurrency: pick(m.MaxConcurrency, d.MaxConcurrency),
		IdleTimeout:    pick(m.IdleTimeout.Std(), d.IdleTimeout.Std()),
	}
	// A result or an effect larger than the store takes in one value
	// would pass a test and a dry run, then send every real event to the
	// dead letters.
	if most := storeValueBytes(cfg) - outputOverhead; spec.Limits.MaxResultBytes > most || spec.Limits.MaxEffectBytes > most {
		return nil, fmt.Errorf("%s.yaml: limits.max_result_bytes %d and max_effect_bytes %d must be at most %d, what the store takes in one value with a record's or a publish's other fields (1MiB, or mqtt.max_payload plus the topic when larger)",
			m.Name, spec.Limits.MaxResultBytes, spec.Limits.MaxEffectBytes, most)
	}
	f := routing(tf)
	f.Spec = spec
	return f, nil
}

// NotLoadedFunction is the function of a parsed manifest that could not be
// loaded (FunctionFromManifest or the deploy failed with err): it routes
// the manifest's triggers so that their events are dead-lettered with
// ErrNotLoaded instead of being taken for unmatched messages.
func NotLoadedFunction(tf *trigger.Function, err error) *Function {
	f := routing(tf)
	f.LoadErr = err
	return f
}

// routing is the Function of tf without its runtime spec.
func routing(tf *trigger.Function) *Function {
	m := tf.Manifest
	f := &Function{
		Name:         m.Name,
		Fingerprint:  tf.SHA256,
		Patterns:     m.Patterns(),
		Stream:       m.Stream,
		Sync:         m.Sync,
		OrderBy:      m.OrderBy,
		Streams:      m.Streams(),
		StateWatches: m.StateWatches(),
		Uploads:      m.Uploads(),
	}
	for _, s := range m.Schedules() {
		f.Schedules = append(f.Schedules, s)
	}
	for _, t := range m.Triggers {
		if t.Kind == trigger.KindHTTP && t.HTTP != nil {
			f.HTTPMethods = append(f.HTTPMethods, t.HTTP.Methods...)
		}
	}
	return f
}

// pick returns v, or def when v is the zero value.
func pick[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// Function chaining: a function with a `stream` trigger runs on every record
// committed to that stream, one with a `state` trigger on every committed
// change of another function's state under a key prefix. The downstream
// inbox entries are derived inside the store commit that produces the record
// or the change (store.Commit.Chain), so they exist exactly when their cause
// does: a crash cannot lose one or make two.
//
// Cycles (A emits to a stream A listens to, or A -> B -> A) cannot all be
// seen at deploy time, because emit chooses its stream at run time. They are
// bounded instead: every chained event carries a hop count, one more than
// the event that caused it, and an event past Options.MaxHops is not run but
// dead-lettered with ErrHopLimit, where the operator sees it.
//
// Breadth is bounded too: an origin event may cause at most
// Options.MaxChainEvents chained events at all hops together. Each chained
// event carries the budget it may still spend: an event with budget b whose
// outputs chain n events is dead-lettered (ErrChainBudget) if n > b (a
// watched state change that changes nothing does not count: the commit
// enforces the bound on what it chains, ChainMax), and otherwise gives each
// of them (b-m)/m, m counting every watched state change, so that a chain never causes
// more than its origin's budget (a function emitting 100 records to a
// stream it listens to made 185,000 inbox entries of one message in 5 s).

// stateWatch is one state trigger of a deployed function.
type stateWatch struct {
	fn     *Function
	source string // function whose state is watched
	prefix string
}

// chainIndex routes committed outputs to the functions they trigger.
type chainIndex struct {
	byStream map[string][]*Function
	byState  map[string][]stateWatch  // source function -> watches
	byBucket map[string][]uploadWatch // bucket -> upload triggers
}

func buildChainIndex(fns map[string]*Function) chainIndex {
	ci := chainIndex{byStream: map[string][]*Function{}, byState: map[string][]stateWatch{}, byBucket: map[string][]uploadWatch{}}
	for _, f := range fns {
		for _, s := range f.Streams {
			ci.byStream[s] = append(ci.byStream[s], f)
		}
		for _, w := range f.StateWatches {
			ci.byState[w.Function] = append(ci.byState[w.Function], stateWatch{fn: f, source: w.Function, prefix: w.Prefix})
		}
		for _, u := range f.Uploads {
			ci.byBucket[u.Bucket] = append(ci.byBucket[u.Bucket], uploadWatch{fn: f, trig: u})
		}
	}
	return ci
}

func (ci *chainIndex) empty() bool {
	return len(ci.byStream) == 0 && len(ci.byState) == 0 && len(ci.byBucket) == 0
}

// stateWatchers returns the watches that a change of source's key triggers.
func (ci *chainIndex) stateWatchers(source, key string, visit func(stateWatch)) {
	for _, w := range ci.byState[source] {
		if strings.HasPrefix(key, w.prefix) {
			visit(w)
		}
	}
}

// chainRefusal is err, a store error, as the caller reports it: a commit
// that chained more than its budget (store.ErrChainOverflow) is refused
// with ErrChainBudget.
func chainRefusal(err error) error {
	if errors.Is(err, store.ErrChainOverflow) {
		return fmt.Errorf("%w: %w", ErrChainBudget, err)
	}
	return err
}

// chainCommit makes c derive the inbox entries of the functions its records
// and state changes trigger. hops is the hop count of the event being
// processed, budget the chained events it may cause (-1: an origin's,
// Options.MaxChainEvents). It fails with ErrChainBudget, leaving c as it
// was, if c would chain more.
func (g *Gateway) chainCommit(ft *funcTable, c *store.Commit, hops, budget int) error {
	ci := &ft.chain
	if ci.empty() {
		return nil
	}
	// sure chain for certain; n is an upper bound: a watched state
	// change that changes nothing chains nothing.
	sure := 0
	for i := range c.Records {
		sure += len(ci.byStream[c.Records[i].Stream])
	}
	for i := range c.Blobs {
		if !c.Blobs[i].Delete {
			sure += ci.uploadCount(c.Blobs[i].Bucket, c.Blobs[i].Name)
		}
	}
	n := sure
	for i := range c.State {
		ci.stateWatchers(c.State[i].Function, c.State[i].Key, func(stateWatch) { n++ })
	}
	if n == 0 {
		return nil
	}
	if budget < 0 || budget > g.opts.MaxChainEvents {
		// An origin, or an event written while max_chain_events was
		// higher: the current setting bounds it.
		budget = g.opts.MaxChainEvents
	}
	if sure > budget {
		return fmt.Errorf("%w: its outputs would chain %d events, %d left of the %d its origin may cause (pipeline.max_chain_events)",
			ErrChainBudget, sure, budget, g.opts.MaxChainEvents)
	}
	// Over the budget only if the state changes change something: the
	// commit enforces it (ChainMax; more is store.ErrChainOverflow, which
	// callers report as ErrChainBudget: chainRefusal). Each chained event
	// gets an equal share of what is left, counted on the upper bound.
	each := max(budget-n, 0) / n
	c.ChainMax = min(n, budget)
	c.Chain = func(ch store.Change) []store.InboxEntry {
		var out []store.InboxEntry
		switch {
		case ch.Record != nil:
			r := ch.Record
			for _, f := range ci.byStream[r.Stream] {
				captures := map[string]string{"stream": r.Stream, "record_id": r.ID, "source": r.Function}
				key := "stream:" + r.Stream
				if r.Device != "" {
					captures["device"] = r.Device
					key = r.Device
				}
				ev := luavm.Event{ID: g.newEventID(), Payload: r.Data, Captures: captures, TS: r.EventTS, Trigger: string(trigger.KindStream)}
				out = append(out, store.InboxEntry{Function: f.Name, Key: key, Event: encodeChained(&ev, hops+1, each)})
			}
		case ch.State != nil:
			u := ch.State
			if bytes.Equal(u.Old, u.New) {
				break // nothing changed (a delete of an absent key, the same value set again)
			}
			payload := g.stateEventPayload(u)
			ci.stateWatchers(u.Function, u.Key, func(w stateWatch) {
				ev := luavm.Event{ID: g.newEventID(), Payload: payload, TS: g.opts.Now().UnixMilli(), Trigger: string(trigger.KindState),
					Captures: map[string]string{"function": u.Function, "key": u.Key}}
				out = append(out, store.InboxEntry{Function: w.fn.Name, Key: "state:" + u.Function + "/" + u.Key, Event: encodeChained(&ev, hops+1, each)})
			})
		case ch.Blob != nil:
			out = g.uploadEntries(ci, ch.Blob, hops+1, each)
		}
		return out
	}
	return nil
}

// stateChangeEvent is the payload of a state-triggered event.
type stateChangeEvent struct {
	Function string          `json:"function"`
	Key      string          `json:"key"`
	Old      json.RawMessage `json:"old"` // null when the key was absent
	New      json.RawMessage `json:"new"` // null when the key was deleted
	// OldOmitted and NewOmitted say that a value was left out (null) to
	// fit the event in one store value.
	OldOmitted bool `json:"old_omitted,omitempty"`
	NewOmitted bool `json:"new_omitted,omitempty"`
}

// stateEventRoom is what a state-triggered event holds besides its payload
// (id, captures, key, hop count) in its store value.
const stateEventRoom = 8 << 10

// stateEventPayload is the payload of the events u triggers: the old and
// the new value, leaving out the old one, then the new one, when they do
// not fit in one store value together (a 600 KB value replaced by another
// made the commit of the change fail: its chained event was 1.2 MB).
func (g *Gateway) stateEventPayload(u *store.StateUpdate) []byte {
	e := stateChangeEvent{Function: u.Function, Key: u.Key, Old: jsonOrNull(u.Old), New: jsonOrNull(u.New)}
	payload, _ := json.Marshal(e)
	fits := func() bool {
		return g.opts.MaxEventBytes <= 0 || len(payload)+len(u.Function)+2*len(u.Key)+stateEventRoom <= g.opts.MaxEventBytes
	}
	if !fits() {
		e.Old, e.OldOmitted = json.RawMessage("null"), true
		payload, _ = json.Marshal(e)
	}
	if !fits() {
		e.New, e.NewOmitted = json.RawMessage("null"), true
		payload, _ = json.Marshal(e)
	}
	return payload
}

// jsonOrNull returns a stored state value as JSON: values are JSON, but a
// value stored otherwise is passed as a JSON string rather than breaking the
// event.
func jsonOrNull(v []byte) json.RawMessage {
	switch {
	case v == nil:
		return json.RawMessage("null")
	case json.Valid(v):
		return json.RawMessage(v)
	}
	s, _ := json.Marshal(string(v))
	return s
}

// chainQueue hands the chained entries of committed invocations to the
// dispatcher. A worker must never block on admission (the workers are what
// frees room), so entries that do not fit now wait here, by sequence only
// (the entry itself stays in the durable inbox), and a feeder goroutine of
// their function admits them, in order, as room frees up. Once one entry
// of a function waits, its later ones queue behind it so that a lane keeps
// its order; the entries of other functions do not wait for it (a function
// whose share of the backlog is full holds up only its own). Until Run has
// resumed the inbox backlog, every chained entry waits here: the feeders
// start once the older entries are queued (startChain).
type chainQueue struct {
	mu      sync.Mutex
	ctx     context.Context     // the feeders' context; nil until startChain
	waiting map[string][]uint64 // per function: inbox sequences, ascending
	feeding map[string]bool     // per function: its feeder runs
}

// pushChained queues committed chained entries for the workers.
func (g *Gateway) pushChained(entries []store.InboxEntry) {
	if len(entries) == 0 {
		return
	}
	g.stats.enqueued.Add(uint64(len(entries)))
	q := &g.chainQ
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range entries {
		e := entries[i]
		fn := e.Function
		if q.ctx != nil && len(q.waiting[fn]) == 0 {
			if j := (&job{entry: e, size: int64(len(e.Event))}); g.disp.tryAdmit(j) {
				g.disp.push(laneKey(fn, e.Key), j)
				continue
			}
		}
		q.waiting[fn] = append(q.waiting[fn], e.Seq)
		g.feedLocked(fn)
	}
}

// startChain starts feeding the chained entries that waited for the
// resume of the inbox backlog, and every later one, until ctx is done.
func (g *Gateway) startChain(ctx context.Context) {
	q := &g.chainQ
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ctx = ctx
	for fn := range q.waiting {
		g.feedLocked(fn)
	}
}

// feedLocked starts the feeder of function fn unless it runs (or the
// feeders have not started yet). q.mu is held.
func (g *Gateway) feedLocked(fn string) {
	q := &g.chainQ
	if q.ctx == nil || q.feeding[fn] {
		return
	}
	q.feeding[fn] = true
	go g.chainFeeder(q.ctx, fn)
}

// chainFeeder admits the waiting chained entries of function fn as room
// frees up, reading each back from the inbox (it is not kept in memory
// while it waits). It returns when none is left, or when ctx is done.
func (g *Gateway) chainFeeder(ctx context.Context, fn string) {
	q := &g.chainQ
	for {
		q.mu.Lock()
		w := q.waiting[fn]
		if len(w) == 0 || ctx.Err() != nil {
			// Under the same lock as the check: an entry pushed after it
			// starts a new feeder.
			delete(q.feeding, fn)
			if len(w) == 0 {
				delete(q.waiting, fn)
			}
			q.mu.Unlock()
			return
		}
		seq := w[0]
		q.mu.Unlock()
		es, err := g.opts.Store.InboxPending(ctx, seq-1, 1)
		if err != nil {
			if ctx.Err() != nil {
				continue // returns at the check above
			}
			// Keep the entry waiting and read it again: dropping it here
			// would leave it durable but unrun until the next restart.
			g.log.Warn("read chained inbox entry, will retry", "seq", seq, "err", err)
			t := time.NewTimer(g.backoff(3))
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			continue
		}
		if len(es) == 1 && es[0].Seq == seq {
			e := es[0]
			j := &job{entry: e, size: int64(len(e.Event))}
			if err := g.disp.admit(ctx, j); err != nil {
				continue // stopping: the entry stays in the inbox for the restart
			}
			g.disp.push(laneKey(e.Function, e.Key), j)
		}
		// Not found: consumed already (a resume picked it up and ran it).
		q.mu.Lock()
		q.waiting[fn] = q.waiting[fn][1:]
		q.mu.Unlock()
	}
}

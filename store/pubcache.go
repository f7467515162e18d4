package store

import (
	"sort"
	"sync"
)

// pubCache keeps the local publishes of the latest commits in memory, so
// that PendingPublishes (the gateway's publisher, after every commit) is
// served without a Badger iterator: opening one costs an iterator over every
// memtable and table, more than the rest of a small read.
//
// Invariant: ents holds exactly the live publishes (committed durably, not
// acknowledged, not dropped) whose sequence is at least start, in sequence
// order. Only the committer changes it, after a batch is durable and before
// its writers are released; readers take mu. The zero value holds nothing
// and claims nothing (start 0 means "not covering").
type pubCache struct {
	mu    sync.Mutex
	start uint64
	ents  []cachedPublish
	live  int // entries of ents not gone
	bytes int // payload and topic bytes of the live entries
}

type cachedPublish struct {
	p    Publish
	gone bool // acknowledged or dropped
}

// Bounds of the cache: a longer backlog is read from Badger (in order, by
// the same PendingPublishes) until the publisher has caught up. Variables
// for the tests.
var (
	pubCacheEntries = 2048
	pubCacheBytes   = 512 << 10
)

func pubCost(p *Publish) int { return len(p.Payload) + len(p.Topic) + 64 }

// reset makes the cache empty and covering every sequence from next on
// (after a reload from disk: nothing at or above Next exists yet).
func (c *pubCache) reset(next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start, c.ents, c.live, c.bytes = next, nil, 0, 0
}

// apply records a durable batch: its new publishes (in sequence order, all
// above the cached ones) and the sequences it removed (acknowledged or
// dropped). head is the queue's head after the batch.
func (c *pubCache) apply(added []Publish, removed []uint64, head uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start == 0 {
		return
	}
	for i := range added {
		if n := len(c.ents); n > 0 && added[i].Seq <= c.ents[n-1].p.Seq {
			// Out of order: cannot happen with one committer; stop
			// claiming rather than serve a wrong list.
			c.start, c.ents, c.live, c.bytes = 0, nil, 0, 0
			return
		}
		c.ents = append(c.ents, cachedPublish{p: added[i]})
		c.live++
		c.bytes += pubCost(&added[i])
	}
	// Removals after additions: a publish acknowledged in the batch that
	// wrote it is in both.
	for _, seq := range removed {
		if i, ok := c.find(seq); ok && !c.ents[i].gone {
			c.ents[i].gone = true
			c.live--
			c.bytes -= pubCost(&c.ents[i].p)
		}
	}
	// Drop gone entries and everything below the head from the front, then
	// the oldest live ones while over the bounds: the cache then covers
	// from the first entry it keeps.
	drop := 0
	for drop < len(c.ents) {
		e := &c.ents[drop]
		over := c.live > pubCacheEntries || c.bytes > pubCacheBytes
		if !e.gone && e.p.Seq >= head && !over {
			break
		}
		if !e.gone {
			c.live--
			c.bytes -= pubCost(&e.p)
		}
		drop++
	}
	if drop > 0 {
		last := c.ents[drop-1].p.Seq
		c.start = max(c.start, last+1)
		n := copy(c.ents, c.ents[drop:])
		clear(c.ents[n:])
		c.ents = c.ents[:n]
	}
}

// find returns the index of seq in ents.
func (c *pubCache) find(seq uint64) (int, bool) {
	i := sort.Search(len(c.ents), func(i int) bool { return c.ents[i].p.Seq >= seq })
	return i, i < len(c.ents) && c.ents[i].p.Seq == seq
}

// read returns up to limit live publishes with sequences from from on, and
// whether the cache covers from (false: read Badger). The publishes share
// their topic and payload with the cache: callers must not modify them.
func (c *pubCache) read(from uint64, limit int) ([]Publish, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.start == 0 || from < c.start {
		return nil, false
	}
	i, _ := c.find(from)
	var out []Publish
	for ; i < len(c.ents) && len(out) < limit; i++ {
		if !c.ents[i].gone {
			out = append(out, c.ents[i].p)
		}
	}
	return out, true
}

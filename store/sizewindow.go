package store

import "math"

// sizeWindow remembers the encoded sizes of the most recently written
// entries of a queue (the inbox, the local publishes), so that a processing
// commit or an acknowledgement can account for the entry it removes without
// reading it back: a point lookup through the memtables and every level of
// the tree, the largest single cost of a commit on the committer goroutine.
// Entries outside the window (older than its length, or written before the
// last reload) are read from Badger as before.
//
// It is owned by the committer goroutine; the zero value is an empty window.
type sizeWindow struct {
	base  uint64   // sequence of sizes[0]
	sizes []uint32 // sizes of the entries base, base+1, ...
}

// sizeWindowLen bounds the window: 4 bytes per entry, 128 KiB in all. It
// covers the gateway's whole in-memory backlog at its default
// (pipeline.inbox_limit 10,000), so in steady state no commit reads back.
const sizeWindowLen = 1 << 15

// sizeRemoved marks an entry of the window that has been removed.
const sizeRemoved int64 = math.MaxUint32

// get returns the size of entry seq if the window holds it; sizeRemoved
// once the entry is marked removed.
func (w *sizeWindow) get(seq uint64) (int64, bool) {
	if seq < w.base || seq-w.base >= uint64(len(w.sizes)) {
		return 0, false
	}
	return int64(w.sizes[seq-w.base]), true
}

// removed marks entry seq removed, if the window holds it.
func (w *sizeWindow) removed(seq uint64) {
	if seq >= w.base && seq-w.base < uint64(len(w.sizes)) {
		w.sizes[seq-w.base] = uint32(sizeRemoved)
	}
}

// put records the size of entry seq. Sequences must come in order; a gap
// starts the window again at seq. When full it forgets its older half.
func (w *sizeWindow) put(seq uint64, n int) {
	if len(w.sizes) == 0 || seq != w.base+uint64(len(w.sizes)) {
		w.base, w.sizes = seq, w.sizes[:0]
	}
	if len(w.sizes) == sizeWindowLen {
		half := sizeWindowLen / 2
		w.sizes = w.sizes[:copy(w.sizes, w.sizes[half:])]
		w.base += uint64(half)
	}
	w.sizes = append(w.sizes, uint32(min(uint64(n), uint64(sizeRemoved)-1)))
}

// forget drops the entries below head (consumed: never asked for again).
func (w *sizeWindow) forget(head uint64) {
	if head <= w.base {
		return
	}
	if head-w.base >= uint64(len(w.sizes)) {
		w.sizes = w.sizes[:0]
		return
	}
	// Compact lazily: only when the dead prefix is at least half the window,
	// so that the copying is amortised over the entries dropped.
	if n := int(head - w.base); n >= len(w.sizes)/2 {
		w.sizes = w.sizes[:copy(w.sizes, w.sizes[n:])]
		w.base = head
	}
}

// reset empties the window (after a reload from disk).
func (w *sizeWindow) reset() { w.sizes = w.sizes[:0] }

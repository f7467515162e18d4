package badger

// moongate: bottom tables that a compaction does not touch stay where they
// are (README.moongate.md, section 6).

import (
	"bytes"
	"math"

	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
)

// topTouches reports whether a key of one of the top tables falls in the
// user-key range of t (any version).
func topTouches(top []*table.Table, t *table.Table) bool {
	lo, hi := y.ParseKey(t.Smallest()), y.ParseKey(t.Biggest())
	for _, tt := range top {
		if bytes.Compare(y.ParseKey(tt.Biggest()), lo) < 0 || bytes.Compare(y.ParseKey(tt.Smallest()), hi) > 0 {
			continue
		}
		it := tt.NewIterator(table.NOCACHE)
		// The newest version of lo sorts first among lo's versions.
		it.Seek(y.KeyWithTs(lo, math.MaxUint64))
		hit := it.Valid() && bytes.Compare(y.ParseKey(it.Key()), hi) <= 0
		_ = it.Close()
		if hit {
			return true
		}
	}
	return false
}

// keepUntouched splits cd.bot into the tables a key of cd.top falls in,
// which the compaction rewrites, and the others, which it leaves in the
// next level as they are; it returns the kept ones (in key order) and
// cd with only the touched ones in bot. The compaction status keeps the
// original definition (doCompact's copy), so the kept tables are marked
// as compacting until the end, as before.
//
// Leaving a table unchanged is safe where no top key falls in its range:
// no version of its keys is in the top tables, so the merge would have
// copied it as it is; the output has no key in its range, and the splits
// (keepSplits) end output tables at its boundaries, so the level stays
// sorted and without overlaps. Not done with drop prefixes, nor within a
// level (L0 -> L0, Lmax -> Lmax).
func keepUntouched(cd compactDef) (compactDef, []*table.Table) {
	if cd.thisLevel == cd.nextLevel || len(cd.dropPrefixes) > 0 || len(cd.bot) == 0 {
		return cd, nil
	}
	var touched, kept []*table.Table
	for _, t := range cd.bot {
		if topTouches(cd.top, t) {
			touched = append(touched, t)
		} else {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		return cd, nil
	}
	cd.bot = touched
	return cd, kept
}

// keepSplits sets cd.splits so that no output table spans a kept table:
// each run of consecutive kept tables is a range of its own, marked empty
// (nothing is built there), between the ranges that are compacted. all is
// the bottom tables before keepUntouched, in key order.
func keepSplits(cd *compactDef, all []*table.Table, kept []*table.Table) {
	cd.splits = cd.splits[:0]
	isKept := make(map[uint64]bool, len(kept))
	for _, t := range kept {
		isKept[t.ID()] = true
	}
	skr := cd.thisRange
	skr.extend(cd.nextRange)
	left := skr.left
	add := func(right []byte, empty bool) {
		cd.splits = append(cd.splits, keyRange{left: left, right: right, empty: empty})
		left = right
	}
	for i := 0; i < len(all); i++ {
		if !isKept[all[i].ID()] {
			continue
		}
		j := i
		for j+1 < len(all) && isKept[all[j+1].ID()] {
			j++
		}
		// Everything before the run's first key, then the run itself.
		add(y.KeyWithTs(y.ParseKey(all[i].Smallest()), math.MaxUint64), false)
		add(y.KeyWithTs(y.ParseKey(all[j].Biggest()), 0), true)
		i = j
	}
	add([]byte{}, false)
}

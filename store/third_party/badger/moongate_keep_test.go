package badger

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/dgraph-io/badger/v4/y"
	"github.com/stretchr/testify/require"
)

// checkLevelSorted fails unless the tables of level lev are in key order
// and no two share a key.
func checkLevelSorted(t *testing.T, db *DB, lev int) {
	t.Helper()
	l := db.lc.levels[lev]
	l.RLock()
	defer l.RUnlock()
	for i := 1; i < len(l.tables); i++ {
		if bytes.Compare(y.ParseKey(l.tables[i-1].Biggest()), y.ParseKey(l.tables[i].Smallest())) >= 0 {
			t.Fatalf("level %d: table %d ends at %q, table %d starts at %q", lev, i-1, y.ParseKey(l.tables[i-1].Biggest()), i, y.ParseKey(l.tables[i].Smallest()))
		}
	}
}

func levelIDs(db *DB, lev int) map[uint64]bool {
	l := db.lc.levels[lev]
	l.RLock()
	defer l.RUnlock()
	ids := map[uint64]bool{}
	for _, t := range l.tables {
		ids[t.ID()] = true
	}
	return ids
}

func compactL0(t *testing.T, db *DB) {
	t.Helper()
	cdef := compactDef{
		thisLevel: db.lc.levels[0],
		nextLevel: db.lc.levels[1],
		top:       db.lc.levels[0].tables,
		bot:       db.lc.levels[1].tables,
		t:         db.lc.levelTargets(),
	}
	cdef.thisRange = getKeyRange(cdef.top...)
	cdef.nextRange = getKeyRange(cdef.bot...)
	cdef.t.baseLevel = 1
	require.NoError(t, db.lc.runCompactDef(-1, 0, cdef))
}

// A level-0 compaction rewrites the level-1 tables its keys fall in and
// leaves the others (same table, same file); the result reads the same.
func TestMoongateCompactionKeepsUntouchedTables(t *testing.T) {
	opt := DefaultOptions("").WithNumCompactors(0).WithNumVersionsToKeep(1)
	opt.managedTxns = true
	runBadgerTest(t, &opt, func(t *testing.T, db *DB) {
		createAndOpen(db, []keyValVersion{{"a1", "new", 5, 0}, {"c1", "new", 5, 0}}, 0)
		createAndOpen(db, []keyValVersion{{"a0", "old", 1, 0}, {"a1", "old", 1, 0}, {"a2", "old", 1, 0}}, 1)
		createAndOpen(db, []keyValVersion{{"b0", "old", 1, 0}, {"b5", "old", 1, 0}, {"b9", "old", 1, 0}}, 1)
		createAndOpen(db, []keyValVersion{{"c0", "old", 1, 0}, {"c1", "old", 1, 0}, {"c2", "old", 1, 0}}, 1)
		db.SetDiscardTs(10)
		middle := db.lc.levels[1].tables[1].ID()
		compactL0(t, db)
		if !levelIDs(db, 1)[middle] {
			t.Fatal("the untouched table b0-b9 was rewritten")
		}
		checkLevelSorted(t, db, 1)
		getAllAndCheck(t, db, []keyValVersion{
			{"a0", "old", 1, 0}, {"a1", "new", 5, 0}, {"a2", "old", 1, 0},
			{"b0", "old", 1, 0}, {"b5", "old", 1, 0}, {"b9", "old", 1, 0},
			{"c0", "old", 1, 0}, {"c1", "new", 5, 0}, {"c2", "old", 1, 0},
		})
	})
}

// A newer version of a bottom table's first or last key touches it (the
// newest version sorts before the older ones), and so does a key strictly
// inside its range.
func TestMoongateCompactionTouchesOnEdgeKeys(t *testing.T) {
	for _, top := range []keyValVersion{{"b0", "new", 9, 0}, {"b9", "new", 9, 0}, {"b3", "new", 9, 0}} {
		t.Run(top.key, func(t *testing.T) {
			opt := DefaultOptions("").WithNumCompactors(0).WithNumVersionsToKeep(1)
			opt.managedTxns = true
			runBadgerTest(t, &opt, func(t *testing.T, db *DB) {
				createAndOpen(db, []keyValVersion{top}, 0)
				createAndOpen(db, []keyValVersion{{"a0", "old", 1, 0}}, 1)
				createAndOpen(db, []keyValVersion{{"b0", "old", 1, 0}, {"b9", "old", 1, 0}}, 1)
				createAndOpen(db, []keyValVersion{{"c0", "old", 1, 0}}, 1)
				db.SetDiscardTs(20)
				compactL0(t, db)
				checkLevelSorted(t, db, 1)
				want := []keyValVersion{{"a0", "old", 1, 0}}
				for _, kv := range []keyValVersion{{"b0", "old", 1, 0}, top, {"b9", "old", 1, 0}} {
					if kv.key == top.key && kv.val == "old" {
						continue
					}
					want = append(want, kv)
				}
				if top.key == "b3" {
					want = []keyValVersion{{"a0", "old", 1, 0}, {"b0", "old", 1, 0}, top, {"b9", "old", 1, 0}}
				}
				want = append(want, keyValVersion{"c0", "old", 1, 0})
				getAllAndCheck(t, db, want)
			})
		})
	}
}

// Random level-0 and level-1 tables, compacted with untouched tables kept:
// every key reads its newest value and level 1 stays sorted; over the
// runs, tables are both kept and rewritten.
func TestMoongateCompactionKeepRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var kept, total int
	for run := 0; run < 40; run++ {
		opt := DefaultOptions("").WithNumCompactors(0).WithNumVersionsToKeep(1)
		opt.managedTxns = true
		runBadgerTest(t, &opt, func(t *testing.T, db *DB) {
			latest := map[string]keyValVersion{}
			// Level 1: sorted, disjoint tables over keys k0000-k0999.
			key := 0
			for key < 1000 {
				n := 1 + rng.IntN(60)
				var kvs []keyValVersion
				for i := 0; i < n && key < 1000; i++ {
					kv := keyValVersion{fmt.Sprintf("k%04d", key), fmt.Sprint("v1-", key), 1, 0}
					kvs = append(kvs, kv)
					latest[kv.key] = kv
					key += 1 + rng.IntN(3)
				}
				createAndOpen(db, kvs, 1)
			}
			// Level 0: a few tables of keys in a few narrow bands (as
			// moongate's key spaces), newer versions.
			for ts := 2; ts < 2+1+rng.IntN(4); ts++ {
				var kvs []keyValVersion
				start := rng.IntN(1000)
				for k := start; k < min(start+rng.IntN(30), 1100); k += 1 + rng.IntN(4) {
					kv := keyValVersion{fmt.Sprintf("k%04d", k), fmt.Sprint("v", ts, "-", k), ts, 0}
					kvs = append(kvs, kv)
					latest[kv.key] = kv
				}
				if len(kvs) > 0 {
					createAndOpen(db, kvs, 0)
				}
			}
			if len(db.lc.levels[0].tables) == 0 {
				return
			}
			// Level 0 tables overlap each other: the newest first.
			l0 := db.lc.levels[0].tables
			for i, j := 0, len(l0)-1; i < j; i, j = i+1, j-1 {
				l0[i], l0[j] = l0[j], l0[i]
			}
			db.SetDiscardTs(100)
			before := levelIDs(db, 1)
			total += len(before)
			compactL0(t, db)
			after := levelIDs(db, 1)
			for id := range before {
				if after[id] {
					kept++
				}
			}
			checkLevelSorted(t, db, 1)
			require.NoError(t, db.View(func(txn *Txn) error {
				for k, kv := range latest {
					item, err := txn.Get([]byte(k))
					require.NoError(t, err, k)
					v, err := item.ValueCopy(nil)
					require.NoError(t, err)
					require.Equal(t, kv.val, string(v), k)
				}
				return nil
			}))
		})
	}
	if kept == 0 || kept == total {
		t.Fatalf("%d of %d level-1 tables kept: the test does not exercise both cases", kept, total)
	}
	t.Logf("%d of %d level-1 tables kept", kept, total)
}

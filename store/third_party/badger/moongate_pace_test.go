/*
 * SPDX-FileCopyrightText: © 2026 moongate authors
 * SPDX-License-Identifier: Apache-2.0
 */

package badger

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakePacer returns a pacer on a fake clock that advances only when told
// and records the sleeps asked for.
func fakePacer(share float64, behind *atomic.Bool) (*buildPacer, *time.Time, *[]time.Duration) {
	now := time.Unix(0, 0)
	var sleeps []time.Duration
	p := newBuildPacer(share, behind.Load)
	p.now = func() time.Time { return now }
	p.sleep = func(d time.Duration) { sleeps = append(sleeps, d); now = now.Add(d) }
	return p, &now, &sleeps
}

func TestMoongatePacerOff(t *testing.T) {
	for _, share := range []float64{0, -1, 1.5} {
		if p := newBuildPacer(share, func() bool { return false }); p != nil {
			t.Errorf("share %v: pacer %v, want nil (off)", share, p)
		}
	}
	// A nil pacer's workers do nothing and run what they are given.
	var p *buildPacer
	w := p.worker()
	w.step()
	w.done()
	ran := false
	w.run(func() { ran = true })
	if !ran {
		t.Fatal("nil worker did not run f")
	}
}

func TestMoongatePacerShare(t *testing.T) {
	for _, share := range []float64{0.25, 0.5, 0.8} {
		t.Run(fmt.Sprint(share), func(t *testing.T) {
			var behind atomic.Bool
			p, now, sleeps := fakePacer(share, &behind)
			w := p.worker()
			// 100,000 steps of 1 µs each: 100 ms of work.
			for range 100000 {
				*now = now.Add(time.Microsecond)
				w.step()
			}
			w.done()
			var slept time.Duration
			for _, d := range *sleeps {
				slept += d
			}
			work := 100 * time.Millisecond
			got := float64(work) / float64(work+slept)
			if got < share*0.95 || got > share*1.05 {
				t.Fatalf("work share %.3f (slept %v in %d sleeps), want %.2f", got, slept, len(*sleeps), share)
			}
			// Slices of about p.slice: the check runs every 64 steps.
			if n := len(*sleeps); n < 90 || n > 110 {
				t.Fatalf("%d sleeps for 100 ms of work in 1 ms slices", n)
			}
		})
	}
}

func TestMoongatePacerBehindRunsFree(t *testing.T) {
	var behind atomic.Bool
	behind.Store(true)
	p, now, sleeps := fakePacer(0.5, &behind)
	w := p.worker()
	for range 10000 {
		*now = now.Add(time.Microsecond)
		w.step()
	}
	if len(*sleeps) != 0 || w.held {
		t.Fatalf("behind: %d sleeps, token held %v; want none", len(*sleeps), w.held)
	}
	// Another worker is not excluded either.
	if !p.token.TryLock() {
		t.Fatal("token taken while behind")
	}
	p.token.Unlock()

	// Catching up: the next check takes the token; becoming behind again
	// ends the slice without a sleep.
	behind.Store(false)
	for range paceCheckEvery {
		w.step()
	}
	if !w.held {
		t.Fatal("token not taken once no longer behind")
	}
	behind.Store(true)
	*now = now.Add(5 * time.Millisecond)
	for range paceCheckEvery {
		w.step()
	}
	if w.held || len(*sleeps) != 0 {
		t.Fatalf("behind again: token held %v, %d sleeps; want released, none", w.held, len(*sleeps))
	}
}

// One pause is at most maxPaceSleep, whatever the work before it and the
// share.
func TestMoongatePacerSleepCapped(t *testing.T) {
	var behind atomic.Bool
	p, now, sleeps := fakePacer(0.1, &behind)
	w := p.worker()
	w.run(func() { *now = now.Add(time.Second) })
	if len(*sleeps) != 1 || (*sleeps)[0] != maxPaceSleep {
		t.Fatalf("sleeps %v after 1 s of work at share 0.1, want one of %v", *sleeps, maxPaceSleep)
	}
}

// At share 1 table building is kept to one goroutine but never sleeps.
func TestMoongatePacerShareOne(t *testing.T) {
	var behind atomic.Bool
	p, now, sleeps := fakePacer(1, &behind)
	w := p.worker()
	for range 10000 {
		*now = now.Add(time.Microsecond)
		w.step()
	}
	if len(*sleeps) != 0 {
		t.Fatalf("%d sleeps at share 1", len(*sleeps))
	}
	if !w.held {
		t.Fatal("token not held at share 1")
	}
	w.done()
}

// One builder at a time while paced: a second worker waits for the token
// until the first ends its slice, and a piece of work given to run is
// followed by a rest in proportion.
func TestMoongatePacerOneBuilderAtATime(t *testing.T) {
	var behind atomic.Bool
	p := newBuildPacer(0.5, behind.Load)
	a := p.worker()
	for range paceCheckEvery {
		a.step()
	}
	if !a.held {
		t.Fatal("first worker does not hold the token")
	}
	started := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		b := p.worker()
		close(started)
		b.run(func() {})
		close(finished)
	}()
	<-started
	select {
	case <-finished:
		t.Fatal("second worker ran while the first held the token")
	case <-time.After(50 * time.Millisecond):
	}
	a.done()
	<-finished

	// run: 20 ms of work, then about 20 ms of rest at share 0.5.
	w := p.worker()
	t0 := time.Now()
	w.run(func() { time.Sleep(20 * time.Millisecond) })
	if d := time.Since(t0); d < 39*time.Millisecond {
		t.Fatalf("run of 20 ms of work took %v in all, want at least 40 ms at share 0.5", d)
	}
	if !p.token.TryLock() {
		t.Fatal("token still held after run")
	}
	p.token.Unlock()
}

// A database whose compactions are paced keeps every write and
// finishes its compactions (no deadlock between the pacer's token and the
// compaction's builder slots), with several compactors and small tables.
func TestMoongatePacedCompactions(t *testing.T) {
	dir := t.TempDir()
	opt := DefaultOptions(dir).WithMemTableSize(256 << 10).WithBaseTableSize(64 << 10).
		// Level 0 compacts at 2 tables and is behind only at 18: the
		// compactions run paced.
		WithBaseLevelSize(256 << 10).WithNumLevelZeroTables(2).WithNumLevelZeroTablesStall(20).
		WithNumCompactors(4).WithValueThreshold(1 << 10).WithLogger(nil).WithBuildShare(0.5)
	db, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40000
	val := bytes.Repeat([]byte("v"), 100)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				err := db.Update(func(txn *Txn) error {
					return txn.Set([]byte(fmt.Sprintf("key%08d", i)), append(val, fmt.Sprint(i)...))
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Compactions run in the background: wait for one below level 0 that
	// paused.
	compacted := func() bool {
		for _, l := range db.Levels() {
			if l.Level > 0 && l.NumTables > 0 {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(30 * time.Second); db.pacer.pauses.Load() == 0 || !compacted(); {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: %d paced pauses, compacted below level 0: %v", db.pacer.pauses.Load(), compacted())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Closing runs at full speed (behind while closing) and flushes.
	t0 := time.Now()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d paced pauses; close took %v", db.pacer.pauses.Load(), time.Since(t0))

	db, err = Open(opt.WithBuildShare(0))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(txn *Txn) error {
		for i := range n {
			item, err := txn.Get([]byte(fmt.Sprintf("key%08d", i)))
			if err != nil {
				return fmt.Errorf("key %d: %w", i, err)
			}
			v, _ := item.ValueCopy(nil)
			if want := append(val, fmt.Sprint(i)...); !bytes.Equal(v, want) {
				return fmt.Errorf("key %d: wrong value", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

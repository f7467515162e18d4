package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"slices"
	"testing"
	"time"
)

// A staged copy released (StagedBlob.Release) while a committed blob
// still refers to the object queues the object for the next interval
// sync. The sync loop takes the queue, syncs, then removes what is
// unreferenced in the state as it is *now*: a delete of that blob
// committed after the sync began (and so not covered by it) already
// counts, and the object goes while the delete is not durable. A power
// loss then brings the blob back without its content. syncHook runs
// between the sync and the removal: the delete is committed there.
// TestIntervalReleasedObjectNotRemovedForUnsyncedDelete: an object queued
// for removal (a staged copy released) while a blob still refers to it is
// looked at after the interval sync; a delete of that blob committed after
// the sync (not durable) must not let it go: a power loss would bring the
// blob back without content. Removed only if unreferenced in the state the
// sync covers too.
func TestIntervalReleasedObjectNotRemovedForUnsyncedDelete(t *testing.T) {
	ctx := context.Background()
	opts := Options{Dir: t.TempDir(), Buckets: map[string]Bucket{"photos": {}}, Durability: DurabilityInterval,
		SyncInterval: 20 * time.Millisecond, RetentionInterval: time.Hour, GCInterval: -1}
	s := openTest(t, opts)
	data := bytes.Repeat([]byte("z"), 10000)
	sum := sha256.Sum256(data)
	putBlob(t, s, "photos", "a.jpg", data)
	for deadline := time.Now().Add(5 * time.Second); s.dirty.Load() || s.Stats().Syncs == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a.jpg not synced")
		}
	}
	type seen struct {
		existed   bool
		delSynced bool
	}
	stage := 0
	result := make(chan seen, 1)
	armed := make(chan struct{})
	syncHook = func(err error) error {
		select {
		case <-armed:
		default:
			return err
		}
		s.unsyncedMu.Lock()
		queued := slices.Contains(s.unsyncedFreed, sum)
		s.unsyncedMu.Unlock()
		switch {
		case stage == 0 && !queued:
			// This iteration took the released object; its sync is done.
			// a.jpg deleted now: after the sync, before the removal.
			if derr := s.DeleteBlob(ctx, "photos", "a.jpg"); derr != nil {
				t.Errorf("DeleteBlob: %v", derr)
			}
			stage = 1
		case stage == 1:
			// The next iteration: its sync is the first to cover the
			// delete. Whatever removal happened so far was before it.
			_, serr := os.Stat(s.objectPath(sum))
			result <- seen{existed: serr == nil}
			stage = 2
		}
		return err
	}
	defer func() { syncHook = nil }()
	// An upload of the same bytes, abandoned: the staged copy is released.
	sb, err := s.StageBlob(ctx, "photos", bytes.NewReader(data), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	sb.Release()
	close(armed)
	select {
	case r := <-result:
		if !r.existed {
			t.Fatal("the object of a.jpg was removed before the delete of a.jpg was synced: a power loss now brings a.jpg back without content")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sync loop did not reach the second iteration")
	}
}

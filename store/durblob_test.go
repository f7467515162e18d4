package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"testing"
	"time"
)

// With durability interval, an object a commit left without references is
// removed only after that commit is synced (freeAfterCommit): a power loss
// before the sync rolls the delete back, and the blob must still have its
// content. A staged copy of the same content, released without a commit
// (a failed or abandoned upload of the same bytes: StagedBlob.Release),
// removed the object at once: removeIfUnreferencedLocked looks up the
// references in the unsynced state, where the delete already took the
// last one away.
func TestIntervalStagedReleaseKeepsObjectOfUnsyncedDelete(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := Options{Dir: dir, Buckets: map[string]Bucket{"photos": {}}, Durability: DurabilityInterval,
		SyncInterval: time.Minute, RetentionInterval: time.Hour, GCInterval: -1}
	s := openTest(t, opts)
	data := bytes.Repeat([]byte("y"), 10000)
	putBlob(t, s, "photos", "a.jpg", data)
	s = reopen(t, s) // Close synced: a.jpg is durable
	syncs := s.Stats().Syncs
	if err := s.DeleteBlob(ctx, "photos", "a.jpg"); err != nil {
		t.Fatal(err)
	}
	// The same bytes staged again (an upload), then released without a
	// commit (the upload failed or was abandoned).
	sb, err := s.StageBlob(ctx, "photos", bytes.NewReader(data), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	sb.Release()
	if s.Stats().Syncs != syncs {
		t.Skip("a sync ran meanwhile")
	}
	sum := sha256.Sum256(data)
	if _, err := os.Stat(s.objectPath(sum)); err != nil {
		t.Fatalf("the object of a.jpg was removed before its delete was synced (%v): a power loss now brings a.jpg back without content", err)
	}
}

// The same through PutBlob alone: a.jpg replaced (its old content freed,
// to be removed after the sync), then an upload of that old content under
// another name refused by the bucket's quota: the refused upload's Release
// removed the object at once.
func TestIntervalRefusedPutKeepsObjectOfUnsyncedReplace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := Options{Dir: dir, Buckets: map[string]Bucket{"photos": {MaxBytes: 15000}}, Durability: DurabilityInterval,
		SyncInterval: time.Minute, RetentionInterval: time.Hour, GCInterval: -1}
	s := openTest(t, opts)
	old := bytes.Repeat([]byte("o"), 10000)
	putBlob(t, s, "photos", "a.jpg", old)
	s = reopen(t, s) // Close synced: a.jpg (old content) is durable
	syncs := s.Stats().Syncs
	putBlob(t, s, "photos", "a.jpg", bytes.Repeat([]byte("n"), 10000)) // frees old's object after the next sync
	_, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "b.jpg", ContentType: "image/jpeg", Body: bytes.NewReader(old)}, nil)
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("PutBlob over the quota: %v, want ErrQuota", err)
	}
	if s.Stats().Syncs != syncs {
		t.Skip("a sync ran meanwhile")
	}
	sum := sha256.Sum256(old)
	if _, err := os.Stat(s.objectPath(sum)); err != nil {
		t.Fatalf("the old content of a.jpg was removed before its replacement was synced (%v): a power loss now brings the old a.jpg back without content", err)
	}
}

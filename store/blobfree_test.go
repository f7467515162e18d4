package store

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// A blob delete whose caller stops waiting (its context ends while the
// commit is queued) still removes the object once the commit is applied.
// Before, only a waiting caller removed it: the file stayed until the next
// start, outside every quota.
func TestBlobFreedWhenCallerGaveUp(t *testing.T) {
	s := openTest(t, Options{Buckets: map[string]Bucket{"photos": {}}, RetentionInterval: time.Hour})
	putBlob(t, s, "photos", "a.jpg", bytes.Repeat([]byte("x"), 10000))
	if n := len(objectFiles(t, s)); n != 1 {
		t.Fatalf("%d object files", n)
	}
	started, block := make(chan struct{}), make(chan struct{})
	go func() {
		_ = s.submit(context.Background(), &request{est: 64, fn: func(*batch) error { close(started); <-block; return nil }})
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	deleted := make(chan error, 1)
	go func() { deleted <- s.DeleteBlob(ctx, "photos", "a.jpg") }()
	waitQueued(t, s, 1)
	cancel()
	if err := <-deleted; err == nil {
		t.Fatal("DeleteBlob returned before its commit with its context ended")
	}
	close(block)
	deadline := time.Now().Add(10 * time.Second)
	for len(objectFiles(t, s)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("object files left after the delete was applied: %v", objectFiles(t, s))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.StatBlob(context.Background(), "photos", "a.jpg"); err == nil {
		t.Fatal("the delete was not applied")
	}
}

// With durability interval, an object freed by a commit is removed only
// after that commit is synced: a crash before the sync rolls the commit
// back, and the blob it deleted must still have its content.
func TestBlobFreedAfterSyncWithIntervalDurability(t *testing.T) {
	s := openTest(t, Options{Buckets: map[string]Bucket{"photos": {}}, Durability: DurabilityInterval, SyncInterval: time.Minute, RetentionInterval: time.Hour})
	putBlob(t, s, "photos", "a.jpg", bytes.Repeat([]byte("y"), 10000))
	if err := s.DeleteBlob(context.Background(), "photos", "a.jpg"); err != nil {
		t.Fatal(err)
	}
	if n := len(objectFiles(t, s)); n != 1 {
		t.Fatalf("object removed before the delete was synced (%d files)", n)
	}
	dir := s.opts.BlobDir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := &Store{opts: Options{BlobDir: dir}}
	if n := len(objectFiles(t, s2)); n != 0 {
		t.Fatalf("%d object files after the sync on close", n)
	}
}

// An open blob (what an invocation reads through: the gateway's
// OpenBlobVersion) keeps reading its version when the blob is replaced and
// deleted meanwhile: its object file stays readable through the open
// descriptor after it is unlinked.
func TestOpenBlobKeepsItsVersion(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Buckets: map[string]Bucket{"photos": {}}, RetentionInterval: time.Hour})
	old := bytes.Repeat([]byte("o"), 5000)
	putBlob(t, s, "photos", "a.jpg", old)
	b, err := s.OpenBlob(ctx, "photos", "a.jpg")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	putBlob(t, s, "photos", "a.jpg", bytes.Repeat([]byte("n"), 7000))
	if err := s.DeleteBlob(ctx, "photos", "a.jpg"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, b.Size())
	if n, err := b.ReadAt(got, 0); n != len(old) || !bytes.Equal(got, old) {
		t.Fatalf("read %d bytes (%v) of the open version, want its %d bytes", n, err, len(old))
	}
}

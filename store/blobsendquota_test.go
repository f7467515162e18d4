package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestBlobSendObjectsBoundedByOutboxQuota: a bucket bounded by max_bytes, routed to
// a sync target that is down, with an outbox quota: replacing one blob again
// and again keeps the bucket's logical size at one blob, and the outbox
// quota is documented to bound the pending sends ("a target gone long
// enough loses its oldest entries, blob sends included, and their objects
// are then freed"). The object files kept on disk must stay within the
// bucket's max_bytes plus the outbox quota.
func TestBlobSendObjectsBoundedByOutboxQuota(t *testing.T) {
	const maxBytes = 1 << 20
	const outboxQuota = 64 << 10
	s := syncBlobStore(t, Options{
		Buckets: map[string]Bucket{"photos": {MaxBytes: maxBytes, Sync: []string{"cloud"}}},
		Quotas:  map[string]Quota{SpaceOutbox: {MaxBytes: outboxQuota, Policy: DropOldest}},
	})
	for i := range 40 {
		data := bytes.Repeat([]byte{byte(i)}, 256<<10)
		putBlob(t, s, "photos", "latest.jpg", data)
	}
	var onDisk int64
	for _, f := range objectFiles(t, s) {
		fi, err := os.Stat(filepath.Join(s.opts.BlobDir, f))
		if err != nil {
			t.Fatal(err)
		}
		onDisk += fi.Size()
	}
	st := s.OutboxStats("cloud")
	t.Logf("bucket usage %+v; outbox: %d entries, %d stored bytes, %d blob bytes pending, %d dropped",
		s.BlobStats()["photos"], st.Backlog, st.Bytes, st.BlobBytes, st.BlobsDropped)
	if onDisk > maxBytes+outboxQuota {
		t.Fatalf("%d bytes of blob objects on disk for a bucket of max_bytes %d and an outbox quota of %d", onDisk, maxBytes, outboxQuota)
	}
}

// With reject_new, the files of pending sends count as well: a send into
// an outbox that holds another one over the quota is refused (ErrQuota,
// the writer retries later), one into an empty outbox is taken however
// large, and once the pending one is acknowledged the next goes in.
func TestBlobSendRejectNewCountsContents(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{
		Buckets: map[string]Bucket{"photos": {MaxSize: 1 << 20, Sync: []string{"cloud"}}},
		Quotas:  map[string]Quota{SpaceOutbox: {MaxBytes: 64 << 10, Policy: RejectNew}},
	})
	put := func(name string) error {
		_, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: name, ContentType: "image/jpeg", Body: bytes.NewReader(bytes.Repeat([]byte{1}, 256<<10))}, nil)
		return err
	}
	if err := put("a.jpg"); err != nil {
		t.Fatalf("a send of 256 KiB into an empty outbox (quota 64 KiB): %v", err)
	}
	if err := put("b.jpg"); !errors.Is(err, ErrQuota) {
		t.Fatalf("a second send while the first waits: %v, want ErrQuota", err)
	}
	es, err := s.OutboxRead(ctx, "cloud", 0, 10, 1<<20)
	if err != nil || len(es) != 1 {
		t.Fatalf("outbox: %d entries, %v", len(es), err)
	}
	if err := s.OutboxAck(ctx, "cloud", es[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := put("b.jpg"); err != nil {
		t.Fatalf("the second send once the first was acknowledged: %v", err)
	}
}

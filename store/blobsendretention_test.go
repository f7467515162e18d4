package store

import (
	"bytes"
	"context"
	"testing"
)

// The retention pass must apply the outbox quota to the contents of
// pending blob sends, as enforceOutbox does: a target removed from the
// configuration (or a quota lowered at a restart) gets no more writes, so
// only retention can bring its outbox back under the quota.
func TestRetentionCountsBlobSendContents(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{
		Buckets: map[string]Bucket{"photos": {MaxSize: 1 << 20, Sync: []string{"cloud"}}},
	})
	for i := range 10 {
		putBlob(t, s, "photos", "p"+string(rune('a'+i))+".jpg", bytes.Repeat([]byte{byte(i)}, 64<<10))
	}
	if st := s.OutboxStats("cloud"); st.BlobBytes != 10*64<<10 {
		t.Fatalf("before: %+v", st)
	}
	// Restart: the target is gone from the configuration and the outbox
	// quota is 128 KiB, drop_oldest.
	o := s.opts
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	o.Buckets = map[string]Bucket{"photos": {MaxSize: 1 << 20}}
	o.Quotas = map[string]Quota{SpaceOutbox: {MaxBytes: 128 << 10, Policy: DropOldest}}
	s = openTest(t, o)
	n, err := s.RunRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := s.OutboxStats("cloud")
	t.Logf("retention dropped %d; outbox: %d entries, %d bytes, %d blob bytes pending, %d blobs dropped", n, st.Backlog, st.Bytes, st.BlobBytes, st.BlobsDropped)
	if st.Bytes+st.BlobBytes > 128<<10 {
		t.Fatalf("outbox holds %d bytes of entries and %d of blob contents after retention, quota %d (drop_oldest)", st.Bytes, st.BlobBytes, 128<<10)
	}
}

package store

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

func syncBlobStore(t *testing.T, o Options) *Store {
	t.Helper()
	if o.Buckets == nil {
		o.Buckets = map[string]Bucket{
			"photos": {MaxSize: 1 << 20, Sync: []string{"cloud", "edge", "cloud"}},
			"local":  {MaxSize: 1 << 20},
		}
	}
	if o.GatewayID == "" {
		o.GatewayID = "gw1"
	}
	return openTest(t, o)
}

func refsOf(t *testing.T, s *Store, sha string) int64 {
	t.Helper()
	n, err := s.BlobRefs(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func readOutbox(t *testing.T, s *Store, target string) []OutboxEntry {
	t.Helper()
	es, err := s.OutboxRead(context.Background(), target, 0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func objectExists(t *testing.T, s *Store, sha string) bool {
	t.Helper()
	f, err := s.OpenBlobObject(sha)
	if errors.Is(err, ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return true
}

// TestBlobSendOutbox: a put in a bucket with Sync appends one blob send per
// (distinct) target, each holding a reference on the object; a delete of
// the blob keeps the object until every send is acknowledged, and the last
// acknowledgement removes it.
func TestBlobSendOutbox(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{})
	data := bytes.Repeat([]byte("pixel"), 1000)
	bi := putBlob(t, s, "photos", "cam1/a.jpg", data)
	putBlob(t, s, "local", "x", []byte("not synced"))

	for _, target := range []string{"cloud", "edge"} {
		es := readOutbox(t, s, target)
		if len(es) != 1 || es[0].Blob == nil {
			t.Fatalf("%s outbox: %+v, want one blob send", target, es)
		}
		bs, rec := es[0].Blob, es[0].Record
		want := BlobSend{ID: s.IDPrefix() + "blob-1", Bucket: "photos", Name: "cam1/a.jpg", Size: bi.Size, ContentType: "image/jpeg", SHA256: bi.SHA256, Created: bi.Created}
		if *bs != want {
			t.Fatalf("blob send %+v, want %+v", *bs, want)
		}
		if rec.ID != s.IDPrefix()+"blob-1" || rec.Seq != 1 || rec.Stream != BlobStream || rec.EventTS != bi.Created {
			t.Fatalf("metadata record %+v", rec)
		}
		var meta map[string]any
		if err := json.Unmarshal(rec.Data, &meta); err != nil || meta["sha256"] != bi.SHA256 || meta["name"] != "cam1/a.jpg" || meta["size"] != float64(len(data)) {
			t.Fatalf("metadata %s (%v)", rec.Data, err)
		}
		st := s.OutboxStats(target)
		if st.Backlog != 1 || st.Blobs != 1 || st.BlobBytes != int64(len(data)) {
			t.Fatalf("%s stats %+v", target, st)
		}
	}
	if n := refsOf(t, s, bi.SHA256); n != 3 {
		t.Fatalf("references %d, want 3 (the blob and two sends)", n)
	}
	if got := s.OutboxTargets(); len(got) != 2 {
		t.Fatalf("outboxes %v: the bucket without sync has none", got)
	}

	// Delete while both sends are pending: the object stays.
	if err := s.DeleteBlob(ctx, "photos", "cam1/a.jpg"); err != nil {
		t.Fatal(err)
	}
	if n := refsOf(t, s, bi.SHA256); n != 2 || !objectExists(t, s, bi.SHA256) {
		t.Fatalf("after delete: %d references, object exists %v", n, objectExists(t, s, bi.SHA256))
	}
	f, err := s.OpenBlobObject(bi.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("object content differs")
	}
	// Survives a restart (the references are in the store).
	s = reopen(t, s)
	if n := refsOf(t, s, bi.SHA256); n != 2 || !objectExists(t, s, bi.SHA256) {
		t.Fatalf("after reopen: %d references", n)
	}
	if err := s.OutboxAck(ctx, "cloud", 1); err != nil {
		t.Fatal(err)
	}
	if n := refsOf(t, s, bi.SHA256); n != 1 || !objectExists(t, s, bi.SHA256) {
		t.Fatalf("after one ack: %d references", n)
	}
	if st := s.OutboxStats("cloud"); st.Backlog != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
		t.Fatalf("cloud stats after ack %+v", st)
	}
	if err := s.OutboxAck(ctx, "edge", 1); err != nil {
		t.Fatal(err)
	}
	if n := refsOf(t, s, bi.SHA256); n != 0 || objectExists(t, s, bi.SHA256) {
		t.Fatalf("after the last ack: %d references, object exists %v", n, objectExists(t, s, bi.SHA256))
	}
	if files := objectFiles(t, s); len(files) != 1 { // the local bucket's blob
		t.Fatalf("files %v", files)
	}
	// The index is gone too: acknowledging again changes nothing.
	if err := s.OutboxAck(ctx, "edge", 1); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	if st := s.OutboxStats("edge"); st.Blobs != 0 || st.Backlog != 0 {
		t.Fatalf("edge after reopen %+v", st)
	}
}

// TestBlobSendReplaceAndOrder: replacing a blob keeps the old object for its
// pending send; a commit with a blob and a record puts the blob send first;
// sends and records share the outbox sequence.
func TestBlobSendReplaceAndOrder(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{Buckets: map[string]Bucket{"photos": {Sync: []string{"cloud"}}}})
	old := putBlob(t, s, "photos", "a", []byte("version 1"))
	nw := putBlob(t, s, "photos", "a", []byte("version 2"))
	if refsOf(t, s, old.SHA256) != 1 || refsOf(t, s, nw.SHA256) != 2 {
		t.Fatalf("references old %d new %d", refsOf(t, s, old.SHA256), refsOf(t, s, nw.SHA256))
	}
	sb, err := s.StageBlob(ctx, "photos", strings.NewReader("derived"), 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Commit(ctx, &Commit{
		Records: []Record{{Stream: "s", Data: []byte(`{"blob":"b"}`), Targets: []string{"cloud"}}},
		Blobs:   []BlobOp{{Bucket: "photos", Name: "b", Object: sb}},
	})
	sb.Release()
	if err != nil {
		t.Fatal(err)
	}
	es := readOutbox(t, s, "cloud")
	if len(es) != 4 {
		t.Fatalf("%d entries, want 4", len(es))
	}
	for i, want := range []string{"blob-1", "blob-2", "blob-3", "1"} {
		if es[i].Record.ID != s.IDPrefix()+want || es[i].Seq != uint64(i+1) || (es[i].Blob != nil) != strings.Contains(want, "blob") {
			t.Fatalf("entry %d: seq %d id %s blob %v, want %s", i, es[i].Seq, es[i].Record.ID, es[i].Blob != nil, want)
		}
	}
	if es[0].Blob.SHA256 != old.SHA256 || es[1].Blob.SHA256 != nw.SHA256 {
		t.Fatal("sends do not name the object of their put")
	}
	// Acknowledging a prefix that mixes sends and records.
	if err := s.OutboxAck(ctx, "cloud", 4); err != nil {
		t.Fatal(err)
	}
	if objectExists(t, s, old.SHA256) || !objectExists(t, s, nw.SHA256) {
		t.Fatal("after the ack the replaced object must be gone, the current one kept")
	}
	if refsOf(t, s, nw.SHA256) != 1 {
		t.Fatalf("current object has %d references", refsOf(t, s, nw.SHA256))
	}
	if st := s.OutboxStats("cloud"); st.Backlog != 0 || st.Blobs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBlobSendQuotaDrop: blob sends dropped by the outbox quota give their
// references back and are counted; nothing leaks.
func TestBlobSendQuotaDrop(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{Buckets: map[string]Bucket{"photos": {Sync: []string{"cloud"}}},
		Quotas: map[string]Quota{SpaceOutbox: {MaxBytes: 300, Policy: DropOldest}}})
	var infos []BlobInfo
	for i := range 10 {
		infos = append(infos, putBlob(t, s, "photos", "p"+string(rune('0'+i)), bytes.Repeat([]byte{byte(i)}, 100)))
	}
	st := s.OutboxStats("cloud")
	if st.BlobsDropped == 0 || st.Dropped != st.BlobsDropped || st.Blobs != st.Backlog || st.Blobs+st.BlobsDropped != 10 {
		t.Fatalf("stats %+v", st)
	}
	for _, bi := range infos {
		if err := s.DeleteBlob(ctx, "photos", bi.Name); err != nil {
			t.Fatal(err)
		}
	}
	// Only the objects of the sends still waiting are left.
	if n := len(objectFiles(t, s)); int64(n) != st.Blobs {
		t.Fatalf("%d object files, %d sends waiting", n, st.Blobs)
	}
	if err := s.OutboxAck(ctx, "cloud", st.Next-1); err != nil {
		t.Fatal(err)
	}
	if files := objectFiles(t, s); len(files) != 0 {
		t.Fatalf("files left %v", files)
	}
}

// TestBlobSendOrphanAtOpen: an object whose last reference was given back
// by a durable acknowledgement, but whose file a crash left behind, is
// removed at Open; an object still referenced by a send is kept.
func TestBlobSendOrphanAtOpen(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{Buckets: map[string]Bucket{"photos": {Sync: []string{"cloud"}}}})
	a := putBlob(t, s, "photos", "a", []byte("acked"))
	b := putBlob(t, s, "photos", "b", []byte("pending"))
	for _, n := range []string{"a", "b"} {
		if err := s.DeleteBlob(ctx, "photos", n); err != nil {
			t.Fatal(err)
		}
	}
	// Keep a's file as a crash between the ack's commit and the removal would.
	keep := s.objectPath(mustSum(t, a.SHA256))
	saved, err := os.ReadFile(keep)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.OutboxAck(ctx, "cloud", 1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	if objectExists(t, s, a.SHA256) || !objectExists(t, s, b.SHA256) {
		t.Fatalf("after reopen: orphan kept %v, pending send's object kept %v", objectExists(t, s, a.SHA256), objectExists(t, s, b.SHA256))
	}
}

func mustSum(t *testing.T, sha string) [32]byte {
	t.Helper()
	var sum [32]byte
	n, err := hex.Decode(sum[:], []byte(sha))
	if err != nil || n != 32 {
		t.Fatalf("bad hash %q", sha)
	}
	return sum
}

func TestOpenBlobObjectBadInput(t *testing.T) {
	s := syncBlobStore(t, Options{})
	for _, bad := range []string{"", "../../etc/passwd", strings.Repeat("A", 64), strings.Repeat("0", 63), strings.Repeat("0", 66)} {
		if _, err := s.OpenBlobObject(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenBlobObject(%q): %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := s.OpenBlobObject(strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing object: %v", err)
	}
	if _, err := Open(context.Background(), Options{Dir: t.TempDir(), Buckets: map[string]Bucket{"b": {Sync: []string{"bad\x00"}}}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("NUL in a bucket's sync target: %v", err)
	}
}

// TestBlobSendAckChunks: an acknowledgement over more than one chunk of
// entries, blob sends and records mixed, gives every reference back.
func TestBlobSendAckChunks(t *testing.T) {
	ctx := context.Background()
	s := syncBlobStore(t, Options{Buckets: map[string]Bucket{"photos": {Sync: []string{"cloud"}}}})
	sb, err := s.StageBlob(ctx, "photos", strings.NewReader("shared content"), 0)
	if err != nil {
		t.Fatal(err)
	}
	const commits, per = 25, 50
	for i := range commits {
		c := &Commit{Records: []Record{{Stream: "s", Data: []byte(`{}`), Targets: []string{"cloud"}}}}
		for j := range per {
			c.Blobs = append(c.Blobs, BlobOp{Bucket: "photos", Name: fmt.Sprintf("b%d/%d", i, j), Object: sb})
		}
		if _, err := s.Commit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	sb.Release()
	sha := sb.SHA256()
	st := s.OutboxStats("cloud")
	if st.Blobs != commits*per || st.Backlog != commits*(per+1) {
		t.Fatalf("stats %+v", st)
	}
	if n := refsOf(t, s, sha); n != 2*commits*per {
		t.Fatalf("references %d, want %d", n, 2*commits*per)
	}
	if err := s.OutboxAck(ctx, "cloud", st.Next-1); err != nil {
		t.Fatal(err)
	}
	if n := refsOf(t, s, sha); n != commits*per {
		t.Fatalf("references after the ack %d, want %d", n, commits*per)
	}
	if st := s.OutboxStats("cloud"); st.Blobs != 0 || st.BlobBytes != 0 || st.Backlog != 0 {
		t.Fatalf("stats after the ack %+v", st)
	}
	for i := range commits {
		var ops []BlobOp
		for j := range per {
			ops = append(ops, BlobOp{Bucket: "photos", Name: fmt.Sprintf("b%d/%d", i, j), Delete: true})
		}
		if _, err := s.Commit(ctx, &Commit{Blobs: ops}); err != nil {
			t.Fatal(err)
		}
	}
	if refsOf(t, s, sha) != 0 || objectExists(t, s, sha) {
		t.Fatal("object left after every blob and send is gone")
	}
}

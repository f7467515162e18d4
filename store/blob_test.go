package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func blobStore(t *testing.T, buckets map[string]Bucket) *Store {
	t.Helper()
	if buckets == nil {
		buckets = map[string]Bucket{"photos": {MaxSize: 1 << 20, MaxBytes: 3 << 20}}
	}
	return openTest(t, Options{Buckets: buckets})
}

// objectFiles lists the files under the blob directory (objects and tmp).
func objectFiles(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(s.opts.BlobDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, strings.TrimPrefix(p, s.opts.BlobDir+"/"))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func putBlob(t *testing.T, s *Store, bucket, name string, data []byte) BlobInfo {
	t.Helper()
	bi, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: bucket, Name: name, ContentType: "image/jpeg", Body: bytes.NewReader(data)}, nil)
	if err != nil {
		t.Fatalf("PutBlob %s/%s: %v", bucket, name, err)
	}
	return bi
}

func TestBlobPutReadListDelete(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, nil)
	data := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640000 bytes
	sum := sha256.Sum256(data)
	bi := putBlob(t, s, "photos", "cam1/a.jpg", data)
	if bi.Size != int64(len(data)) || bi.SHA256 != hex.EncodeToString(sum[:]) || bi.ContentType != "image/jpeg" || bi.Created == 0 {
		t.Fatalf("info %+v", bi)
	}
	putBlob(t, s, "photos", "cam1/b.jpg", data) // same content: one object
	putBlob(t, s, "photos", "cam2/c.jpg", []byte("small"))
	if files := objectFiles(t, s); len(files) != 2 {
		t.Fatalf("object files %v, want 2 (content-addressed)", files)
	}
	got, err := s.StatBlob(ctx, "photos", "cam1/a.jpg")
	if err != nil || got != bi {
		t.Fatalf("StatBlob = %+v, %v; want %+v", got, err, bi)
	}
	b, err := s.OpenBlob(ctx, "photos", "cam1/b.jpg")
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(io.NewSectionReader(b, 0, b.Info.Size))
	b.Close()
	if err != nil || !bytes.Equal(all, data) {
		t.Fatalf("content differs (%v)", err)
	}
	chunk, size, err := s.ReadBlob(ctx, "photos", "cam1/a.jpg", 639990, 100)
	if err != nil || size != int64(len(data)) || !bytes.Equal(chunk, data[639990:]) {
		t.Fatalf("ReadBlob tail = %q, %d, %v", chunk, size, err)
	}
	if chunk, _, err := s.ReadBlob(ctx, "photos", "cam1/a.jpg", 1<<40, 100); err != nil || len(chunk) != 0 {
		t.Fatalf("ReadBlob past the end = %d bytes, %v", len(chunk), err)
	}
	if _, _, err := s.ReadBlob(ctx, "photos", "cam1/a.jpg", -1, 100); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative offset: %v", err)
	}
	page, cursor, err := s.ListBlobs(ctx, "photos", "cam1/", 1, "")
	if err != nil || len(page) != 1 || page[0].Name != "cam1/a.jpg" || cursor == "" {
		t.Fatalf("list page 1 = %+v %q %v", page, cursor, err)
	}
	if _, _, err := s.ListBlobs(ctx, "photos", "cam2/", 1, cursor); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("cursor of another prefix: %v", err)
	}
	page, cursor, err = s.ListBlobs(ctx, "photos", "cam1/", 1, cursor)
	if err != nil || len(page) != 1 || page[0].Name != "cam1/b.jpg" || cursor != "" {
		t.Fatalf("list page 2 = %+v %q %v", page, cursor, err)
	}
	if _, _, err := s.ListBlobs(ctx, "photos", "", 1, "!!"); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("cursor of another prefix: %v", err)
	}
	if st := s.BlobStats()["photos"]; st.Count != 3 || st.Bytes != 2*int64(len(data))+5 {
		t.Fatalf("stats %+v", st)
	}
	// Deleting one of two references keeps the object; the second removes it.
	if err := s.DeleteBlob(ctx, "photos", "cam1/a.jpg"); err != nil {
		t.Fatal(err)
	}
	if len(objectFiles(t, s)) != 2 {
		t.Fatal("object removed while still referenced")
	}
	if err := s.DeleteBlob(ctx, "photos", "cam1/b.jpg"); err != nil {
		t.Fatal(err)
	}
	if files := objectFiles(t, s); len(files) != 1 {
		t.Fatalf("after deleting both references: %v", files)
	}
	if err := s.DeleteBlob(ctx, "photos", "cam1/b.jpg"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	// Replace frees the old object.
	putBlob(t, s, "photos", "cam2/c.jpg", []byte("other"))
	if files := objectFiles(t, s); len(files) != 1 {
		t.Fatalf("after replace: %v", files)
	}
	s = reopen(t, s)
	if st := s.BlobStats()["photos"]; st.Count != 1 || st.Bytes != 5 {
		t.Fatalf("stats after reopen %+v", st)
	}
	if _, err := s.StatBlob(ctx, "photos", "cam2/c.jpg"); err != nil {
		t.Fatal(err)
	}
}

func TestBlobLimits(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, nil)
	// Over the size limit: refused, nothing left on disk.
	_, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "big", Body: bytes.NewReader(make([]byte, 1<<20+1))}, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	// The message says what limit it is (it said "write too large for
	// one transaction").
	if !strings.Contains(err.Error(), "over the bucket's max_size of 1048576 bytes") {
		t.Fatalf("oversized: message %q", err)
	}
	if files := objectFiles(t, s); len(files) != 0 {
		t.Fatalf("oversized upload left %v", files)
	}
	if _, err := s.StatBlob(ctx, "photos", "big"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("oversized blob visible: %v", err)
	}
	// Exactly the limit is fine.
	putBlob(t, s, "photos", "a", bytes.Repeat([]byte{1}, 1<<20))
	putBlob(t, s, "photos", "b", bytes.Repeat([]byte{2}, 1<<20))
	putBlob(t, s, "photos", "c", bytes.Repeat([]byte{3}, 1<<20))
	// The bucket is full: refused, and the staged object removed.
	_, _, err = s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "d", Body: strings.NewReader("x")}, nil)
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("over max_bytes: %v", err)
	}
	if files := objectFiles(t, s); len(files) != 3 {
		t.Fatalf("refused upload left a file: %v", files)
	}
	// Replacing by something not bigger is allowed in a full bucket.
	putBlob(t, s, "photos", "c", []byte("tiny"))
	// Unknown bucket, bad names.
	if _, _, err := s.PutBlob(ctx, BlobPut{Bucket: "nope", Name: "a", Body: strings.NewReader("x")}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown bucket: %v", err)
	}
	for _, name := range []string{"../x", "a/../../etc/passwd", "/etc/passwd", "a\x00b", `a\b`, "a//b", "./a", "a/", "", strings.Repeat("x", 1025), "\xff"} {
		if _, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: name, Body: strings.NewReader("x")}, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v, want ErrInvalid", name, err)
		}
	}
	if files := objectFiles(t, s); len(files) != 3 {
		t.Fatalf("refused uploads left files: %v", files)
	}
}

// TestBlobDefaultSizeWithinQuota: a bucket with max_bytes and no max_size
// takes no blob larger than the bucket: refused as too large before its
// body is read (it was streamed in whole, then refused as over quota).
func TestBlobDefaultSizeWithinQuota(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, map[string]Bucket{"small": {MaxBytes: 1 << 20}, "big": {MaxBytes: 1 << 30}})
	body := &countingReader{r: bytes.NewReader(make([]byte, 3<<20))}
	_, _, err := s.PutBlob(ctx, BlobPut{Bucket: "small", Name: "x", Body: body}, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("3 MiB into a 1 MiB bucket: %v, want ErrTooLarge", err)
	}
	if body.n > 1<<20+64<<10 {
		t.Fatalf("read %d bytes of the body before refusing it", body.n)
	}
	if b, err := s.bucket("big"); err != nil || b.MaxSize != DefaultBlobMaxSize {
		t.Fatalf("bucket under a larger quota: %+v %v, want the default max size", b, err)
	}
}

// TestBlobLongContentTypeRefusedUnread: a content type over 256 bytes is
// refused before the body is read (it was streamed and staged whole, then
// refused at commit).
func TestBlobLongContentTypeRefusedUnread(t *testing.T) {
	s := blobStore(t, nil)
	body := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	_, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "photos", Name: "x", ContentType: strings.Repeat("a", 257), Body: body}, nil)
	if !errors.Is(err, ErrInvalid) || body.n != 0 {
		t.Fatalf("%v after reading %d bytes", err, body.n)
	}
}

// TestBlobContentTypeControlRefused: a content type is sent back as an
// HTTP header (downloads, sync): one with a control character was stored,
// and an http sync target could then never send the blob (net/http refuses
// the request), holding up its whole outbox. Refused by the upload and by
// the commit (a function's blob.write) alike; tab is a valid header byte.
func TestBlobContentTypeControlRefused(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, nil)
	for _, ct := range []string{"text/plain\nX-Injected: 1", "a\rb", "a\x00", "a\x7f", "\x1b[31m"} {
		body := &countingReader{r: strings.NewReader("data")}
		if _, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "x", ContentType: ct, Body: body}, nil); !errors.Is(err, ErrInvalid) || body.n != 0 {
			t.Errorf("PutBlob with content type %q: %v after reading %d bytes, want ErrInvalid unread", ct, err, body.n)
		}
		sb, err := s.StageBlob(ctx, "photos", strings.NewReader("data"), 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Commit(ctx, &Commit{Blobs: []BlobOp{{Bucket: "photos", Name: "y", ContentType: ct, Object: sb}}})
		sb.Release()
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("commit of a blob with content type %q: %v, want ErrInvalid", ct, err)
		}
	}
	if _, err := s.OpenBlob(ctx, "photos", "y"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused blob was stored: %v", err)
	}
	ok := "text/plain;\tcharset=utf-8"
	if _, _, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "x", ContentType: ok, Body: strings.NewReader("data")}, nil); err != nil {
		t.Fatalf("content type %q: %v", ok, err)
	}
}

// TestBlobNameC1Controls: names with the C1 control characters (U+0080 to
// U+009F; U+009B is a terminal's CSI, and `moongate blob ls` prints names)
// are refused like C0 ones, as docs/blobs.md says.
func TestBlobNameC1Controls(t *testing.T) {
	for _, name := range []string{"a\u0085b", "x\u009b31mred", "\u0080", "a\u009f"} {
		if err := ValidBlobName(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidBlobName(%q) = %v, want ErrInvalid", name, err)
		}
	}
	for _, name := range []string{"caf\u00e9", "\u00a0x", "\u4e2d/\U0001f600"} {
		if err := ValidBlobName(name); err != nil {
			t.Errorf("ValidBlobName(%q) = %v", name, err)
		}
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestBlobDeriveInboxEntries(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, nil)
	var seen BlobInfo
	derive := func(bi BlobInfo) []InboxEntry {
		seen = bi
		return []InboxEntry{{Function: "thumb", Key: bi.Bucket + "/" + bi.Name, Event: []byte(bi.SHA256)}}
	}
	bi, entries, err := s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "x.jpg", Body: strings.NewReader("jpeg"), DeriveMax: 1}, derive)
	if err != nil {
		t.Fatal(err)
	}
	if seen != bi || len(entries) != 1 || entries[0].Seq == 0 {
		t.Fatalf("derived %+v from %+v (%+v)", entries, seen, bi)
	}
	pend, err := s.InboxPending(ctx, 0, 10)
	if err != nil || len(pend) != 1 || string(pend[0].Event) != bi.SHA256 {
		t.Fatalf("inbox = %+v, %v", pend, err)
	}
	// More entries than DeriveMax: refused, nothing applied.
	_, _, err = s.PutBlob(ctx, BlobPut{Bucket: "photos", Name: "y.jpg", Body: strings.NewReader("jpeg2")}, derive)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("derive past DeriveMax: %v", err)
	}
	if _, err := s.StatBlob(ctx, "photos", "y.jpg"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused put visible: %v", err)
	}
}

func TestBlobRetention(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, map[string]Bucket{"snap": {MaxAge: time.Hour}, "keep": {}})
	putBlob(t, s, "snap", "old", []byte("o"))
	putBlob(t, s, "keep", "old", []byte("k"))
	// Age the blob: rewrite its metadata with an old creation time.
	bi, sum, err := s.statBlob(ctx, "snap", "old")
	if err != nil {
		t.Fatal(err)
	}
	bi.Created = time.Now().Add(-2 * time.Hour).UnixMilli()
	if err := s.db.Update(func(txn *badgerTxn) error { return txn.Set(blobKey("snap", "old"), encodeBlob(&bi, sum)) }); err != nil {
		t.Fatal(err)
	}
	putBlob(t, s, "snap", "new", []byte("n"))
	n, err := s.RunRetention(ctx)
	if err != nil || n != 1 {
		t.Fatalf("retention dropped %d, %v; want 1", n, err)
	}
	if _, err := s.StatBlob(ctx, "snap", "old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old blob kept: %v", err)
	}
	for _, k := range [][2]string{{"snap", "new"}, {"keep", "old"}} {
		if _, err := s.StatBlob(ctx, k[0], k[1]); err != nil {
			t.Fatalf("%v: %v", k, err)
		}
	}
	if files := objectFiles(t, s); len(files) != 2 {
		t.Fatalf("files after retention: %v", files)
	}
}

// TestBlobCleanupAtOpen checks that what a crash can leave (a temporary
// file, an object staged but never committed) is removed at Open, and
// committed blobs are kept.
func TestBlobCleanupAtOpen(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, nil)
	putBlob(t, s, "photos", "kept", []byte("kept"))
	sb, err := s.StageBlob(ctx, "photos", strings.NewReader("staged, never committed"), 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = sb // a crash: never released
	if err := os.WriteFile(filepath.Join(s.opts.BlobDir, "tmp", "partial"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := len(objectFiles(t, s)); n != 3 {
		t.Fatalf("%d files before reopen", n)
	}
	s = reopen(t, s)
	files := objectFiles(t, s)
	if len(files) != 1 || !strings.HasPrefix(files[0], "objects/") {
		t.Fatalf("files after reopen: %v", files)
	}
	if b, err := s.OpenBlob(ctx, "photos", "kept"); err != nil {
		t.Fatal(err)
	} else {
		b.Close()
	}
}

// FuzzBlobName checks that a name ValidBlobName accepts can never leave the
// bucket's directory when joined as a path, and never panics.
func FuzzBlobName(f *testing.F) {
	for _, s := range []string{"a.jpg", "cam/1/x.jpg", "../x", "/abs", "a\x00", `a\b`, "a//b", ".", "..", "ü/ß", "a/./b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidBlobName(name)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		root := "/bucket"
		p := filepath.Join(root, name)
		if !strings.HasPrefix(p, root+"/") || filepath.Clean(root+"/"+name) != root+"/"+name {
			t.Fatalf("accepted %q escapes or is not canonical: %q", name, p)
		}
		if strings.ContainsAny(name, "\x00\\") || len(name) > maxBlobName {
			t.Fatalf("accepted %q", name)
		}
	})
}

// TestBlobDiskGuard: a blob write stops once the disk falls below the
// reserve, leaving nothing behind.
func TestBlobDiskGuard(t *testing.T) {
	var free atomic.Uint64
	free.Store(1 << 40)
	s := openTest(t, Options{Buckets: map[string]Bucket{"b": {}}, DiskReserve: 64 << 20,
		FreeSpace: func(string) (uint64, error) { return free.Load(), nil }})
	r := &slowFill{n: 8 << 20, at: 3 << 20, fill: func() { free.Store(1 << 20) }}
	_, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "b", Name: "x", Body: r}, nil)
	if !errors.Is(err, ErrStoreFull) {
		t.Fatalf("PutBlob on a filling disk: %v", err)
	}
	if files := objectFiles(t, s); len(files) != 0 {
		t.Fatalf("left %v", files)
	}
	if _, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "b", Name: "y", Body: strings.NewReader("y")}, nil); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("PutBlob on a full disk: %v", err)
	}
	// Deleting frees space: it works on a full disk.
	free.Store(1 << 40)
	putBlob(t, s, "b", "z", []byte("z"))
	free.Store(1 << 20)
	waitForFull := time.Now().Add(5 * time.Second)
	for {
		_, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "b", Name: "w", Body: strings.NewReader("w")}, nil)
		if errors.Is(err, ErrStoreFull) {
			break
		}
		if time.Now().After(waitForFull) {
			t.Fatalf("put on a full disk: %v", err)
		}
	}
	if err := s.DeleteBlob(context.Background(), "b", "z"); err != nil {
		t.Fatalf("delete on a full disk: %v", err)
	}
}

// slowFill yields n zero bytes and calls fill once at offset at.
type slowFill struct {
	n, off, at int
	fill       func()
}

func (r *slowFill) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if r.off >= r.at && r.fill != nil {
		r.fill()
		r.fill = nil
	}
	m := min(len(p), r.n-r.off, 64<<10)
	clear(p[:m])
	r.off += m
	return m, nil
}

// BenchmarkPutBlob stores blobs of 64 KiB and 4 MiB (distinct contents,
// durable: file fsync, rename, directory fsync, one Badger commit) and
// reads them back in 1 MiB chunks.
func BenchmarkPutBlob(b *testing.B) {
	for _, size := range []int{64 << 10, 4 << 20} {
		b.Run(fmt.Sprintf("put-%dKiB", size>>10), func(b *testing.B) {
			s := openTest(b, Options{Buckets: map[string]Bucket{"b": {}}})
			data := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				binary.BigEndian.PutUint64(data, uint64(i)) // distinct objects
				if _, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "b", Name: "n" + strconv.Itoa(i), Body: bytes.NewReader(data)}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("read-1MiB-chunks", func(b *testing.B) {
		s := openTest(b, Options{Buckets: map[string]Bucket{"b": {}}})
		putBlobB(b, s, make([]byte, 8<<20))
		b.SetBytes(8 << 20)
		b.ReportAllocs()
		for b.Loop() {
			for off := int64(0); off < 8<<20; off += 1 << 20 {
				if _, _, err := s.ReadBlob(context.Background(), "b", "x", off, 1<<20); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func putBlobB(b *testing.B, s *Store, data []byte) {
	if _, _, err := s.PutBlob(context.Background(), BlobPut{Bucket: "b", Name: "x", Body: bytes.NewReader(data)}, nil); err != nil {
		b.Fatal(err)
	}
}

// TestBlobRetentionManyExpired: more expired blobs than one transaction
// takes are deleted over several commits (on the low-memory profile, 256
// deletes in one commit were refused as too large on every pass, and the
// error stopped the rest of retention too).
func TestBlobRetentionManyExpired(t *testing.T) {
	ctx := context.Background()
	s := blobStore(t, map[string]Bucket{"snap": {MaxAge: time.Hour}})
	const n = 300
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	for i := range n {
		name := fmt.Sprintf("cam/%04d.jpg", i)
		putBlob(t, s, "snap", name, []byte(name))
		bi, sum, err := s.statBlob(ctx, "snap", name)
		if err != nil {
			t.Fatal(err)
		}
		bi.Created = old
		if err := s.db.Update(func(txn *badgerTxn) error { return txn.Set(blobKey("snap", name), encodeBlob(&bi, sum)) }); err != nil {
			t.Fatal(err)
		}
	}
	if per := int(s.maxTxnSize / 2 / blobOpEst); per >= n {
		t.Fatalf("one transaction takes %d deletes: the test needs more blobs", per)
	}
	dropped, err := s.RunRetention(ctx)
	if err != nil || dropped != n {
		t.Fatalf("retention dropped %d, %v; want %d", dropped, err, n)
	}
	if c := s.BlobStats()["snap"].Count; c != 0 {
		t.Fatalf("%d expired blobs left", c)
	}
}

// TestListBlobsPageBounded: a page of blobs ends at MaxPageBytes of names
// and metadata, like the other lists (10,000 names of 1 KiB were about
// 20 MB for one read-token request); paging still lists every blob once.
func TestListBlobsPageBounded(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, Buckets: map[string]Bucket{"b": {}}})
	const n = 1500
	for i := range n {
		name := fmt.Sprintf("%04d-%s", i, strings.Repeat("n", 1000))
		if _, _, err := s.PutBlob(ctx, BlobPut{Bucket: "b", Name: name, Body: strings.NewReader("")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	page, cursor, err := s.ListBlobs(ctx, "b", "", MaxQueryLimit, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page) >= n || cursor == "" || len(page)*1000 > MaxPageBytes+4096 {
		t.Fatalf("first page: %d blobs, cursor %q", len(page), cursor)
	}
	seen := len(page)
	for cursor != "" {
		page, cursor, err = s.ListBlobs(ctx, "b", "", MaxQueryLimit, cursor)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(page)
	}
	if seen != n {
		t.Fatalf("paging listed %d blobs, want %d", seen, n)
	}
}

package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	badger "github.com/dgraph-io/badger/v4"
)

// Blobs (file uploads) live next to the database: their contents are files
// under Options.BlobDir, content-addressed (objects/<sha256[:2]>/<sha256>),
// their metadata in Badger. A blob is stored in two steps:
//
//  1. StageBlob streams the content to tmp/<random> while hashing and
//     counting it (never whole in memory), refuses it past the bucket's size
//     limit (ErrTooLarge, the temporary file removed), fsyncs it and renames
//     it into objects/ (fsyncing the directory). The object is pinned: it is
//     not removed while the StagedBlob is held.
//  2. One Commit (BlobOp in Commit.Blobs) writes the metadata key, the
//     object's reference count and, through Commit.Chain, the inbox entries
//     of the functions the upload triggers, atomically.
//
// A crash between the two leaves an object no metadata refers to: Open
// removes those and everything in tmp/. So a half-written blob is never
// visible. Deleting or replacing a blob decrements the reference count of
// its object in the commit; an object whose count reaches zero is removed
// after the commit.

// Bucket bounds one blob bucket (MaxSize 0: DefaultBlobMaxSize, or MaxBytes
// when that is smaller). The zero value means DefaultBlobMaxSize per
// blob and no total or age bound.
type Bucket struct {
	MaxSize  int64         // bytes of one blob (default DefaultBlobMaxSize)
	MaxBytes int64         // bytes of all the bucket's blobs; 0 = unbounded (ErrQuota past it)
	MaxAge   time.Duration // blobs older than this are deleted by retention; 0 = kept
	// Sync names the outboxes (sync targets) every blob put in the bucket
	// is sent to: the put's commit appends a BlobSend to each, holding a
	// reference on the object until the entry is acknowledged or dropped
	// (see blobsend.go).
	Sync []string
}

// maxContentType bounds a blob's content type.
const maxContentType = 256

// ValidContentType reports whether ct can be a blob's content type: at
// most 256 bytes, and a valid HTTP header field value (no control
// character but tab), since it is sent as the Content-Type header when the
// blob is downloaded or synced. The empty string is valid (it reads as
// application/octet-stream). It returns an error wrapping ErrInvalid.
func ValidContentType(ct string) error {
	if len(ct) > maxContentType {
		return fmt.Errorf("%w: content type longer than %d bytes", ErrInvalid, maxContentType)
	}
	for i := 0; i < len(ct); i++ {
		if c := ct[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("%w: content type contains a control character (byte %d)", ErrInvalid, i)
		}
	}
	return nil
}

// DefaultBlobMaxSize is the size limit of one blob when Bucket.MaxSize is 0.
const DefaultBlobMaxSize = 64 << 20

// BlobInfo is the metadata of one stored blob.
type BlobInfo struct {
	Bucket      string
	Name        string
	Size        int64
	ContentType string
	SHA256      string // lower-case hex
	Created     int64  // ms since the epoch, when committed
}

// BlobOp is one blob change of a Commit: a put of a staged object, or a
// delete (absent is not an error).
type BlobOp struct {
	Bucket      string
	Name        string
	Delete      bool
	ContentType string // put
	// Object is the put's content, from StageBlob. Release it only after
	// Commit returned without a context error (a commit given up on may
	// still apply: commit with a context that does not end, as the gateway
	// does).
	Object *StagedBlob

	createdBefore int64 // delete only if created before this (ms; retention)
}

// StagedBlob is an object written to disk by StageBlob and pinned until
// Release. It is safe for concurrent use; its zero value is not valid.
type StagedBlob struct {
	s        *Store
	bucket   string
	sum      [32]byte
	size     int64
	released bool
}

// Size is the object's size in bytes.
func (sb *StagedBlob) Size() int64 { return sb.size }

// SHA256 is the object's hash, in lower-case hex.
func (sb *StagedBlob) SHA256() string { return hex.EncodeToString(sb.sum[:]) }

// Release unpins the object; if no committed blob refers to it, it is
// removed. Call it once the commit using it returned (whatever the result).
// Calling it twice is harmless.
func (sb *StagedBlob) Release() {
	s := sb.s
	s.objMu.Lock()
	defer s.objMu.Unlock()
	if sb.released {
		return
	}
	sb.released = true
	if s.pins[sb.sum]--; s.pins[sb.sum] <= 0 {
		delete(s.pins, sb.sum)
		s.removeUnpinnedLocked(sb.sum)
	}
}

// removeUnpinnedLocked removes the object of sum, no longer pinned, unless
// a committed blob refers to it. With DurabilityInterval the commit that
// took its last reference away may not be synced yet (a power loss would
// bring the reference back): the object is then removed after the next
// sync, if still unreferenced, like the objects commits free
// (queueUnsyncedFreed). s.objMu must be held.
func (s *Store) removeUnpinnedLocked(sum [32]byte) {
	if !s.freedAfterSync() {
		s.removeIfUnreferencedLocked(sum)
		return
	}
	s.unsyncedMu.Lock()
	s.unsyncedFreed = append(s.unsyncedFreed, sum)
	s.unsyncedMu.Unlock()
	s.dirty.Store(true) // the sync loop runs
}

// BlobPut is an upload for PutBlob.
type BlobPut struct {
	Bucket      string
	Name        string
	ContentType string
	Body        io.Reader
	// DeriveMax bounds the number of inbox entries derive may return
	// (ErrInvalid past it).
	DeriveMax int
	// Staged, when set, is called once the body is on disk, right before
	// the commit, and gives DeriveMax and derive then (overriding both): a
	// caller whose routing may change during a long upload reads it at the
	// end.
	Staged func() (deriveMax int, derive func(BlobInfo) []InboxEntry)
}

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// maxBlobName bounds a blob name in bytes.
const maxBlobName = 1024

// ValidBucket reports whether s is a valid bucket name: [a-z0-9][a-z0-9_-]{0,62}.
func ValidBucket(s string) bool { return bucketRE.MatchString(s) }

// ValidBlobName checks a blob name: 1 to 1024 bytes of UTF-8, '/'-separated
// segments that are neither empty nor "." nor "..", no backslash and no
// control character (NUL included). A name that fails is an ErrInvalid.
func ValidBlobName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%w: blob name %q: %s", ErrInvalid, clipName(name), why) }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxBlobName:
		return bad(fmt.Sprintf("longer than %d bytes", maxBlobName))
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case strings.HasPrefix(name, "/"):
		return bad("absolute (leading '/')")
	case strings.ContainsRune(name, '\\'):
		return bad("contains a backslash")
	}
	for _, r := range name {
		if unicode.IsControl(r) { // C0, DEL and C1 (U+0080-U+009F)
			return bad("contains a control character")
		}
	}
	for seg := range strings.SplitSeq(name, "/") {
		switch seg {
		case "":
			return bad("empty path segment")
		case ".", "..":
			return bad("'.' or '..' path segment")
		}
	}
	return nil
}

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func (s *Store) bucket(name string) (Bucket, error) {
	if !ValidBucket(name) {
		return Bucket{}, fmt.Errorf("%w: bucket name %q", ErrInvalid, clipName(name))
	}
	b, ok := s.opts.Buckets[name]
	if !ok {
		return Bucket{}, fmt.Errorf("%w: bucket %q", ErrNotFound, name)
	}
	if b.MaxSize <= 0 {
		b.MaxSize = DefaultBlobMaxSize
		if b.MaxBytes > 0 && b.MaxBytes < b.MaxSize {
			// No blob larger than the whole bucket: refused up front,
			// not after being streamed in (ErrQuota).
			b.MaxSize = b.MaxBytes
		}
	}
	return b, nil
}

// Key layout: blob metadata under 'b' + bucket + 0 + name (so a bucket's
// blobs are a key range in name order), object reference counts under
// 'c' + sha256 (32 bytes).
const (
	pBlob    = 'b'
	pBlobRef = 'c'
)

// blobOpEst is the transaction size Commit reserves for one blob
// operation: its metadata entry (the longest name) and two references.
var blobOpEst = entryEst(2+2*maxBlobName+64, 300) + 2*entryEst(33, 8)

func blobKey(bucket, name string) []byte {
	k := make([]byte, 0, 2+len(bucket)+len(name))
	k = append(k, pBlob)
	k = append(k, bucket...)
	k = append(k, 0)
	return append(k, name...)
}

func blobRefKey(sum [32]byte) []byte { return append([]byte{pBlobRef}, sum[:]...) }

const tagBlob = 7

func encodeBlob(bi *BlobInfo, sum [32]byte) []byte {
	e := enc{b: make([]byte, 0, 64+len(bi.ContentType))}
	e.tag(tagBlob)
	e.i(bi.Created) // first, like every value: valueTime reads it
	e.i(bi.Size)
	e.s(bi.ContentType)
	e.b = append(e.b, sum[:]...)
	return e.b
}

func decodeBlob(bucket, name string, v []byte) (BlobInfo, [32]byte, error) {
	var sum [32]byte
	d := dec{b: v}
	d.tag(tagBlob, "blob")
	bi := BlobInfo{Bucket: bucket, Name: name}
	bi.Created = d.i()
	bi.Size = d.i()
	bi.ContentType = d.s()
	if d.err == nil {
		if len(d.b) != 32 {
			return bi, sum, fmt.Errorf("%w: blob %s/%s: bad hash", ErrCorrupt, bucket, name)
		}
		copy(sum[:], d.b)
		d.b = d.b[32:]
	}
	if err := d.end("blob"); err != nil {
		return bi, sum, err
	}
	bi.SHA256 = hex.EncodeToString(sum[:])
	return bi, sum, nil
}

func (s *Store) objectPath(sum [32]byte) string {
	h := hex.EncodeToString(sum[:])
	return filepath.Join(s.opts.BlobDir, "objects", h[:2], h)
}

// StageBlob writes r to disk as an object of bucket (see the overview
// above). It reads r to the end, refusing more than the bucket's MaxSize
// (or maxSize if smaller and positive) with ErrTooLarge; on any error
// nothing is left on disk. Errors: ErrNotFound (unknown bucket), ErrInvalid,
// ErrTooLarge, ErrStoreFull, ErrClosed, or the reader's or the disk's.
func (s *Store) StageBlob(ctx context.Context, bucket string, r io.Reader, maxSize int64) (*StagedBlob, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	bk, err := s.bucket(bucket)
	if err != nil {
		return nil, err
	}
	limit := bk.MaxSize
	if maxSize > 0 && maxSize < limit {
		limit = maxSize
	}
	guard := &diskGuard{s: s}
	if err := guard.check(); err != nil {
		return nil, err
	}
	tmpDir := filepath.Join(s.opts.BlobDir, "tmp")
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(tmpDir, hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create blob file: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := sha256.New()
	guard.w = f
	n, err := io.Copy(io.MultiWriter(guard, h), &ctxReader{ctx: ctx, r: io.LimitReader(r, limit+1)})
	if err != nil {
		return nil, fmt.Errorf("store: write blob: %w", err)
	}
	if n > limit {
		what := "the bucket's max_size"
		if limit < bk.MaxSize {
			what = "the limit of this write"
		}
		return nil, fmt.Errorf("%w: blob over %s of %d bytes (bucket %s)", ErrTooLarge, what, limit, bucket)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("store: sync blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: close blob: %w", err)
	}
	sb := &StagedBlob{s: s, bucket: bucket, size: n}
	h.Sum(sb.sum[:0])
	dst := s.objectPath(sb.sum)
	s.objMu.Lock()
	defer s.objMu.Unlock()
	fanout := filepath.Dir(dst)
	_, statErr := os.Stat(fanout)
	if err := os.MkdirAll(fanout, 0o700); err != nil {
		return nil, fmt.Errorf("store: blob directory: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// A new objects/xx directory: its entry in objects/ must be
		// durable too, or the object it holds may vanish with it.
		if err := syncDir(filepath.Dir(fanout)); err != nil {
			return nil, err
		}
	}
	// Same content already stored: the existing object is the same bytes.
	if err := os.Rename(tmp, dst); err != nil {
		return nil, fmt.Errorf("store: move blob into place: %w", err)
	}
	if err := syncDir(fanout); err != nil {
		// In place but not known durable: not pinned, so not kept unless
		// something refers to it.
		s.removeUnpinnedLocked(sb.sum)
		return nil, err
	}
	ok = true
	s.pins[sb.sum]++
	return sb, nil
}

// diskGuardEvery is how many bytes a blob write goes between two reads of
// the free disk space.
const diskGuardEvery = 1 << 20

// diskGuard stops a blob write once the free space of the data directory
// falls below Options.DiskReserve (ErrStoreFull): blobs share the disk with
// Badger, which must never meet a full disk.
type diskGuard struct {
	s     *Store
	w     io.Writer
	since int
}

func (g *diskGuard) check() error {
	s := g.s
	if s.opts.DiskReserve < 0 || (s.opts.InMemory && s.opts.FreeSpace == nil) {
		return nil
	}
	if s.full.Load() {
		return fmt.Errorf("%w: %s", ErrStoreFull, s.opts.Dir)
	}
	free, err := s.freeSpace()
	if err != nil {
		return nil // unknown: the committer's guard logs it
	}
	if free < uint64(s.opts.DiskReserve) {
		return fmt.Errorf("%w: %s has %d bytes free, reserve %d", ErrStoreFull, s.opts.Dir, free, s.opts.DiskReserve)
	}
	return nil
}

func (g *diskGuard) Write(p []byte) (int, error) {
	g.since += len(p)
	if g.since >= diskGuardEvery {
		g.since = 0
		if err := g.check(); err != nil {
			return 0, err
		}
	}
	return g.w.Write(p)
}

// ctxReader stops a copy once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync %s: %w", dir, err)
	}
	return nil
}

// removeIfUnreferencedLocked removes the object of sum unless it is pinned
// or a committed blob refers to it. s.objMu must be held.
func (s *Store) removeIfUnreferencedLocked(sum [32]byte) {
	if s.pins[sum] > 0 {
		return
	}
	referenced := true
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(blobRefKey(sum))
		if errors.Is(err, badger.ErrKeyNotFound) {
			referenced = false
			return nil
		}
		return err
	})
	if err != nil || referenced {
		return
	}
	if err := os.Remove(s.objectPath(sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("remove unreferenced blob object", "sha256", hex.EncodeToString(sum[:]), "err", err)
	}
}

// PutBlob stores one blob: it stages p.Body (StageBlob) and commits its
// metadata, replacing a blob of the same name. derive, when not nil, is
// called inside the commit with the blob's final metadata and returns the
// inbox entries to append in the same atomic write (the functions the
// upload triggers; see Commit.Chain for its rules); they are returned with
// their sequences. Errors: those of StageBlob and Commit, ErrQuota when the
// bucket's MaxBytes would be exceeded.
func (s *Store) PutBlob(ctx context.Context, p BlobPut, derive func(BlobInfo) []InboxEntry) (BlobInfo, []InboxEntry, error) {
	if !ValidBucket(p.Bucket) {
		return BlobInfo{}, nil, fmt.Errorf("%w: bucket name %q", ErrInvalid, clipName(p.Bucket))
	}
	if err := ValidBlobName(p.Name); err != nil {
		return BlobInfo{}, nil, err
	}
	if _, err := s.bucket(p.Bucket); err != nil {
		return BlobInfo{}, nil, err
	}
	if err := ValidContentType(p.ContentType); err != nil {
		// Refused before the body is read (the commit refuses it too).
		return BlobInfo{}, nil, err
	}
	sb, err := s.StageBlob(ctx, p.Bucket, p.Body, 0)
	if err != nil {
		return BlobInfo{}, nil, err
	}
	defer sb.Release()
	if p.Staged != nil {
		p.DeriveMax, derive = p.Staged()
	}
	var info BlobInfo
	c := &Commit{Blobs: []BlobOp{{Bucket: p.Bucket, Name: p.Name, ContentType: p.ContentType, Object: sb}}}
	c.ChainMax = max(p.DeriveMax, 0)
	c.Chain = func(ch Change) []InboxEntry {
		if ch.Blob == nil {
			return nil
		}
		info = *ch.Blob
		if derive == nil {
			return nil
		}
		return derive(*ch.Blob)
	}
	// Not abandoned once the body is on disk: a Commit given up on a
	// context error may still apply, and the object must stay pinned
	// until it has.
	res, err := s.Commit(context.WithoutCancel(ctx), c)
	if err != nil {
		return BlobInfo{}, nil, err
	}
	return info, res.Inbox, nil
}

// DeleteBlob deletes one blob (ErrNotFound if absent) and removes its
// object once nothing refers to it.
func (s *Store) DeleteBlob(ctx context.Context, bucket, name string) error {
	if _, err := s.StatBlob(ctx, bucket, name); err != nil {
		return err
	}
	_, err := s.Commit(ctx, &Commit{Blobs: []BlobOp{{Bucket: bucket, Name: name, Delete: true}}})
	return err
}

// StatBlob returns the metadata of one blob. Errors: ErrNotFound (unknown
// bucket or blob), ErrInvalid.
func (s *Store) StatBlob(ctx context.Context, bucket, name string) (BlobInfo, error) {
	bi, _, err := s.statBlob(ctx, bucket, name)
	return bi, err
}

func (s *Store) statBlob(ctx context.Context, bucket, name string) (BlobInfo, [32]byte, error) {
	if _, err := s.bucket(bucket); err != nil {
		return BlobInfo{}, [32]byte{}, err
	}
	if err := ValidBlobName(name); err != nil {
		return BlobInfo{}, [32]byte{}, err
	}
	var bi BlobInfo
	var sum [32]byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get(blobKey(bucket, name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: blob %s/%s", ErrNotFound, bucket, name)
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			var err error
			bi, sum, err = decodeBlob(bucket, name, v)
			return err
		})
	})
	return bi, sum, err
}

// Blob is an open blob: its metadata and its content. It is safe for
// concurrent use (ReadAt); Close it when done. A blob deleted or replaced
// while open stays readable through it.
type Blob struct {
	Info BlobInfo
	f    *os.File
}

// ReadAt implements io.ReaderAt over the blob's content.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// Close releases the blob's file.
func (b *Blob) Close() error { return b.f.Close() }

// Size is the blob's size (Info.Size).
func (b *Blob) Size() int64 { return b.Info.Size }

// OpenBlob opens one blob for reading. Errors: ErrNotFound, ErrInvalid,
// ErrCorrupt (the object file is missing).
func (s *Store) OpenBlob(ctx context.Context, bucket, name string) (*Blob, error) {
	for range 3 {
		bi, sum, err := s.statBlob(ctx, bucket, name)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(s.objectPath(sum))
		if errors.Is(err, fs.ErrNotExist) {
			// Replaced or deleted between the two reads: look again.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("store: open blob: %w", err)
		}
		return &Blob{Info: bi, f: f}, nil
	}
	return nil, fmt.Errorf("%w: object of blob %s/%s is missing", ErrCorrupt, bucket, name)
}

// MaxBlobRead bounds one ReadBlob call.
const MaxBlobRead = 16 << 20

// ReadBlob reads up to n bytes (at most MaxBlobRead) of a blob from offset
// off: fewer at the end, none past it. It also returns the blob's size.
// It implements luavm's BlobReader. Errors: those of OpenBlob, ErrInvalid
// for a negative offset or length.
func (s *Store) ReadBlob(ctx context.Context, bucket, name string, off int64, n int) ([]byte, int64, error) {
	if off < 0 || n < 0 {
		return nil, 0, fmt.Errorf("%w: negative offset or length", ErrInvalid)
	}
	b, err := s.OpenBlob(ctx, bucket, name)
	if err != nil {
		return nil, 0, err
	}
	defer b.Close()
	size := b.Info.Size
	if off >= size {
		return []byte{}, size, nil
	}
	n = int(min(int64(min(n, MaxBlobRead)), size-off))
	buf := make([]byte, n)
	m, err := b.ReadAt(buf, off)
	if err != nil && !(errors.Is(err, io.EOF) && m == n) {
		return nil, size, fmt.Errorf("store: read blob: %w", err)
	}
	return buf[:m], size, nil
}

// ListBlobs returns up to limit (default 100, max MaxQueryLimit) blobs of
// bucket whose name starts with prefix, in name order, after the opaque
// cursor, and the cursor of the next page ("" at the end). A page also
// ends once it holds MaxPageBytes of names and metadata.
func (s *Store) ListBlobs(ctx context.Context, bucket, prefix string, limit int, cursor string) ([]BlobInfo, string, error) {
	if _, err := s.bucket(bucket); err != nil {
		return nil, "", err
	}
	if len(prefix) > maxBlobName || strings.ContainsRune(prefix, 0) {
		return nil, "", fmt.Errorf("%w: blob name prefix", ErrInvalid)
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxQueryLimit)
	base := blobKey(bucket, "")
	p := blobKey(bucket, prefix)
	start := p
	if cursor != "" {
		ck, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(ck) < 1 || ck[0] != 'b' || !strings.HasPrefix(string(ck[1:]), prefix) {
			return nil, "", fmt.Errorf("%w: blob cursor", ErrBadCursor)
		}
		start = append(blobKey(bucket, string(ck[1:])), 0)
	}
	var out []BlobInfo
	var next string
	size := 0 // names and values of the page: it ends at MaxPageBytes, like the other lists
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: min(limit, 100)})
		defer it.Close()
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			name := string(item.Key()[len(base):])
			if len(out) == limit || size >= MaxPageBytes {
				next = base64.RawURLEncoding.EncodeToString(append([]byte{'b'}, out[len(out)-1].Name...))
				return nil
			}
			if err := item.Value(func(v []byte) error {
				bi, _, err := decodeBlob(bucket, name, v)
				out = append(out, bi)
				size += len(name) + len(v)
				return err
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// BucketStats is the usage of one bucket.
type BucketStats struct {
	Count int64
	Bytes int64
}

// BlobStats returns the usage of every configured bucket.
func (s *Store) BlobStats() map[string]BucketStats {
	c := s.counters()
	out := make(map[string]BucketStats, len(s.opts.Buckets))
	for name := range s.opts.Buckets {
		q := c.Blobs[name]
		out[name] = BucketStats{Count: q.Count, Bytes: q.Bytes}
	}
	return out
}

// ---- commit ----

// blobChange is one applied blob op, computed before anything is mutated.
type blobChange struct {
	key  []byte
	val  []byte // nil: delete
	info BlobInfo
	sum  [32]byte // put: the object
}

// applyBlobs computes the blob ops of c over what is stored and returns the
// writes, the reference-count changes and the new blobs (for Chain). It
// does not mutate b.
func (s *Store) applyBlobs(b *batch, c *Commit) ([]blobChange, map[[32]byte]int64, map[string]queue, error) {
	if len(c.Blobs) == 0 {
		return nil, nil, nil, nil
	}
	type cur struct {
		size    int64
		sum     [32]byte
		created int64
		exists  bool
	}
	overlay := map[string]cur{}
	refs := map[[32]byte]int64{}
	buckets := map[string]queue{}
	var out []blobChange
	for i := range c.Blobs {
		op := &c.Blobs[i]
		bk, err := s.bucket(op.Bucket)
		if err != nil {
			// An unknown bucket makes the whole commit invalid (a
			// permanent refusal, IsPermanent), not a lookup that failed.
			if errors.Is(err, ErrNotFound) {
				err = fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			return nil, nil, nil, err
		}
		if err := ValidBlobName(op.Name); err != nil {
			return nil, nil, nil, err
		}
		k := blobKey(op.Bucket, op.Name)
		old, ok := overlay[string(k)]
		if !ok {
			v, found, err := b.get(k)
			if err != nil {
				return nil, nil, nil, err
			}
			if found {
				bi, sum, err := decodeBlob(op.Bucket, op.Name, v)
				if err != nil {
					return nil, nil, nil, fatal(err)
				}
				old = cur{size: bi.Size, sum: sum, created: bi.Created, exists: true}
			}
		}
		if op.Delete && op.createdBefore > 0 && (!old.exists || old.created >= op.createdBefore) {
			continue // replaced since retention looked: keep it
		}
		q, ok := buckets[op.Bucket]
		if !ok {
			q = b.ctr.Blobs[op.Bucket]
		}
		if old.exists {
			refs[old.sum]--
			q.Count--
			q.Bytes -= old.size
		}
		if op.Delete {
			overlay[string(k)] = cur{}
			buckets[op.Bucket] = q
			if old.exists {
				out = append(out, blobChange{key: k})
			}
			continue
		}
		sb := op.Object
		if sb == nil || sb.s != s || sb.released {
			return nil, nil, nil, fmt.Errorf("%w: blob put without a staged object", ErrInvalid)
		}
		if sb.size > bk.MaxSize {
			return nil, nil, nil, fmt.Errorf("%w: blob of %d bytes, bucket %s allows %d", ErrTooLarge, sb.size, op.Bucket, bk.MaxSize)
		}
		if err := ValidContentType(op.ContentType); err != nil {
			return nil, nil, nil, err
		}
		q.Count++
		q.Bytes += sb.size
		if bk.MaxBytes > 0 && q.Bytes > bk.MaxBytes && sb.size > old.size {
			b.ctr.Rejected["bucket:"+op.Bucket]++
			return nil, nil, nil, fmt.Errorf("%w: bucket %s would hold %d bytes, max_bytes %d", ErrQuota, op.Bucket, q.Bytes, bk.MaxBytes)
		}
		refs[sb.sum]++
		buckets[op.Bucket] = q
		overlay[string(k)] = cur{size: sb.size, sum: sb.sum, created: b.now, exists: true}
		info := BlobInfo{Bucket: op.Bucket, Name: op.Name, Size: sb.size, ContentType: op.ContentType,
			SHA256: sb.SHA256(), Created: b.now}
		out = append(out, blobChange{key: k, val: encodeBlob(&info, sb.sum), info: info, sum: sb.sum})
	}
	return out, refs, buckets, nil
}

// writeBlobs stages the blob writes and their reference-count changes
// (applied with the request's others, see applyRefs). It runs in the
// mutation phase.
func (b *batch) writeBlobs(changes []blobChange, refs map[[32]byte]int64, buckets map[string]queue) {
	for _, ch := range changes {
		if ch.val == nil {
			b.del(ch.key)
		} else {
			b.set(ch.key, ch.val)
		}
	}
	for sum, d := range refs {
		b.addRef(sum, d)
	}
	if b.ctr.Blobs == nil {
		b.ctr.Blobs = map[string]queue{}
	}
	for name, q := range buckets {
		if q.Count <= 0 {
			q = queue{}
		}
		b.ctr.Blobs[name] = q
	}
}

// removeFreedIn is removeFreed after an interval sync: an object is
// removed only if no blob refers to it in snap, the state the sync
// covers, either (a delete committed after snap may not be durable).
func (s *Store) removeFreedIn(freed [][32]byte, snap *badger.Txn) {
	if len(freed) == 0 {
		return
	}
	s.objMu.Lock()
	defer s.objMu.Unlock()
	for _, sum := range freed {
		if _, err := snap.Get(blobRefKey(sum)); !errors.Is(err, badger.ErrKeyNotFound) {
			continue // referenced then (or unreadable): kept
		}
		s.removeIfUnreferencedLocked(sum)
	}
}

// removeFreed removes the objects a commit left unreferenced.
func (s *Store) removeFreed(freed [][32]byte) {
	if len(freed) == 0 {
		return
	}
	s.objMu.Lock()
	defer s.objMu.Unlock()
	for _, sum := range freed {
		s.removeIfUnreferencedLocked(sum)
	}
}

// ---- open and retention ----

// cleanBlobs prepares BlobDir at Open: it empties tmp/ (uploads cut short
// by a crash) and removes objects that no metadata refers to (staged but
// never committed, or freed by a commit whose removal a crash prevented).
func (s *Store) cleanBlobs() error {
	dir := s.opts.BlobDir
	tmp := filepath.Join(dir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("store: clean %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("store: create %s: %w", tmp, err)
	}
	objects := filepath.Join(dir, "objects")
	if err := os.MkdirAll(objects, 0o700); err != nil {
		return fmt.Errorf("store: create %s: %w", objects, err)
	}
	removed := 0
	err := filepath.WalkDir(objects, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, herr := hex.DecodeString(d.Name())
		if herr != nil || len(raw) != 32 {
			s.log.Warn("unexpected file among blob objects", "path", p)
			return nil
		}
		var sum [32]byte
		copy(sum[:], raw)
		referenced := true
		if err := s.db.View(func(txn *badger.Txn) error {
			_, err := txn.Get(blobRefKey(sum))
			if errors.Is(err, badger.ErrKeyNotFound) {
				referenced = false
				return nil
			}
			return err
		}); err != nil {
			return err
		}
		if !referenced {
			removed++
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: clean blob objects: %w", err)
	}
	if removed > 0 {
		s.log.Info("removed unreferenced blob objects", "count", removed)
	}
	return nil
}

// blobRetention deletes up to budget blobs older than their bucket's
// MaxAge and returns how many it deleted (at most budget, and what one
// transaction takes).
func (s *Store) blobRetention(ctx context.Context, budget int) (int, error) {
	now := time.Now()
	total := 0
	// One commit takes at most what fits in one transaction: 256 deletes
	// (retentionChunk) are over it on the low-memory profile, and a
	// refused commit would be refused again on every pass.
	budget = min(budget, max(1, int(s.maxTxnSize/2/blobOpEst)))
	for name, bk := range s.opts.Buckets {
		if bk.MaxAge <= 0 {
			continue
		}
		cut := now.Add(-bk.MaxAge).UnixMilli()
		var ops []BlobOp
		base := blobKey(name, "")
		err := s.view(ctx, func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: base, PrefetchValues: false})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(ops) < budget-total; it.Next() {
				item := it.Item()
				var created int64
				if err := item.Value(func(v []byte) error { created = valueTime(v); return nil }); err != nil {
					return err
				}
				if created > 0 && created < cut {
					ops = append(ops, BlobOp{Bucket: name, Name: string(item.Key()[len(base):]), Delete: true, createdBefore: cut})
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		if len(ops) == 0 {
			continue
		}
		if _, err := s.Commit(ctx, &Commit{Blobs: ops}); err != nil {
			return total, err
		}
		total += len(ops)
		if total >= budget {
			break
		}
	}
	return total, nil
}

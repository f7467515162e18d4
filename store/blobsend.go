package store

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	badger "github.com/dgraph-io/badger/v4"
)

// Blob sends: a bucket with Bucket.Sync routes every blob put in it to sync
// targets. The commit that makes the blob visible also appends, to the
// outbox of each target, a BlobSend entry (in sequence with the records of
// that outbox) and adds one reference to the blob's object per entry, so
// the object file stays on disk while a send is pending even when the blob
// is deleted or replaced. The reference is given back in the same atomic
// write that removes the entry: OutboxAck, or a drop by the outbox quota.
// The object is removed after that write once no blob and no send refers
// to it (a crash in between leaves an orphan that Open removes).
//
// Key layout: the entry is an ordinary outbox value (tag tagBlobSend) at
// 'o' target 0x00 seq; an index key 'O' target 0x00 seq holds the object's
// hash and size, so that OutboxAck finds the references to give back
// without reading the values of the records it deletes.

// BlobSend is a blob put routed to a sync target: the outbox entry asks for
// the blob's content (the object with hash SHA256) to be sent.
type BlobSend struct {
	ID          string // stable id, shared by the sends of one put to several targets: Store.IDPrefix + "blob-" + sequence
	Bucket      string
	Name        string
	Size        int64
	ContentType string
	SHA256      string // lower-case hex: the object
	Created     int64  // ms since the epoch: the blob's commit
}

// BlobStream is the Stream of the metadata record of a blob send
// (OutboxEntry.Record), for targets that send records only.
const BlobStream = "blobs"

// blobSendMeta is the Data of a blob send's metadata record: the fields of
// the upload event.
type blobSendMeta struct {
	Bucket      string `json:"bucket"`
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	SHA256      string `json:"sha256"`
}

const tagBlobSend = 8

// pBlobSendIdx is the index of the blob sends in the outboxes.
const pBlobSendIdx = 'O'

func encodeBlobSend(bs *BlobSend, sum [32]byte, seq uint64, synced bool, now int64) []byte {
	x := enc{b: make([]byte, 0, 64+len(bs.ID)+len(bs.Bucket)+len(bs.Name)+len(bs.ContentType))}
	x.tag(tagBlobSend)
	x.i(now) // first, like every queued value: valueTime reads it
	x.u(seq)
	x.s(bs.ID)
	x.bo(synced)
	x.s(bs.Bucket)
	x.s(bs.Name)
	x.i(bs.Size)
	x.s(bs.ContentType)
	x.i(bs.Created)
	x.b = append(x.b, sum[:]...)
	return x.b
}

// decodeBlobSend decodes an outbox value of a blob send into the send and
// its metadata record.
func decodeBlobSend(v []byte) (BlobSend, Record, [32]byte, error) {
	var sum [32]byte
	d := dec{b: v}
	d.tag(tagBlobSend, "blob send")
	d.i()
	seq := d.u()
	bs := BlobSend{ID: d.s()}
	synced := d.bo()
	bs.Bucket, bs.Name, bs.Size, bs.ContentType, bs.Created = d.s(), d.s(), d.i(), d.s(), d.i()
	if d.err == nil {
		if len(d.b) != 32 {
			d.fail("blob send hash")
		} else {
			copy(sum[:], d.b)
			d.b = d.b[32:]
		}
	}
	if err := d.end("blob send"); err != nil {
		return BlobSend{}, Record{}, sum, err
	}
	bs.SHA256 = hex.EncodeToString(sum[:])
	data, _ := json.Marshal(blobSendMeta{Bucket: bs.Bucket, Name: bs.Name, Size: bs.Size, ContentType: bs.ContentType, SHA256: bs.SHA256})
	rec := Record{Seq: seq, ID: bs.ID, Stream: BlobStream, EventTS: bs.Created, ProcessedTS: bs.Created, ClockSynced: synced, Data: data}
	return bs, rec, sum, nil
}

func encodeSendIdx(sum [32]byte, size int64) []byte {
	return binary.AppendVarint(append(make([]byte, 0, 42), sum[:]...), size)
}

func decodeSendIdx(v []byte) ([32]byte, int64, error) {
	var sum [32]byte
	if len(v) < 33 {
		return sum, 0, fmt.Errorf("%w: blob send index value", ErrCorrupt)
	}
	copy(sum[:], v)
	size, n := binary.Varint(v[32:])
	if n <= 0 || n != len(v)-32 {
		return sum, 0, fmt.Errorf("%w: blob send index value", ErrCorrupt)
	}
	return sum, size, nil
}

// pendingSend is a blob send a commit appends to one outbox.
type pendingSend struct {
	target string
	val    []byte
	sum    [32]byte
	size   int64
	seq    uint64 // the send's sequence (one per put, shared by its targets)
}

// blobSends computes the outbox entries of the blob puts of a commit
// (their sequences are the ones they will get). It does not mutate b.
func (s *Store) blobSends(b *batch, changes []blobChange) []pendingSend {
	var out []pendingSend
	seq := b.ctr.BlobSend
	synced := s.clockSynced.Load()
	for i := range changes {
		ch := &changes[i]
		if ch.val == nil {
			continue
		}
		targets := dedupe(s.opts.Buckets[ch.info.Bucket].Sync)
		if len(targets) == 0 {
			continue
		}
		seq++
		bs := BlobSend{ID: s.idPrefix + "blob-" + formatSeq(seq), Bucket: ch.info.Bucket, Name: ch.info.Name,
			Size: ch.info.Size, ContentType: ch.info.ContentType, Created: ch.info.Created}
		val := encodeBlobSend(&bs, ch.sum, seq, synced, b.now)
		for _, t := range targets {
			out = append(out, pendingSend{target: t, val: val, sum: ch.sum, size: ch.info.Size, seq: seq})
		}
	}
	return out
}

// writeBlobSends appends the sends to their outboxes, each holding a
// reference on its object, and notes in first the first sequence this
// commit adds to each outbox. Mutation phase.
func (b *batch) writeBlobSends(sends []pendingSend, first map[string]uint64) {
	for _, ps := range sends {
		q := b.ctr.Outbox[ps.target]
		if q.Next == 0 {
			q = newQueue()
		}
		if _, ok := first[ps.target]; !ok {
			first[ps.target] = q.Next
		}
		b.set(nameSeqKey(pOutbox, ps.target, q.Next), ps.val)
		b.set(nameSeqKey(pBlobSendIdx, ps.target, q.Next), encodeSendIdx(ps.sum, ps.size))
		q.Next++
		q.add(len(ps.val))
		q.Blobs++
		q.BlobBytes += ps.size
		b.ctr.Outbox[ps.target] = q
		b.addRef(ps.sum, 1)
		b.ctr.BlobSend = max(b.ctr.BlobSend, ps.seq)
	}
}

// releaseSend gives back the reference of the blob send at seq of target's
// outbox, whose entry is being deleted (acknowledged or dropped), and
// deletes its index key. Mutation phase.
func (b *batch) releaseSend(target string, seq uint64, sum [32]byte, size int64, q *queue) {
	b.del(nameSeqKey(pBlobSendIdx, target, seq))
	b.addRef(sum, -1)
	q.Blobs = max(q.Blobs-1, 0)
	q.BlobBytes = max(q.BlobBytes-size, 0)
}

// addRef records a change of an object's reference count, applied when the
// running request is done (applyRefs).
func (b *batch) addRef(sum [32]byte, d int64) {
	if b.refs == nil {
		b.refs = map[[32]byte]int64{}
	}
	b.refs[sum] += d
}

// applyRefs writes the reference-count changes of the running request and
// returns the objects nothing refers to any more (removed after the
// commit). It runs in the mutation phase: errors are fatal.
func (b *batch) applyRefs() ([][32]byte, error) {
	var freed [][32]byte
	for sum, d := range b.refs {
		if d == 0 {
			continue
		}
		v, _, err := b.get(blobRefKey(sum))
		if err != nil {
			return nil, err
		}
		var n int64
		if len(v) == 8 {
			n = int64(binary.BigEndian.Uint64(v))
		}
		n += d
		if n <= 0 {
			if n < 0 {
				b.s.log.Error("blob object reference count below zero", "sha256", hex.EncodeToString(sum[:]), "count", n)
			}
			b.del(blobRefKey(sum))
			freed = append(freed, sum)
			continue
		}
		b.set(blobRefKey(sum), binary.BigEndian.AppendUint64(nil, uint64(n)))
	}
	return freed, nil
}

// ackedSend is a blob send found in a range being acknowledged.
type ackedSend struct {
	seq  uint64
	sum  [32]byte
	size int64
}

// blobSendsIn lists the blob sends of target's outbox in [from, to], from
// the index. It reads only.
func (b *batch) blobSendsIn(target string, from, to uint64) ([]ackedSend, error) {
	p := namePrefix(pBlobSendIdx, target)
	it := b.txn.NewIterator(badger.IteratorOptions{Prefix: p})
	defer it.Close()
	var out []ackedSend
	for it.Seek(nameSeqKey(pBlobSendIdx, target, from)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != len(p)+8 {
			continue
		}
		seq := keySeq(k)
		if seq > to {
			break
		}
		r := ackedSend{seq: seq}
		err := item.Value(func(v []byte) error {
			var err error
			r.sum, r.size, err = decodeSendIdx(v)
			return err
		})
		if err != nil {
			return nil, fatal(err)
		}
		out = append(out, r)
	}
	return out, nil
}

// OpenBlobObject opens the object with the given SHA-256 (lower-case hex)
// for reading: the content of a blob send, which holds it on disk until
// acknowledged. Errors: ErrInvalid (not a hash), ErrNotFound (no such
// object), ErrClosed.
func (s *Store) OpenBlobObject(sha string) (*os.File, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	raw, err := hex.DecodeString(sha)
	if err != nil || len(raw) != 32 || hex.EncodeToString(raw) != sha {
		return nil, fmt.Errorf("%w: object hash %q", ErrInvalid, clipName(sha))
	}
	f, err := os.Open(s.objectPath([32]byte(raw)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob object %s", ErrNotFound, sha)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open blob object: %w", err)
	}
	return f, nil
}

// BlobRefs returns the reference count of the object with the given hash
// (blobs and pending sends referring to it; 0 when there is none).
func (s *Store) BlobRefs(ctx context.Context, sha string) (int64, error) {
	raw, err := hex.DecodeString(sha)
	if err != nil || len(raw) != 32 {
		return 0, fmt.Errorf("%w: object hash %q", ErrInvalid, clipName(sha))
	}
	var n int64
	err = s.view(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get(blobRefKey([32]byte(raw)))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) == 8 {
				n = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
	return n, err
}

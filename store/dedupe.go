package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"

	"github.com/dgraph-io/badger/v4"
)

// The redelivery window remembers the fingerprints of the most recently
// accepted messages, so that a message redelivered by MQTT (a QoS 1 publish
// whose PUBACK was lost because moongate stopped after the event was
// durable, sent again with the DUP flag) is recognised and not processed a
// second time.
//
// Each fingerprint is written in the same batch as its inbox entry, into
// slot seq mod window (key pDedupe + slot), so the window's footprint on
// disk is fixed. An in-memory index answers lookups; it is rebuilt at Open
// and updated only after a batch is durable, so it never claims a message
// that was not kept.

const pDedupe = 'w'

// FingerprintSize is the size of InboxEntry.Fingerprint.
const FingerprintSize = 16

type redeliveryWindow struct {
	mu    sync.RWMutex
	size  uint64
	slots map[uint64][FingerprintSize]byte // slot -> fingerprint
	index map[[FingerprintSize]byte]uint64 // fingerprint -> slot

	// The last refusedWindow messages refused at intake (dead-lettered
	// with their fingerprint; no inbox entry carries it), in memory only:
	// after a restart the sender's slot is what recognises them.
	refusedRing [refusedWindow][FingerprintSize]byte
	refusedNext int
	refusedLen  int
	refusedSet  map[[FingerprintSize]byte]int // fingerprint -> copies in the ring
}

// refusedWindow is how many intake refusals the redelivery window keeps
// in memory.
const refusedWindow = 256

func newRedeliveryWindow(window int) *redeliveryWindow {
	return &redeliveryWindow{size: uint64(window), slots: make(map[uint64][FingerprintSize]byte), index: make(map[[FingerprintSize]byte]uint64)}
}

func dedupeKey(slot uint64) []byte {
	k := make([]byte, 9)
	k[0] = pDedupe
	binary.BigEndian.PutUint64(k[1:], slot)
	return k
}

// put records fp in slot, evicting what the slot held.
func (d *redeliveryWindow) put(slot uint64, fp [FingerprintSize]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.slots[slot]; ok && d.index[old] == slot {
		delete(d.index, old)
	}
	d.slots[slot] = fp
	d.index[fp] = slot
}

// refused records fp as a message refused at intake, evicting the oldest
// refusal.
func (d *redeliveryWindow) refused(fp [FingerprintSize]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refusedSet == nil {
		d.refusedSet = make(map[[FingerprintSize]byte]int)
	}
	if d.refusedLen == refusedWindow {
		old := d.refusedRing[d.refusedNext]
		if d.refusedSet[old]--; d.refusedSet[old] <= 0 {
			delete(d.refusedSet, old)
		}
	} else {
		d.refusedLen++
	}
	d.refusedRing[d.refusedNext] = fp
	d.refusedNext = (d.refusedNext + 1) % refusedWindow
	d.refusedSet[fp]++
}

func (d *redeliveryWindow) has(fp [FingerprintSize]byte) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if _, ok := d.index[fp]; ok {
		return true
	}
	return d.refusedSet[fp] > 0
}

// load rebuilds the index from the stored slots.
func (d *redeliveryWindow) load(db *badger.DB) error {
	return db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pDedupe}, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != 9 {
				continue
			}
			slot := binary.BigEndian.Uint64(k[1:])
			if slot >= d.size {
				continue // from a larger window: ignore
			}
			err := it.Item().Value(func(v []byte) error {
				if len(v) == FingerprintSize {
					d.put(slot, [FingerprintSize]byte(v))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Redelivered reports whether a message with this fingerprint, from this
// sender and with this packet id, was accepted (its inbox entries made
// durable, or its refusal at intake dead-lettered with its fingerprint,
// DeadLetter.Fingerprint): within the redelivery window of the last
// Options.DedupeWindow accepted inbox entries and the last 256 refusals (in
// memory), or else in the sender's own slots
// (one read, only for the messages asked about: redeliveries). The sender's
// slots keep the last fingerprint per packet id modulo SenderSlots for
// Options.SenderSlotTTL, so a device that resends after a long outage,
// while thousands of other messages were accepted, is still recognised
// when it numbers its packets in sequence and has at most SenderSlots
// unacknowledged. Safe for concurrent use.
func (s *Store) Redelivered(ctx context.Context, sender string, packetID uint16, fingerprint []byte) bool {
	if len(fingerprint) != FingerprintSize {
		return false
	}
	if s.window.has([FingerprintSize]byte(fingerprint)) {
		return true
	}
	var found bool
	err := s.view(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get(senderKey(sender, packetID))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			found = len(v) == FingerprintSize+8 && bytes.Equal(v[:FingerprintSize], fingerprint)
			return nil
		})
	})
	if err != nil {
		// Unknown is "not a redelivery": the message runs, at least once.
		s.log.Warn("redelivery check: reading the sender's slot failed", "err", err)
		return false
	}
	return found
}

// The sender slots: key pSender + the first 8 bytes of SHA-256(sender) +
// one byte, the packet id mod SenderSlots; value the fingerprint and the
// write time (ms, big-endian), which the retention pass uses to forget
// slots not written for Options.SenderSlotTTL. A collision of two senders'
// hashes, or of two packet ids of one sender in flight together, can only
// make a redelivery go unrecognised (a second run), never take a new
// message for one: the whole fingerprint (sender, packet id, topic,
// payload) must match.
const pSender = 'v'

// SenderSlots is how many packet ids (modulo) each sender's redelivery
// slots remember.
const SenderSlots = 256

func senderKey(sender string, packetID uint16) []byte {
	h := sha256.Sum256([]byte(sender))
	k := make([]byte, 10)
	k[0] = pSender
	copy(k[1:9], h[:8])
	k[9] = byte(packetID % SenderSlots)
	return k
}

func senderValue(fp []byte, now int64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, FingerprintSize+8), fp...), uint64(now))
}

// senderWalkChunk bounds the sender slots one retention request walks: a
// walk of every slot in one request held up every write (256,000 slots of
// 1,000 devices: 176 ms here, far more on a Pi), so the walk goes on from
// Store.senderCursor in the next request.
const senderWalkChunk = 4096

// trimSenders deletes up to budget sender slots written before cut,
// walking at most senderWalkChunk slots from where the last walk stopped.
// end reports that the walk reached the last slot.
func (b *batch) trimSenders(cut int64, budget int) (n int, end bool, err error) {
	it := b.txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pSender}})
	defer it.Close()
	walked := 0
	it.Seek(append([]byte{pSender}, b.s.senderCursor...))
	for ; it.Valid(); it.Next() {
		if n >= budget || walked >= senderWalkChunk || !b.roomFor(entryEst(16, 0)) {
			b.s.senderCursor = it.Item().KeyCopy(nil)[1:]
			return n, false, nil
		}
		walked++
		var ts int64
		if err := it.Item().Value(func(v []byte) error {
			if len(v) == FingerprintSize+8 {
				ts = int64(binary.BigEndian.Uint64(v[FingerprintSize:]))
			}
			return nil
		}); err != nil {
			return n, false, err
		}
		if ts < cut {
			b.del(it.Item().KeyCopy(nil))
			n++
		}
	}
	b.s.senderCursor = nil
	return n, true, nil
}

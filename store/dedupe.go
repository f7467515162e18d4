package store

import (
	"context"
	"encoding/binary"
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
}

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

func (d *redeliveryWindow) has(fp [FingerprintSize]byte) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	_, ok := d.index[fp]
	return ok
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

// Redelivered reports whether a message with this fingerprint was accepted
// (its inbox entries made durable) within the redelivery window: the last
// Options.DedupeWindow accepted inbox entries. Safe for concurrent use.
func (s *Store) Redelivered(_ context.Context, fingerprint []byte) bool {
	if len(fingerprint) != FingerprintSize {
		return false
	}
	return s.window.has([FingerprintSize]byte(fingerprint))
}

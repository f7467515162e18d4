/*
 * SPDX-FileCopyrightText: © 2026 moongate authors
 * SPDX-License-Identifier: Apache-2.0
 */

package badger

// Tests of moongate's changes to Badger (README.moongate.md). They run
// with Badger's own suite: store/third_party/badger-tests.sh.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"testing"

	"github.com/dgraph-io/badger/v4/y"
)

// encodeEntryRelease is encodeEntry of the release, for the unencrypted
// case: the patched one must produce the same bytes.
func encodeEntryRelease(buf *bytes.Buffer, e *Entry) int {
	h := header{klen: uint32(len(e.Key)), vlen: uint32(len(e.Value)), expiresAt: e.ExpiresAt, meta: e.meta, userMeta: e.UserMeta}
	hash := crc32.New(y.CastagnoliCrcTable)
	writer := io.MultiWriter(buf, hash)
	var headerEnc [maxHeaderSize]byte
	sz := h.Encode(headerEnc[:])
	y.Check2(writer.Write(headerEnc[:sz]))
	y.Check2(writer.Write(e.Key))
	y.Check2(writer.Write(e.Value))
	var crcBuf [crc32.Size]byte
	binary.BigEndian.PutUint32(crcBuf[:], hash.Sum32())
	y.Check2(buf.Write(crcBuf[:]))
	return sz + len(e.Key) + len(e.Value) + len(crcBuf)
}

func TestMoongateEncodeEntrySameBytes(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	lf := &logFile{}
	var got, want bytes.Buffer
	for i := range 2000 {
		e := &Entry{
			Key:       make([]byte, rng.Intn(300)),
			Value:     make([]byte, rng.Intn(5000)),
			meta:      byte(rng.Intn(256)),
			UserMeta:  byte(rng.Intn(256)),
			ExpiresAt: uint64(rng.Int63()) >> uint(rng.Intn(64)),
		}
		rng.Read(e.Key)
		rng.Read(e.Value)
		// Something already in the buffer: the checksum covers only the entry.
		got.Reset()
		want.Reset()
		pre := make([]byte, rng.Intn(40))
		got.Write(pre)
		want.Write(pre)
		n, err := lf.encodeEntry(&got, e, 0)
		if err != nil {
			t.Fatal(err)
		}
		if wn := encodeEntryRelease(&want, e); n != wn || !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("entry %d: encoded %d bytes %x, release %d bytes %x", i, n, got.Bytes(), wn, want.Bytes())
		}
		d, err := lf.decodeEntry(got.Bytes()[len(pre):], 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d.Key, e.Key) || !bytes.Equal(d.Value, e.Value) || d.meta != e.meta || d.UserMeta != e.UserMeta || d.ExpiresAt != e.ExpiresAt {
			t.Fatalf("entry %d does not decode to itself", i)
		}
	}
}

// With SyncWrites, a transaction whose values all stay in the LSM tree does
// not sync the value log; one with a value in the value log does. Both are
// there after a reopen (replayed from the WAL, read from the value log).
func TestMoongateValueLogSyncedOnlyWhenWritten(t *testing.T) {
	dir := t.TempDir()
	opt := DefaultOptions(dir).WithSyncWrites(true).WithValueThreshold(1 << 10).WithLogger(nil)
	db, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	set := func(k string, v []byte) {
		t.Helper()
		if err := db.Update(func(txn *Txn) error { return txn.Set([]byte(k), v) }); err != nil {
			t.Fatal(err)
		}
	}
	base := db.vlog.syncs.Load()
	for i := range 20 {
		set(fmt.Sprintf("small%d", i), []byte("v"))
	}
	if n := db.vlog.syncs.Load() - base; n != 0 {
		t.Fatalf("%d value-log syncs for 20 transactions of small values, want 0", n)
	}
	big := bytes.Repeat([]byte("b"), 4<<10)
	set("big", big)
	if n := db.vlog.syncs.Load() - base; n != 1 {
		t.Fatalf("%d value-log syncs after a transaction with a %d-byte value, want 1", n, len(big))
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(opt); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(txn *Txn) error {
		for i := range 20 {
			item, err := txn.Get([]byte(fmt.Sprintf("small%d", i)))
			if err != nil {
				return err
			}
			if v, _ := item.ValueCopy(nil); string(v) != "v" {
				return fmt.Errorf("small%d = %q", i, v)
			}
		}
		item, err := txn.Get([]byte("big"))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if !bytes.Equal(v, big) {
			return fmt.Errorf("big value differs after reopen")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

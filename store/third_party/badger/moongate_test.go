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
	"math"
	"math/rand"
	"os"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/skl"
	"github.com/dgraph-io/badger/v4/table"
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

// Without SyncWrites, DB.Sync syncs the value log only when a write went
// there since the last sync (moongate's durability modes sync with
// DB.Sync after commits that rarely hold a value-log value), and then it
// does: the value is on disk (its pages written back) when DB.Sync returns.
func TestMoongateSyncSkipsUnwrittenValueLog(t *testing.T) {
	dir := t.TempDir()
	opt := DefaultOptions(dir).WithSyncWrites(false).WithValueThreshold(1 << 10).WithLogger(nil)
	db, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	set := func(k string, v []byte) {
		t.Helper()
		if err := db.Update(func(txn *Txn) error { return txn.Set([]byte(k), v) }); err != nil {
			t.Fatal(err)
		}
	}
	sync := func() {
		t.Helper()
		if err := db.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	sync()
	base := db.vlog.syncs.Load()
	for i := range 20 {
		set(fmt.Sprintf("small%d", i), []byte("v"))
		sync()
	}
	if n := db.vlog.syncs.Load() - base; n != 0 {
		t.Fatalf("%d value-log syncs for 20 DB.Sync after small values only, want 0", n)
	}
	big := bytes.Repeat([]byte("b"), 64<<10)
	set("big", big)
	db.vlog.filesLock.RLock()
	vpath := db.vlog.filesMap[db.vlog.maxFid].Fd.Name()
	db.vlog.filesLock.RUnlock()
	if kb, mapped := dirtyKB(t, vpath); !mapped || kb == 0 {
		t.Fatalf("value log %s before DB.Sync: mapped %v, %d KiB dirty; want the write's pages dirty", vpath, mapped, kb)
	}
	sync()
	if n := db.vlog.syncs.Load() - base; n != 1 {
		t.Fatalf("%d value-log syncs after a DB.Sync following a %d-byte value, want 1", n, len(big))
	}
	if kb, _ := dirtyKB(t, vpath); kb != 0 {
		t.Fatalf("value log %s has %d KiB not written back after DB.Sync", vpath, kb)
	}
	sync()
	if n := db.vlog.syncs.Load() - base; n != 1 {
		t.Fatalf("%d value-log syncs after a second DB.Sync with nothing written, want 1", n)
	}
}

// buildL0Table leaves out of the level-0 table exactly the versions a
// compaction would drop: of the versions at or below the discard
// threshold, all but the newest NumVersionsToKeep (or up to a deletion,
// an expiry or a discard-earlier-versions mark); every version above the
// threshold and every merge entry stays. Dropped value-log pointers are
// counted in the discard statistics.
func TestMoongateFlushDropsSupersededVersions(t *testing.T) {
	type ver struct {
		key  string
		ts   uint64
		meta byte
		vp   *valuePointer
	}
	vp := &valuePointer{Fid: 7, Len: 100, Offset: 20}
	in := []ver{
		{"a", 5, 0, nil}, {"a", 4, 0, nil}, {"a", 3, 0, nil}, // all at or below 10
		{"b", 12, 0, nil}, {"b", 11, 0, nil}, {"b", 9, 0, nil}, {"b", 8, 0, nil}, // two above 10
		{"c", 7, bitDelete, nil}, {"c", 6, 0, nil}, // deleted
		{"d", 5, bitDiscardEarlierVersions, nil}, {"d", 4, 0, nil},
		{"e", 6, bitMergeEntry, nil}, {"e", 5, bitMergeEntry, nil},
		{"f", 4, 0, nil}, {"f", 3, bitValuePointer, vp}, // the dropped version is in the value log
		{"g", 3, 0, nil}, // one version only
	}
	build := func(discardTs uint64, keep int) ([]string, map[uint32]int64) {
		t.Helper()
		sl := skl.NewSkiplist(1 << 20)
		defer sl.DecrRef()
		for _, v := range in {
			val := []byte(fmt.Sprintf("%s@%d", v.key, v.ts))
			if v.vp != nil {
				val = v.vp.Encode()
			}
			sl.Put(y.KeyWithTs([]byte(v.key), v.ts), y.ValueStruct{Value: val, Meta: v.meta})
		}
		opts := table.Options{BlockSize: 4 << 10, BloomFalsePositive: 0.01, ChkMode: options.NoVerification}
		stats := map[uint32]int64{}
		b := buildL0Table(sl.NewUniIterator(false), nil, opts, discardTs, keep, stats)
		defer b.Close()
		tbl, err := table.OpenInMemoryTable(b.Finish(), 1, &opts)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tbl.DecrRef() }()
		it := tbl.NewIterator(0)
		defer it.Close()
		var got []string
		for it.Rewind(); it.Valid(); it.Next() {
			got = append(got, fmt.Sprintf("%s@%d", y.ParseKey(it.Key()), y.ParseTs(it.Key())))
		}
		return got, stats
	}
	for _, tc := range []struct {
		discardTs uint64
		keep      int
		want      string
		vlog      int64
	}{
		{10, 1, "a@5 b@12 b@11 b@9 c@7 d@5 e@6 e@5 f@4 g@3", 100},
		{10, 2, "a@5 a@4 b@12 b@11 b@9 b@8 c@7 d@5 e@6 e@5 f@4 f@3 g@3", 0},
		{0, 1, "a@5 a@4 a@3 b@12 b@11 b@9 b@8 c@7 c@6 d@5 d@4 e@6 e@5 f@4 f@3 g@3", 0}, // a reader at 0 sees everything
		{4, 1, "a@5 a@4 b@12 b@11 b@9 b@8 c@7 c@6 d@5 d@4 e@6 e@5 f@4 g@3", 100},
	} {
		got, stats := build(tc.discardTs, tc.keep)
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("discardTs %d, keep %d:\n got %s\nwant %s", tc.discardTs, tc.keep, s, tc.want)
		}
		if stats[vp.Fid] != tc.vlog {
			t.Errorf("discardTs %d, keep %d: %d value-log bytes discarded, want %d", tc.discardTs, tc.keep, stats[vp.Fid], tc.vlog)
		}
	}
}

// A transaction open across a memtable flush still reads the version it
// started with (the flush keeps it: it is above the discard threshold),
// while a flush with no such reader keeps only the newest version.
func TestMoongateFlushKeepsVersionsOfOpenReaders(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(DefaultOptions(dir).WithMemTableSize(1 << 20).WithValueThreshold(1 << 10).WithNumVersionsToKeep(1).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	set := func(k, v string) {
		t.Helper()
		if err := db.Update(func(txn *Txn) error { return txn.Set([]byte(k), []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	versions := func(key string) int {
		t.Helper()
		// In every level: a compaction may have moved the table down.
		n := 0
		for _, lh := range db.lc.levels {
			lh.RLock()
			for _, tbl := range lh.tables {
				it := tbl.NewIterator(0)
				for it.Seek(y.KeyWithTs([]byte(key), math.MaxUint64)); it.Valid() && string(y.ParseKey(it.Key())) == key; it.Next() {
					n++
				}
				it.Close()
			}
			lh.RUnlock()
		}
		return n
	}
	// flush writes enough to fill the memtable and waits until key is in
	// a table.
	flush := func(key string) {
		t.Helper()
		filler := bytes.Repeat([]byte("x"), 4<<10)
		for i := 0; versions(key) == 0; i++ {
			if err := db.Update(func(txn *Txn) error { return txn.Set([]byte(fmt.Sprintf("fill%08d", i)), filler) }); err != nil {
				t.Fatal(err)
			}
			if i > 100000 {
				t.Fatal("no memtable flush after 100,000 writes")
			}
		}
	}

	set("k", "v1")
	reader := db.NewTransaction(false)
	set("k", "v2")
	set("k", "v3")
	flush("k")
	item, err := reader.Get([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := item.ValueCopy(nil); string(v) != "v1" {
		t.Fatalf("reader open across the flush reads %q, want v1", v)
	}
	if n := versions("k"); n != 3 {
		t.Fatalf("%d versions of k in the tables with a reader at the oldest, want 3", n)
	}
	reader.Discard()

	set("j", "w1")
	set("j", "w2")
	flush("j")
	if n := versions("j"); n != 1 {
		t.Fatalf("%d versions of j in the tables without readers, want 1", n)
	}
	err = db.View(func(txn *Txn) error {
		for k, want := range map[string]string{"k": "v3", "j": "w2"} {
			item, err := txn.Get([]byte(k))
			if err != nil {
				return err
			}
			if v, _ := item.ValueCopy(nil); string(v) != want {
				return fmt.Errorf("%s = %q, want %q", k, v, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMoongateWriteRequestsReportsWhatWasWritten: when the switch to a new
// memtable fails for a request of a batch (a full disk: ENOSPC from the
// next memtable's log; here a directory in the way of its file), the
// requests before it, written and synced, succeed, and only it fails.
// Upstream reported the whole batch failed, the written requests included
// (README.moongate.md, section 8).
func TestMoongateWriteRequestsReportsWhatWasWritten(t *testing.T) {
	db, err := Open(DefaultOptions(t.TempDir()).WithMemTableSize(1 << 20).WithValueThreshold(1 << 10).WithSyncWrites(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	newRequest := func(prefix string, n, size int) *request {
		r := &request{}
		for i := range n {
			e := NewEntry(y.KeyWithTs(fmt.Appendf(nil, "%s%05d", prefix, i), 1), bytes.Repeat([]byte("v"), size))
			e.estimateSizeAndSetThreshold(db.valueThreshold())
			r.Entries = append(r.Entries, e)
		}
		r.Wg.Add(1)
		return r
	}
	full := newRequest("a", 1200, 900) // more than the 1 MiB memtable holds
	next := newRequest("b", 1, 10)
	block := db.mtFilePath(db.nextMemFid)
	if err := os.Mkdir(block, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := db.writeRequests([]*request{full, next}); err == nil {
		t.Fatal("writeRequests succeeded with the next memtable's file blocked")
	}
	full.Wg.Wait()
	next.Wg.Wait()
	if full.Err != nil || next.Err == nil {
		t.Fatalf("written request: %v; the one that could not be: %v", full.Err, next.Err)
	}
	if vs, err := db.get(y.KeyWithTs([]byte("a01199"), math.MaxUint64)); err != nil || vs.Version != 1 {
		t.Fatalf("the written request's last key: %+v %v", vs, err)
	}
	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *Txn) error { return txn.Set([]byte("c"), []byte("d")) }); err != nil {
		t.Fatalf("a write once the file can be made: %v", err)
	}
}

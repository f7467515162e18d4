package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

// syntheticPlan is a made-up future: format 3, reached from format 1 (the
// first format) in two steps. Step 1->2 copies every key
// under a "mig2/" prefix (in batches, idempotently); step 2->3 deletes the
// copies and leaves a marker. failAfter > 0 makes step 1->2 fail after
// that many keys, as a crash halfway would.
func syntheticPlan(runs *[]string, failAfter int) *formatPlan {
	copyAll := func(ctx context.Context, db *badger.DB, _ *slog.Logger) error {
		*runs = append(*runs, "1->2")
		wb := db.NewWriteBatch()
		defer wb.Cancel()
		n := 0
		err := db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.DefaultIteratorOptions)
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().KeyCopy(nil)
				if bytes.Equal(k, keyFormat) || bytes.HasPrefix(k, []byte("mig2/")) {
					continue
				}
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				if failAfter > 0 && n == failAfter {
					return errors.New("synthetic failure halfway")
				}
				if err := wb.Set(append([]byte("mig2/"), k...), v); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			// What was copied before the failure stays: the step must
			// cope with it when it runs again.
			if ferr := wb.Flush(); ferr != nil {
				return ferr
			}
			return err
		}
		return wb.Flush()
	}
	dropCopies := func(ctx context.Context, db *badger.DB, _ *slog.Logger) error {
		*runs = append(*runs, "2->3")
		if err := db.DropPrefix([]byte("mig2/")); err != nil {
			return err
		}
		return db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("mig3/done"), []byte("yes")) })
	}
	return &formatPlan{version: 3, steps: []migration{
		{From: 2, Name: "drop the copies", Apply: dropCopies}, // out of order on purpose
		{From: 1, Name: "copy every key", Apply: copyAll},
	}}
}

// oldDataDir makes a data directory of format 1 with records, state and a
// queued event in it.
func oldDataDir(t *testing.T) (string, []Record) {
	t.Helper()
	s := openTest(t, Options{plan: &formatPlan{version: 1}})
	recs := commitRecords(t, s, 30)
	if _, err := s.Commit(context.Background(), &Commit{State: []StateChange{{Function: "f", Op: StateSet, Key: "k", Value: []byte(`"v"`)}}}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, s, "f", 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return s.opts.Dir, recs
}

func formatOf(t *testing.T, dir string) int {
	t.Helper()
	db := openRaw(t, dir)
	defer db.Close()
	n, err := readFormat(db)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMigrateOlderFormat(t *testing.T) {
	ctx := context.Background()
	dir, recs := oldDataDir(t)
	if got := formatOf(t, dir); got != 1 {
		t.Fatalf("old data directory is format %d, want 1", got)
	}

	// A step that fails halfway: Open fails with what happened, the
	// directory stays at format 1.
	var runs []string
	_, err := Open(ctx, Options{Dir: dir, Logger: quietLogger(), plan: syntheticPlan(&runs, 5)})
	if err == nil || !strings.Contains(err.Error(), "from format 1 to 2") || !strings.Contains(err.Error(), "still format 1") ||
		!strings.Contains(err.Error(), "synthetic failure halfway") {
		t.Fatalf("failing migration: %v", err)
	}
	if got := formatOf(t, dir); got != 1 {
		t.Fatalf("format after a failed step: %d, want 1", got)
	}
	if n := countPrefix(t, dir, "mig2/"); n != 5 {
		t.Fatalf("the failed step left %d copies, want 5 (a partial step)", n)
	}

	// The next start runs the steps again, in order, and the data is intact.
	runs = nil
	s, err := Open(ctx, Options{Dir: dir, Logger: quietLogger(), plan: syntheticPlan(&runs, 0)})
	if err != nil {
		t.Fatalf("migrating: %v", err)
	}
	if fmt.Sprint(runs) != "[1->2 2->3]" {
		t.Fatalf("steps run: %v", runs)
	}
	if st := s.Stats(); st.FormatVersion != 3 {
		t.Fatalf("Stats.FormatVersion %d after migrating to 3", st.FormatVersion)
	}
	got, _, err := s.QueryRecords(ctx, Query{Stream: recs[0].Stream, Limit: 100})
	if err != nil || len(got) != len(recs) {
		t.Fatalf("records after migration: %d, %v (want %d)", len(got), err, len(recs))
	}
	for i := range recs {
		if got[i].ID != recs[i].ID || !bytes.Equal(got[i].Data, recs[i].Data) {
			t.Fatalf("record %d changed: %+v, was %+v", i, got[i], recs[i])
		}
	}
	if v, ok, err := s.GetState(ctx, "f", "k"); err != nil || !ok || string(v) != `"v"` {
		t.Fatalf("state after migration: %q, %v, %v", v, ok, err)
	}
	if n := s.InboxLen(); n != 3 {
		t.Fatalf("inbox after migration: %d entries, want 3", n)
	}
	var marker, copies int
	_ = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			switch k := it.Item().Key(); {
			case bytes.HasPrefix(k, []byte("mig2/")):
				copies++
			case bytes.Equal(k, []byte("mig3/done")):
				marker++
			}
		}
		return nil
	})
	if marker != 1 || copies != 0 {
		t.Fatalf("after migration: %d markers, %d copies left", marker, copies)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := formatOf(t, dir); got != 3 {
		t.Fatalf("format after migrating: %d, want 3", got)
	}

	// Opening again at format 3 runs nothing.
	runs = nil
	s, err = Open(ctx, Options{Dir: dir, Logger: quietLogger(), plan: syntheticPlan(&runs, 0)})
	if err != nil || len(runs) != 0 {
		t.Fatalf("reopen at format 3: %v, steps %v", err, runs)
	}
	_ = s.Close()

	// This release refuses a newer directory and says why.
	newer := FormatVersion + 1
	db := openRaw(t, dir)
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set(keyFormat, []byte(fmt.Sprint(newer))) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, Options{Dir: dir, Logger: quietLogger()})
	if !errors.Is(err, ErrFormatVersion) {
		t.Fatalf("format %d build on a format %d directory: %v", FormatVersion, newer, err)
	}
	for _, s := range []string{dir, fmt.Sprintf("format %d", newer), "newer moongate", fmt.Sprintf("formats up to %d", FormatVersion), "downgrading is not supported"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal %q does not say %q", err, s)
		}
	}
}

func TestMigrateNoPath(t *testing.T) {
	dir, _ := oldDataDir(t)
	var runs []string
	plan := syntheticPlan(&runs, 0)
	plan.steps = plan.steps[:1] // only 2->3: no way from 1
	_, err := Open(context.Background(), Options{Dir: dir, Logger: quietLogger(), plan: plan})
	if !errors.Is(err, ErrFormatVersion) || len(runs) != 0 {
		t.Fatalf("no migration path: %v (steps %v)", err, runs)
	}
	for _, s := range []string{"format 1", "this build (format 3)", "no migration from it", "intermediate release"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal %q does not say %q", err, s)
		}
	}
	if got := formatOf(t, dir); got != 1 {
		t.Fatalf("format changed to %d by a refused open", got)
	}
}

func countPrefix(t *testing.T, dir, prefix string) int {
	t.Helper()
	db := openRaw(t, dir)
	defer db.Close()
	n := 0
	_ = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n
}

// openRaw opens the Badger database of dir with the store's own sizing
// (Badger's defaults map 1 GiB value-log files: too much for 32-bit).
func openRaw(t *testing.T, dir string) *badger.DB {
	t.Helper()
	o := Options{Dir: dir, Logger: quietLogger()}
	if err := o.withDefaults(); err != nil {
		t.Fatal(err)
	}
	db, err := badger.Open(o.badgerOptions())
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// TestMigrateRelease: this release's own steps bring a format-1 directory
// to FormatVersion with its data intact, and a new directory is written at
// FormatVersion.
func TestMigrateRelease(t *testing.T) {
	ctx := context.Background()
	dir, recs := oldDataDir(t)
	s, err := Open(ctx, Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := s.QueryRecords(ctx, Query{Limit: 100})
	if err != nil || len(got) != len(recs) || s.InboxLen() != 3 {
		t.Fatalf("after migrating: %d records (want %d), inbox %d, %v", len(got), len(recs), s.InboxLen(), err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := formatOf(t, dir); n != FormatVersion {
		t.Fatalf("format %d after migrating, want %d", n, FormatVersion)
	}
	fresh := openTest(t, Options{})
	_ = fresh.Close()
	if n := formatOf(t, fresh.opts.Dir); n != FormatVersion {
		t.Fatalf("new directory is format %d, want %d", n, FormatVersion)
	}
}

// format2IndexKeys are the four index keys format 2 wrote per record:
// 'x' kind name 0x00 ts seq, for time (empty name), stream, function and
// device (the last three when not empty).
func format2IndexKeys(r *Record) [][]byte {
	key := func(kind byte, name string) []byte {
		k := append([]byte{pIndexV2, kind}, name...)
		k = append(k, 0)
		k = binary.BigEndian.AppendUint64(k, tsBits(recordTS(r)))
		return binary.BigEndian.AppendUint64(k, r.Seq)
	}
	ks := [][]byte{key('t', "")}
	for _, x := range []struct {
		kind byte
		name string
	}{{'s', r.Stream}, {'f', r.Function}, {'d', r.Device}} {
		if x.name != "" {
			ks = append(ks, key(x.kind, x.name))
		}
	}
	return ks
}

// TestMigrateFormat2Index: a format-2 directory (four index keys per
// record) is reindexed with one key per record, its old keys dropped, and
// every query answers as before; running the step again changes nothing.
func TestMigrateFormat2Index(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{plan: &formatPlan{version: 2, steps: migrations[:1]}})
	var recs []Record
	for i := range 90 {
		r := Record{Stream: fmt.Sprintf("s%d", i%3), Function: fmt.Sprintf("f%d", i%2), Device: fmt.Sprintf("d%d", i%5),
			EventTS: int64(5000 - (i%7)*100 + i), Data: []byte(fmt.Sprintf(`{"v":%d}`, i))}
		if i%10 == 0 {
			r.Device, r.EventTS = "", 0 // no device, indexed by processing time
		}
		res, err := s.Commit(ctx, &Commit{Records: []Record{r}})
		must(t, err)
		recs = append(recs, res.Records[0])
	}
	must(t, s.Close())
	// Rewrite the index as format 2 had it. Also: a format-3 key left by an
	// earlier attempt for a record dropped since, and one record that
	// cannot be decoded (it must not stop the upgrade).
	db := openRaw(t, s.opts.Dir)
	stale := Record{Stream: "gone", Function: "f", Device: "d", Seq: 999_999, EventTS: 1}
	bad := recs[5]
	err := db.Update(func(txn *badger.Txn) error {
		for i := range recs {
			if err := txn.Delete(indexKey(&recs[i])); err != nil {
				return err
			}
			for _, k := range format2IndexKeys(&recs[i]) {
				if err := txn.Set(k, nil); err != nil {
					return err
				}
			}
		}
		if err := txn.Set(indexKey(&stale), nil); err != nil {
			return err
		}
		return txn.Set(seqKey(pRecord, bad.Seq), []byte{tagRecord, 0xff})
	})
	must(t, err)
	must(t, db.Close())
	if n := countPrefix(t, s.opts.Dir, "x"); n < 3*len(recs) {
		t.Fatalf("format-2 directory has %d old index keys", n)
	}

	s2, err := Open(ctx, Options{Dir: s.opts.Dir, Logger: quietLogger()})
	must(t, err)
	recs = slices.DeleteFunc(recs, func(r Record) bool { return r.Seq == bad.Seq })
	queries := []Query{{}, {Stream: "s1"}, {Function: "f0", Desc: true}, {Device: "d3"}, {Stream: "s2", Device: "d4"}, {From: 4800, To: 5000}}
	for _, q := range queries {
		var want []uint64
		for _, r := range sortedRecords(recs, q.Desc) {
			ts := recordTS(&r)
			if q.match(&r) && (q.From == 0 || ts >= q.From) && (q.To == 0 || ts < q.To) {
				want = append(want, r.Seq)
			}
		}
		q.Limit = 1000
		got, _, err := s2.QueryRecords(ctx, q)
		must(t, err)
		var seqs []uint64
		for _, r := range got {
			seqs = append(seqs, r.Seq)
		}
		if fmt.Sprint(seqs) != fmt.Sprint(want) {
			t.Fatalf("%+v after migrating: %v, want %v", q, seqs, want)
		}
	}
	must(t, s2.Close())
	if n := countPrefix(t, s.opts.Dir, "x"); n != 0 {
		t.Fatalf("%d format-2 index keys left", n)
	}
	if n := countPrefix(t, s.opts.Dir, "X"); n != len(recs) {
		t.Fatalf("%d index keys for %d records", n, len(recs))
	}
	db = openRaw(t, s.opts.Dir)
	must(t, reindexRecords(ctx, db, quietLogger()))
	must(t, db.Close())
	if n := countPrefix(t, s.opts.Dir, "X"); n != len(recs) {
		t.Fatalf("the step run again left %d index keys for %d records", n, len(recs))
	}
}

// sortedRecords returns recs by (record time, sequence), reversed if desc.
func sortedRecords(recs []Record, desc bool) []Record {
	out := slices.Clone(recs)
	slices.SortStableFunc(out, func(a, b Record) int {
		if c := cmp.Compare(recordTS(&a), recordTS(&b)); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	if desc {
		slices.Reverse(out)
	}
	return out
}

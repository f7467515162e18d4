package store

import (
	"context"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// TestAgeRetentionPastHeadStampedInFuture: age retention goes on past the
// head of a queue when that head was written while the clock was ahead
// (a bad RTC reading, a wrong manual date, corrected since). The retention
// pass stopped at the first entry not expired: such a head, kept until
// the clock reached its stamp, held back every entry written after it,
// however old, and an age-only quota let the store grow without bound.
//
// Entries are written in sequence order, so the head was written before
// the first later entry stamped no later than now: once that one is older
// than MaxAge, so is the head, and both go (records and their outbox
// entries alike: the outbox's own MaxAge is the documented drop policy).
// While no later entry is expired, or every later entry is stamped in the
// future too, the head stays.
//
// The clock-ahead writes are simulated by rewriting the first entries'
// values with a write time a year ahead (the store has no clock to inject).
func TestAgeRetentionPastHeadStampedInFuture(t *testing.T) {
	ageRetentionPastUnbelievableHead(t, time.Now().Add(365*24*time.Hour).UnixMilli())
}

// TestAgeRetentionKeepsEntriesWrittenBeforeNTP: a Pi without a clock
// boots in 1970 and writes with that time until NTP sets the clock. At the
// first retention pass after that, every entry written before it was
// "older than MaxAge" and went: dead letters of that boot's failed events,
// logs, and with an outbox max_age records not sent yet. Such a stamp
// (before 2025) is not believed: the entry's age is bounded by the first
// later entry with a believable stamp, as for entries from the future.
func TestAgeRetentionKeepsEntriesWrittenBeforeNTP(t *testing.T) {
	ageRetentionPastUnbelievableHead(t, (5 * time.Minute).Milliseconds()) // 1970-01-01 00:05 UTC
}

// ageRetentionPastUnbelievableHead checks age retention of records and
// their outbox entries when the first three were written with the wall
// time stamp (ms), not believable: kept while no entry after them has a
// believable stamp older than MaxAge, dropped with the first ones that do.
func ageRetentionPastUnbelievableHead(t *testing.T, stamp int64) {
	ctx := context.Background()
	const maxAge = 100 * time.Millisecond
	s := openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour, Quotas: map[string]Quota{
		SpaceRecords: {MaxAge: maxAge},
		SpaceOutbox:  {MaxAge: maxAge},
	}})
	commit := func(n int) []Record {
		t.Helper()
		var out []Record
		for i := 0; i < n; i++ {
			res, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Device: "d", EventTS: 1, Data: []byte(`{}`), Targets: []string{"up"}}}})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, res.Records...)
		}
		return out
	}
	stampAhead := func(rs []Record) {
		t.Helper()
		if err := s.db.Update(func(txn *badger.Txn) error {
			for i := range rs {
				v := encodeRecord(&rs[i], stamp)
				if err := txn.Set(seqKey(pRecord, rs[i].Seq), v); err != nil {
					return err
				}
				// Outbox sequences are the records' here: one target.
				if err := txn.Set(nameSeqKey(pOutbox, "up", rs[i].Seq), v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	counts := func() (records, outbox int64) {
		st := s.Stats().Spaces
		return st[SpaceRecords].Count, s.OutboxStats("up").Backlog
	}
	retention := func() {
		t.Helper()
		if _, err := s.RunRetention(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Three entries stamped a year ahead, then nothing else: kept.
	ahead := commit(3)
	if ahead[0].Seq != 1 {
		t.Fatalf("first record seq %d, want 1 (outbox sequences are assumed the same)", ahead[0].Seq)
	}
	stampAhead(ahead)
	time.Sleep(2 * maxAge)
	retention()
	if r, o := counts(); r != 3 || o != 3 {
		t.Fatalf("with only entries stamped %s: %d records, %d in the outbox kept, want 3 and 3", time.UnixMilli(stamp).UTC(), r, o)
	}
	// Entries written after them, not yet expired: nothing goes.
	commit(5)
	retention()
	if r, o := counts(); r != 8 || o != 8 {
		t.Fatalf("with later entries not expired: %d records, %d in the outbox kept, want 8 and 8", r, o)
	}
	// Once those are older than MaxAge, the entries stamped ahead (written
	// before them) go too, and with them everything expired.
	time.Sleep(2 * maxAge)
	young := commit(2)
	retention()
	if r, o := counts(); r != 2 || o != 2 {
		t.Fatalf("later entries expired: %d records, %d in the outbox kept, want the 2 young ones", r, o)
	}
	recs, _, err := s.QueryRecords(ctx, Query{Stream: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Seq != young[0].Seq || recs[1].Seq != young[1].Seq {
		t.Fatalf("records kept: %+v, want seqs %d and %d", recs, young[0].Seq, young[1].Seq)
	}
	st := s.Stats().Spaces[SpaceRecords]
	if st.Drops != 8 {
		t.Fatalf("records drops %d, want 8 (%+v)", st.Drops, st)
	}
	if d := s.OutboxStats("up").Dropped; d != 8 {
		t.Fatalf("outbox drops %d, want 8", d)
	}
}

// TestAgeRetentionPastLongRunStampedInFuture: a run of entries stamped in
// the future longer than one retention request reads (aheadScan) is read
// through in the same pass, a request at a time.
func TestAgeRetentionPastLongRunStampedInFuture(t *testing.T) {
	ctx := context.Background()
	const maxAge = 50 * time.Millisecond
	s := openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour, Quotas: map[string]Quota{
		SpaceLogs: {MaxAge: maxAge},
	}})
	const ahead = 2200 // more than twice aheadScan (1024)
	for i := 0; i < ahead; i += 100 {
		c := &Commit{}
		for j := 0; j < 100; j++ {
			c.Logs = append(c.Logs, LogRecord{Function: "f", Msg: "ahead"})
		}
		if _, err := s.Commit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	future := time.Now().Add(24 * time.Hour).UnixMilli()
	if err := s.db.Update(func(txn *badger.Txn) error {
		for seq := uint64(1); seq <= ahead; seq++ {
			v, err := txn.Get(seqKey(pLog, seq))
			if err != nil {
				return err
			}
			var l LogRecord
			if err := v.Value(func(b []byte) error { l, err = decodeLog(seq, b); return err }); err != nil {
				return err
			}
			if err := txn.Set(seqKey(pLog, seq), encodeLog(&l, future)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, &Commit{Logs: []LogRecord{{Function: "f", Msg: "behind"}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * maxAge)
	n, err := s.RunRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats().Spaces[SpaceLogs]; n != ahead+1 || st.Count != 0 || st.Drops != ahead+1 {
		t.Fatalf("one pass dropped %d, logs %+v; want all %d gone", n, st, ahead+1)
	}
}

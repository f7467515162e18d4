package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

func commitRecords(t testing.TB, s *Store, n int, targets ...string) []Record {
	t.Helper()
	var out []Record
	for i := 0; i < n; i++ {
		res, err := s.Commit(context.Background(), &Commit{Records: []Record{{Stream: "s", Device: "d", EventTS: int64(1000 + i),
			Data: []byte(fmt.Sprintf(`{"v":%d,"pad":"%032d"}`, i, i)), Targets: targets}}})
		if err != nil {
			t.Fatalf("Commit %d: %v", i, err)
		}
		out = append(out, res.Records...)
	}
	return out
}

func TestOutboxQuotaDropOldest(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	// Learn the size of one outbox entry, then set a quota of exactly 10.
	commitRecords(t, s, 1, "probe")
	size := s.OutboxStats("probe").Bytes
	if size <= 0 {
		t.Fatalf("probe size %d", size)
	}
	_ = s.Close()
	o := s.opts
	o.Quotas = map[string]Quota{"outbox:up": {MaxBytes: 10 * size}}
	s = openTest(t, o)
	recs := commitRecords(t, s, 25, "up", "other")
	// The same records sit unbounded in "other": the newest suffix that fits
	// in the quota must be exactly what "up" kept.
	all, err := s.OutboxRead(ctx, "other", 0, 100, 0)
	if err != nil || len(all) != 25 {
		t.Fatalf("other: %d, %v", len(all), err)
	}
	kept, bytes := 0, int64(0)
	for i := len(all) - 1; i >= 0 && bytes+int64(all[i].Size) <= 10*size; i-- {
		kept++
		bytes += int64(all[i].Size)
	}
	st := s.OutboxStats("up")
	if kept < 9 || st.Backlog != int64(kept) || st.Dropped != int64(25-kept) || st.Bytes != bytes {
		t.Fatalf("outbox up: %+v, want backlog %d, dropped %d, bytes %d", st, kept, 25-kept, bytes)
	}
	es, err := s.OutboxRead(ctx, "up", 0, 100, 0)
	if err != nil || len(es) != kept {
		t.Fatalf("OutboxRead: %d entries, %v", len(es), err)
	}
	for i, e := range es {
		if e.Record.ID != recs[25-kept+i].ID {
			t.Fatalf("entry %d is %s, want %s (exactly the oldest must be dropped)", i, e.Record.ID, recs[25-kept+i].ID)
		}
	}
	if s.OutboxStats("other").Dropped != 0 || s.OutboxStats("other").Backlog != 25 {
		t.Fatalf("other outbox: %+v", s.OutboxStats("other"))
	}
	dropped := int64(25 - kept)
	if got := s.Stats().Spaces["outbox:up"].Drops; got != dropped {
		t.Fatalf("Stats drops %d", got)
	}
	// The counters survive a restart.
	s = reopen(t, s)
	if st := s.OutboxStats("up"); st.Dropped != dropped || st.Backlog != int64(kept) {
		t.Fatalf("after reopen: %+v", st)
	}
	// Ack is a cursor: the rest stays in order.
	if err := s.OutboxAck(ctx, "up", es[4].Seq); err != nil {
		t.Fatal(err)
	}
	es2, _ := s.OutboxRead(ctx, "up", 0, 100, 0)
	if len(es2) != kept-5 || es2[0].Seq != es[5].Seq {
		t.Fatalf("after ack: %d entries, first %v", len(es2), es2)
	}
	if st := s.OutboxStats("up"); st.Backlog != int64(kept-5) || st.Dropped != dropped {
		t.Fatalf("after ack: %+v", st)
	}
	// maxBytes bounds a read, but one entry always comes.
	if es3, _ := s.OutboxRead(ctx, "up", 0, 100, es2[0].Size+es2[1].Size); len(es3) != 2 {
		t.Fatalf("maxBytes read: %d entries", len(es3))
	}
	if es3, _ := s.OutboxRead(ctx, "up", 0, 100, 1); len(es3) != 1 {
		t.Fatalf("tiny maxBytes read: %d entries", len(es3))
	}
}

func TestQuotaRejectNew(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, Quotas: map[string]Quota{
		SpaceRecords: {MaxBytes: 1000, Policy: RejectNew},
		SpaceInbox:   {MaxBytes: 300},
	}})
	n := 0
	var err error
	for ; n < 100; n++ {
		if _, err = s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: make([]byte, 100)}}}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrQuota) || n == 0 || n > 10 || IsPermanent(err) {
		t.Fatalf("after %d records: %v, want ErrQuota (not permanent)", n, err)
	}
	// A write larger than the whole quota can never fit: permanent.
	if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Data: make([]byte, 2000)}}}); !errors.Is(err, ErrQuota) || !IsPermanent(err) {
		t.Fatalf("a record larger than the quota: %v, want a permanent ErrQuota", err)
	}
	if st := s.Stats().Spaces[SpaceRecords]; st.Rejected != 2 || st.Drops != 0 || st.Count != int64(n) {
		t.Fatalf("records stats %+v", st)
	}
	var seqs []uint64
	for i := 0; i < 100; i++ {
		sq, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: make([]byte, 50)}})
		if errors.Is(err, ErrQuota) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, sq...)
	}
	if len(seqs) == 0 || len(seqs) > 6 {
		t.Fatalf("inbox accepted %d entries of 50 bytes under a 300-byte quota", len(seqs))
	}
	// Consuming makes room again.
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: make([]byte, 50)}}); err != nil {
		t.Fatalf("Enqueue after consuming: %v", err)
	}
}

func TestRetentionByAgeAndBytes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour, Quotas: map[string]Quota{
		SpaceRecords: {MaxAge: 50 * time.Millisecond},
		SpaceLogs:    {MaxBytes: 200},
	}})
	commitRecords(t, s, 5)
	for i := 0; i < 10; i++ {
		if _, err := s.Commit(ctx, &Commit{Logs: []LogRecord{{Function: "f", Msg: fmt.Sprintf("line %02d with some text", i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats().Spaces[SpaceLogs]; st.Bytes > 200 || st.Drops == 0 {
		t.Fatalf("logs over quota: %+v", st)
	}
	logs, _ := s.QueryLogs(ctx, "f", "", 0, 100)
	if int64(len(logs)) != s.Stats().Spaces[SpaceLogs].Count || logs[len(logs)-1].Msg != "line 09 with some text" {
		t.Fatalf("logs kept: %+v", logs)
	}
	// Age: run passes until every record is older than MaxAge and gone (on
	// a loaded machine the five commits can span more than MaxAge, so one
	// pass may drop only the first ones).
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Spaces[SpaceRecords].Count > 0 && time.Now().Before(deadline) {
		if _, err := s.RunRetention(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := s.Stats().Spaces[SpaceRecords]
	if st.Count != 0 || st.Drops != 5 {
		t.Fatalf("records after age retention: %+v", st)
	}
	if recs, _, _ := s.QueryRecords(ctx, Query{Stream: "s"}); len(recs) != 0 {
		t.Fatalf("query still finds %d dropped records", len(recs))
	}
}

// TestBatchSplitsIntoTransactions: a group of large commits does not fit in
// one Badger transaction; the committer splits the group between commits
// (never inside one) and everything arrives.
func TestBatchSplitsIntoTransactions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	const writers, perWriter, recs = 16, 4, 60
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func() {
			for i := 0; i < perWriter; i++ {
				c := &Commit{}
				for j := 0; j < recs; j++ {
					c.Records = append(c.Records, Record{Stream: "big", Device: fmt.Sprint(w), Data: make([]byte, 900), Targets: []string{"up"}})
				}
				if _, err := s.Commit(ctx, c); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	want := int64(writers * perWriter * recs)
	if st := s.Stats(); st.Spaces[SpaceRecords].Count != want || st.Spaces["outbox:up"].Count != want {
		t.Fatalf("stats %+v, want %d records", st.Spaces, want)
	}
	if st := s.Stats(); st.Writes != writers*perWriter || st.Transactions <= st.Batches {
		t.Fatalf("%d writes, %d batches, %d transactions: no batch was split", st.Writes, st.Batches, st.Transactions)
	}
	s = reopen(t, s)
	n := 0
	for cur := ""; ; {
		rs, next, err := s.QueryRecords(ctx, Query{Stream: "big", Limit: 1000, Cursor: cur})
		if err != nil {
			t.Fatal(err)
		}
		n += len(rs)
		if next == "" {
			break
		}
		cur = next
	}
	if int64(n) != want {
		t.Fatalf("%d records after reopen, want %d", n, want)
	}
}

// Usage meters (one per function and minute) older than the usage quota's
// MaxAge are deleted by retention, for every function (names that are
// prefixes of others included); newer ones stay and still sum up. The
// default keeps 90 days.
func TestUsageRetention(t *testing.T) {
	ctx := context.Background()
	meter := func(s *Store, fn string, ts int64) {
		t.Helper()
		if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: fn, TS: ts, Invocations: 1, Steps: 3}}); err != nil {
			t.Fatal(err)
		}
	}
	s := openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour, Quotas: map[string]Quota{
		SpaceUsage: {MaxAge: time.Hour},
	}})
	now := time.Now().UnixMilli()
	fns := []string{"f1", "f10", "f2"}
	for _, fn := range fns {
		for m := range 400 { // 400 minutes back: 340 of them older than an hour
			meter(s, fn, now-int64(m)*60_000)
		}
	}
	n, err := s.RunRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	us, err := s.QueryUsage(ctx, "", 0, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]int{}
	for _, u := range us {
		if u.TS < now-time.Hour.Milliseconds()-60_000 {
			t.Fatalf("meter of %s at %d kept, more than an hour before %d", u.Function, u.TS, now)
		}
		if u.Invocations != 1 || u.Steps != 3 {
			t.Fatalf("meter %+v changed", u)
		}
		kept[u.Function]++
	}
	for _, fn := range fns {
		if k := kept[fn]; k < 59 || k > 62 {
			t.Errorf("%s: %d meters kept, want the last hour's (about 60)", fn, k)
		}
	}
	if want := 3*400 - len(us); n != want {
		t.Errorf("retention reported %d drops, %d meters are gone", n, want)
	}
	if n, err := s.RunRetention(ctx); err != nil || n != 0 {
		t.Fatalf("second pass dropped %d (%v)", n, err)
	}

	// The default: 90 days.
	s = openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour})
	day := 24 * time.Hour.Milliseconds()
	meter(s, "f", now-100*day)
	meter(s, "f", now-80*day)
	if _, err := s.RunRetention(ctx); err != nil {
		t.Fatal(err)
	}
	us, err = s.QueryUsage(ctx, "f", 0, 0, time.Minute)
	if err != nil || len(us) != 1 || us[0].TS > now-79*day {
		t.Fatalf("usage after the default retention: %+v %v", us, err)
	}
}

// TestUsageRowsBounded: a usage query of more than MaxUsageRows rows is
// refused (it built them all in memory: ~0.9 KB each, 129,600 per function
// for minute buckets over the 90 days kept); a wider bucket answers.
func TestUsageRowsBounded(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	base := time.Now().Add(-30 * 24 * time.Hour).UnixMilli()
	for m := range MaxUsageRows + 1 {
		if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: "f", TS: base + int64(m)*60_000, Invocations: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.QueryUsage(ctx, "f", 0, 0, time.Minute); !errors.Is(err, ErrInvalid) {
		t.Fatalf("%d minute rows: %v, want ErrInvalid", MaxUsageRows+1, err)
	}
	us, err := s.QueryUsage(ctx, "f", 0, 0, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, u := range us {
		n += u.Invocations
	}
	if n != MaxUsageRows+1 {
		t.Fatalf("daily rows sum to %d invocations, want %d", n, MaxUsageRows+1)
	}
}

// TestDeadLetterDropsLogged: dead letters dropped by the quota are logged
// (at most once a minute, with the count): events that can no longer be
// replayed, which only a counter said before.
func TestDeadLetterDropsLogged(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	s := openTest(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Quotas: map[string]Quota{SpaceDeadLetters: {MaxBytes: 2000}}})
	for i := range 10 {
		if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "f", Event: bytes.Repeat([]byte{'e'}, 500), Error: fmt.Sprint("boom ", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Stats().Spaces[SpaceDeadLetters].Drops; n == 0 {
		t.Fatal("no dead letter dropped: the test does not test it")
	}
	if got := strings.Count(logs.String(), "dead letters dropped"); got != 1 {
		t.Fatalf("%d log lines of dropped dead letters, want 1 (a minute apart at most):\n%s", got, logs.String())
	}
}

// TestStateQuotaPerFunction: a function's state (keys and values) is
// bounded by the state quota, per function: a commit that would take it
// over is refused whole (ErrStateQuota, an ErrQuota, permanent), another
// function's state is not affected, a change that shrinks it is always
// taken, and the sizes are read back from disk at open. Values both
// inline and in the value log (over the 4 KiB threshold).
func TestStateQuotaPerFunction(t *testing.T) {
	ctx := context.Background()
	for _, size := range []int{1000, 6000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			one := int64(len(stateKey("a", "k1")) + size)
			o := Options{Quotas: map[string]Quota{SpaceState: {MaxBytes: 2*one + one/2}}}
			s := openTest(t, o)
			val := []byte(`"` + strings.Repeat("x", size-2) + `"`)
			set := func(fn, key string, v []byte, more ...StateChange) error {
				_, err := s.Commit(ctx, &Commit{
					Records: []Record{{Stream: "s", Data: []byte(`{}`)}},
					State:   append([]StateChange{{Function: fn, Op: StateSet, Key: key, Value: v}}, more...),
				})
				return err
			}
			for _, k := range []string{"k1", "k2"} {
				if err := set("a", k, val); err != nil {
					t.Fatalf("a/%s within the quota: %v", k, err)
				}
			}
			err := set("a", "k3", val)
			if !errors.Is(err, ErrStateQuota) || !errors.Is(err, ErrQuota) || !IsPermanent(err) {
				t.Fatalf("a/k3 over the quota: %v, want ErrStateQuota (an ErrQuota, permanent)", err)
			}
			if _, ok, _ := s.GetState(ctx, "a", "k3"); ok {
				t.Fatal("the refused change was stored")
			}
			if recs, _, _ := s.QueryRecords(ctx, Query{Stream: "s", Limit: 10}); len(recs) != 2 {
				t.Fatalf("%d records: the refused commit's record was stored", len(recs))
			}
			// The same value again (no growth) and another function.
			if err := set("a", "k2", val); err != nil {
				t.Fatalf("a/k2 rewritten: %v", err)
			}
			for _, k := range []string{"k1", "k2"} {
				if err := set("b", k, val); err != nil {
					t.Fatalf("b/%s: %v", k, err)
				}
			}
			// Growing one key while deleting another in the same commit.
			if err := set("a", "k3", val, StateChange{Function: "a", Op: StateDelete, Key: "k1"}); err != nil {
				t.Fatalf("a/k3 set with a/k1 deleted: %v", err)
			}
			// A key made smaller.
			if err := set("a", "k1", []byte(`1`)); err != nil {
				t.Fatalf("a/k1 small: %v", err)
			}
			_ = s.Close()
			s = openTest(t, Options{Dir: s.opts.Dir, Quotas: o.Quotas})
			if err := set("a", "k4", val); !errors.Is(err, ErrStateQuota) {
				t.Fatalf("after reopening, a/k4 over the quota: %v", err)
			}
			if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "a", Op: StateDelete, Key: "k2"}}}); err != nil {
				t.Fatal(err)
			}
			if err := set("a", "k4", val); err != nil {
				t.Fatalf("after a delete, a/k4: %v", err)
			}
			if err := set("a", "k5", val); !errors.Is(err, ErrStateQuota) {
				t.Fatalf("a/k5 over the quota: %v", err)
			}
		})
	}
}

// TestDropOldestIsPerFunction: dead letters and logs over their quota drop
// the oldest entries of the function holding the most bytes, not the
// oldest of all: function a flooding both spaces pushes out its own
// entries, b's stay. The sizes per function come back at open, from the
// index values, and from the entries for index keys written before those
// held a size.
func TestDropOldestIsPerFunction(t *testing.T) {
	ctx := context.Background()
	o := Options{Quotas: map[string]Quota{SpaceDeadLetters: {MaxBytes: 16 << 10}, SpaceLogs: {MaxBytes: 16 << 10}}}
	s := openTest(t, o)
	write := func(fn string, i int) {
		t.Helper()
		pad := strings.Repeat("p", 200)
		if _, err := s.Commit(ctx, &Commit{
			DeadLetter: &DeadLetter{Function: fn, Key: "k", Event: []byte(pad), Error: fmt.Sprint("boom ", i)},
			Logs:       []LogRecord{{Function: fn, Level: "info", Msg: fmt.Sprint("line ", i, pad)}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		write("b", i)
	}
	last := 0 // a's newest
	check := func(when string) {
		t.Helper()
		dls, err := s.ListDeadLetters(ctx, "b", 0, 100)
		if err != nil || len(dls) != 5 {
			t.Fatalf("%s: b has %d dead letters (%v), want its 5", when, len(dls), err)
		}
		logs, err := s.QueryLogs(ctx, "b", "", 0, 100)
		if err != nil || len(logs) != 5 {
			t.Fatalf("%s: b has %d log lines (%v), want its 5", when, len(logs), err)
		}
		st := s.Stats().Spaces
		if st[SpaceDeadLetters].Drops == 0 || st[SpaceLogs].Drops == 0 {
			t.Fatalf("%s: nothing dropped (%+v, %+v): the test did not fill the quotas", when, st[SpaceDeadLetters], st[SpaceLogs])
		}
		if st[SpaceDeadLetters].Bytes > 16<<10 || st[SpaceLogs].Bytes > 16<<10 {
			t.Fatalf("%s: over the quota: %+v, %+v", when, st[SpaceDeadLetters], st[SpaceLogs])
		}
		newest, err := s.ListDeadLetters(ctx, "a", 0, 1000)
		if err != nil || len(newest) == 0 || newest[len(newest)-1].Error != fmt.Sprint("boom ", last) {
			t.Fatalf("%s: a's newest dead letter missing", when)
		}
	}
	for i := range 200 {
		write("a", i)
		last = i
	}
	check("flood")
	sizes := maps.Clone(s.deadBytes)
	logSizes := maps.Clone(s.logBytes)

	// The index values as written before they held sizes.
	_ = s.Close()
	bo := s.opts
	db, err := badger.Open(bo.badgerOptions())
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pDeadIdx}})
		var keys [][]byte
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		it.Close()
		for _, k := range keys {
			if err := txn.Set(k, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Dir: s.opts.Dir, Quotas: o.Quotas})
	if !maps.Equal(s.deadBytes, sizes) || !maps.Equal(s.logBytes, logSizes) {
		t.Fatalf("sizes at open: dead letters %v, logs %v; before %v, %v", s.deadBytes, s.logBytes, sizes, logSizes)
	}
	for i := range 100 {
		write("a", 200+i)
		last = 200 + i
	}
	check("after reopening")
	// Deleting a dead letter takes it off its function's size.
	dls, _ := s.ListDeadLetters(ctx, "b", 0, 1)
	before := s.deadBytes["b"]
	if err := s.DeleteDeadLetter(ctx, dls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if after := s.deadBytes["b"]; after >= before {
		t.Fatalf("b's dead letters: %d bytes after a delete, %d before", after, before)
	}
}

// TestStateSizeExactOnOverwrite: a value in the value log of 16 KiB or
// more, overwritten 1,000 times: Badger's Item.ValueSize overestimates it
// by a byte or two (its 6-byte header guess), which, subtracted at every
// overwrite, let the function's state size drift down (by 1,998 bytes
// here: the quota was no longer enforced).
func TestStateSizeExactOnOverwrite(t *testing.T) {
	ctx := context.Background()
	const size = 20000
	key := strings.Repeat("k", 200) // header klen varint of 2 bytes: one more
	one := int64(len(stateKey("a", key)) + size)
	o := Options{Durability: DurabilityNone, Quotas: map[string]Quota{SpaceState: {MaxBytes: one + 1000}}}
	s := openTest(t, o)
	overwrites := 1000
	if testing.Short() {
		overwrites = 200 // the QEMU run (the drift was 2 bytes each)
	}
	for i := 0; i < overwrites; i++ {
		val := []byte(fmt.Sprintf(`"%0*d"`, size-2, i))
		if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "a", Op: StateSet, Key: key, Value: val}}}); err != nil {
			t.Fatalf("overwrite %d: %v", i, err)
		}
	}
	t.Logf("real state of a: %d bytes; stateBytes: %d", one, s.stateBytes["a"])
	// 1,102 more bytes take a's state (one) over its quota (one + 1000):
	// by less than the drift of even the short run (200 x 2 bytes).
	small := []byte(`"` + strings.Repeat("y", 1096) + `"`)
	_, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "a", Op: StateSet, Key: "x", Value: small}}})
	if !errors.Is(err, ErrStateQuota) {
		t.Fatalf("a/x takes a's state to %d bytes, quota %d: err %v, want ErrStateQuota (stateBytes %d)",
			one+int64(len(stateKey("a", "x"))+len(small)), one+1000, err, s.stateBytes["a"])
	}
}

// TestStateSizeOfAKeyTheBatchWrote: commits of one group commit that
// overwrite the same key with a value over the read cache's 512 bytes: the
// second read the size of the first's pending write through Badger's
// transaction, whose Item.ValueSize is 0 for a pending write, so the state
// size grew by the whole old value each time (430 of 500 same-size
// overwrites were refused).
func TestStateSizeOfAKeyTheBatchWrote(t *testing.T) {
	ctx := context.Background()
	const size = 1000
	one := int64(len(stateKey("a", "k")) + size)
	o := Options{Durability: DurabilityNone, Quotas: map[string]Quota{SpaceState: {MaxBytes: 3 * one}}}
	s := openTest(t, o)
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				val := []byte(fmt.Sprintf(`"%0*d"`, size-2, g*100+i))
				if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "a", Op: StateSet, Key: "k", Value: val}}}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	var first error
	for err := range errs {
		if n == 0 {
			first = err
		}
		n++
	}
	// a's state is one key of one bytes all along (quota: 3 of them).
	if n > 0 {
		t.Fatalf("%d of 500 overwrites of a/k (%d bytes, quota %d) refused, first: %v", n, one, 3*one, first)
	}
	if _, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "a", Op: StateSet, Key: "k2", Value: []byte(`1`)}}}); err != nil {
		t.Fatalf("a/k2 (a's state %d bytes, quota %d): %v", one, 3*one, err)
	}
	t.Logf("batches %d for 500 commits", s.batches.Load())
}

// holdBatch holds the committer, runs queue (which must queue n requests),
// then releases it: the queued requests form one batch.
func holdBatch(t *testing.T, s *Store, n int, queue func()) {
	t.Helper()
	ctx := context.Background()
	hold, held := make(chan struct{}), make(chan struct{})
	blocked := make(chan error, 1)
	go func() {
		blocked <- s.submit(ctx, &request{fn: func(*batch) error { close(held); <-hold; return nil }})
	}()
	<-held
	queue()
	waitQueued(t, s, n)
	close(hold)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
}

func deadLetter(fn string, pad int) *Commit {
	return &Commit{DeadLetter: &DeadLetter{Function: fn, Key: "k", Event: []byte(strings.Repeat("p", pad)), Error: "boom"}}
}

// deadTruth returns the stored dead letters' count and bytes, and the
// count per function.
func deadTruth(t *testing.T, s *Store) (int64, int64, map[string]int) {
	t.Helper()
	var n, bytes int64
	per := map[string]int{}
	err := s.view(context.Background(), func(txn *badger.Txn) error {
		return scanSeqCtx(context.Background(), txn, pDead, 0, 0, func(seq uint64, v []byte) error {
			d, _ := decodeDead(seq, v)
			n++
			bytes += int64(len(v))
			per[d.Function]++
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, bytes, per
}

// TestDropFairDropsOnce: a write over the dead letter quota whose batch
// already holds the flooding function's entries drops other entries,
// the head among them, in one request: each once (dropHead read the
// entry dropFair had just deleted again, its delete still pending in the
// request, and counted it twice: the counters said empty while 2,520
// bytes were stored).
func TestDropFairDropsOnce(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GCInterval: -1, Quotas: map[string]Quota{SpaceDeadLetters: {MaxBytes: 4000}}})
	if _, err := s.Commit(ctx, deadLetter("b", 100)); err != nil { // seq 0, head
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, deadLetter("c", 600)); err != nil { // seq 1
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	holdBatch(t, s, 2, func() {
		go func() { _, err := s.Commit(ctx, deadLetter("a", 2500)); errs <- err }()
		waitQueued(t, s, 1)
		go func() { _, err := s.Commit(ctx, deadLetter("a", 2500)); errs <- err }()
	})
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	n, bytes, per := deadTruth(t, s)
	st := s.Stats().Spaces[SpaceDeadLetters]
	t.Logf("stored: %d entries, %d bytes %v; counters: %+v; deadBytes %v", n, bytes, per, st, s.deadBytes)
	if st.Count != n || st.Bytes != bytes {
		t.Fatalf("counters Count %d Bytes %d, stored %d entries of %d bytes", st.Count, st.Bytes, n, bytes)
	}
	if want := 4 - n; st.Drops != want {
		t.Fatalf("Drops %d, %d entries were dropped", st.Drops, want)
	}
}

// TestDropFairSeesTheBatchsEntries: function a floods the dead letters
// within one group commit. Its entries written earlier in the batch are
// not in the committed snapshot dropFair reads; it dropped all of b's
// instead, a keeping the whole quota.
func TestDropFairSeesTheBatchsEntries(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GCInterval: -1, Quotas: map[string]Quota{SpaceDeadLetters: {MaxBytes: 16 << 10}}})
	for range 5 {
		if _, err := s.Commit(ctx, deadLetter("b", 200)); err != nil {
			t.Fatal(err)
		}
	}
	const n = 100
	errs := make(chan error, n)
	holdBatch(t, s, n, func() {
		for range n {
			go func() { _, err := s.Commit(ctx, deadLetter("a", 300)); errs <- err }()
		}
	})
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	_, _, per := deadTruth(t, s)
	t.Logf("stored per function: %v; stats %+v", per, s.Stats().Spaces[SpaceDeadLetters])
	if per["b"] != 5 {
		t.Fatalf("b has %d of its 5 dead letters left while a holds %d", per["b"], per["a"])
	}
}

// TestDropFairHeadSkipsHoles: when dropFair drops the head, the head
// steps over the holes it left before (it stayed behind every line of a's
// it had dropped, and the age retention walked them one read at a time in
// one request of the committer: 836 ms for 199,723 holes).
func TestDropFairHeadSkipsHoles(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GCInterval: -1, RetentionInterval: -1, Durability: DurabilityNone,
		Quotas: map[string]Quota{SpaceLogs: {MaxBytes: 64 << 10, MaxAge: 1000 * 3600e9}}})
	line := strings.Repeat("l", 100)
	logs := func(fn string, n int) *Commit {
		c := &Commit{}
		for range n {
			c.Logs = append(c.Logs, LogRecord{Function: fn, Level: "info", Msg: line})
		}
		return c
	}
	if _, err := s.Commit(ctx, logs("b", 1)); err != nil { // seq 0: the head
		t.Fatal(err)
	}
	floods := 4000
	if testing.Short() {
		floods = 400 // the QEMU run: the same holes, fewer of them
	}
	for range floods { // a floods: its own lines go
		if _, err := s.Commit(ctx, logs("a", 50)); err != nil {
			t.Fatal(err)
		}
	}
	for range 30 { // then b: now the biggest, its oldest (the head) goes
		if _, err := s.Commit(ctx, logs("b", 50)); err != nil {
			t.Fatal(err)
		}
	}
	var first uint64
	_ = s.view(ctx, func(txn *badger.Txn) error {
		return scanSeqCtx(ctx, txn, pLog, 0, 1, func(seq uint64, _ []byte) error { first = seq; return nil })
	})
	head := s.counters().Logs.Head
	start := time.Now()
	n, err := s.RunRetention(ctx)
	t.Logf("head %d, first live line %d; RunRetention (nothing to drop): %d dropped in %v, head now %d", head, first, n, time.Since(start), s.counters().Logs.Head)
	if err != nil {
		t.Fatal(err)
	}
	if head != first {
		t.Fatalf("logs head %d, first live line %d: %d holes behind the head", head, first, first-head)
	}
}

// logTruth returns the stored log lines per function.
func logTruth(t *testing.T, s *Store) map[string]int {
	t.Helper()
	per := map[string]int{}
	err := s.view(context.Background(), func(txn *badger.Txn) error {
		return scanSeqCtx(context.Background(), txn, pLog, 0, 0, func(seq uint64, v []byte) error {
			l, _ := decodeLog(seq, v)
			per[l.Function]++
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return per
}

// TestUsageDropsCounted: the usage meters dropped by age are counted
// like every other drop (Stats().Spaces["usage"], so the daemon's
// moongate_store_dropped_total{space="usage"}) and persisted with the
// data; the meters' count and bytes are kept too, and added up once from
// the keys when the counters of an earlier release have none. The
// retention pass deleted them and counted them nowhere, although every
// drop is documented as counted per key space.
func TestUsageDropsCounted(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone, RetentionInterval: time.Hour, Quotas: map[string]Quota{SpaceUsage: {MaxAge: time.Hour}}})
	now := time.Now().UnixMilli()
	old := now - 48*time.Hour.Milliseconds()
	meters := func() (n, size int64) {
		t.Helper()
		err := s.view(ctx, func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pUsage}})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				n++
				size += it.Item().ValueSize()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n, size
	}
	check := func(what string, drops int64) {
		t.Helper()
		st := s.Stats().Spaces[SpaceUsage]
		n, size := meters()
		if st.Count != n || st.Bytes != size || st.Drops != drops || (drops == 0) != (st.DropBytes == 0) {
			t.Fatalf("%s: usage stats %+v; %d meters of %d bytes stored, %d dropped", what, st, n, size, drops)
		}
	}
	for m := 0; m < 5; m++ {
		for _, fn := range []string{"f", "g"} {
			for i := 0; i < 3; i++ { // the same meter again: counted once
				if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: fn, TS: old + int64(m)*60_000, Invocations: 1, Steps: int64(1000 * i)}}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: "f", TS: now, Invocations: 1}}); err != nil {
		t.Fatal(err)
	}
	check("written", 0)
	n, err := s.RunRetention(ctx)
	if err != nil || n != 10 {
		t.Fatalf("retention dropped %d (%v), want 10", n, err)
	}
	check("after retention", 10)
	before := s.Stats().Spaces[SpaceUsage]
	s = reopen(t, s)
	if after := s.Stats().Spaces[SpaceUsage]; after != before {
		t.Fatalf("usage stats %+v before reopening, %+v after", before, after)
	}

	// Counters of an earlier release (no usage in them): the count and
	// bytes are added up from the keys at open.
	if err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(keyCounters)
		if err != nil {
			return err
		}
		var m map[string]json.RawMessage
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &m) }); err != nil {
			return err
		}
		delete(m, "usage")
		delete(m, "uc")
		b, _ := json.Marshal(m)
		return txn.Set(keyCounters, b)
	}); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	check("counters of an earlier release", 0)
	if _, err := s.Commit(ctx, &Commit{Usage: &Usage{Function: "h", TS: old, Invocations: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunRetention(ctx); err != nil {
		t.Fatal(err)
	}
	check("counters of an earlier release, after retention", 1)
}

// TestAgeRetentionRejectNewDropsOnlyExpired: a reject_new logs space over
// its (lowered) byte quota: the age retention drops the expired head, not
// young lines of the function holding most (reject_new never drops for
// bytes; it dropped 14 of 20 young lines).
func TestAgeRetentionRejectNewDropsOnlyExpired(t *testing.T) {
	ctx := context.Background()
	o := Options{Dir: t.TempDir(), GCInterval: -1, RetentionInterval: -1,
		Quotas: map[string]Quota{SpaceLogs: {MaxBytes: 1 << 20, MaxAge: 300 * time.Millisecond, Policy: RejectNew}}}
	s := openTest(t, o)
	line := strings.Repeat("l", 100)
	if _, err := s.Commit(ctx, &Commit{Logs: []LogRecord{{Function: "old", Level: "info", Msg: line}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	c := &Commit{}
	for range 20 {
		c.Logs = append(c.Logs, LogRecord{Function: "young", Level: "info", Msg: line})
	}
	if _, err := s.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	o.Quotas = map[string]Quota{SpaceLogs: {MaxBytes: 1000, MaxAge: 300 * time.Millisecond, Policy: RejectNew}}
	s = openTest(t, o)
	n, err := s.RunRetention(ctx)
	if err != nil {
		t.Fatal(err)
	}
	per := logTruth(t, s)
	t.Logf("RunRetention dropped %d; left %v", n, per)
	if per["old"] != 0 || per["young"] != 20 {
		t.Fatalf("age retention of a reject_new space left %v, want old 0 and young 20 (young lines are not expired)", per)
	}
}

// TestQueryUsageSeeksItsRange: a usage query reads the minutes of its
// range in each function (it read every minute kept and filtered them:
// 368 ms for one minute out of 4 x 90 days), with the same answers: every
// range and function filter against sums computed apart.
func TestQueryUsageSeeksItsRange(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	base := int64(1_800_000_000_000)
	base -= base % usageBucketMS
	fns := []string{"a", "a-b", "b", "c"} // "a-b" sorts inside "a"'s range of names
	const minutes = 600
	wb := s.db.NewWriteBatch()
	for i, fn := range fns {
		for m := int64(0); m < minutes; m++ {
			if err := wb.Set(nameSeqKey(pUsage, fn, tsBits(base+m*usageBucketMS)), encodeUsage(&Usage{Invocations: int64(i + 1), Steps: m})); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to int64 }{
		{0, 0}, {base, base + usageBucketMS}, {base + 10*usageBucketMS + 1, base + 20*usageBucketMS},
		{base - usageBucketMS, base + 3*usageBucketMS}, {base + (minutes-1)*usageBucketMS, 0}, {0, base + 5*usageBucketMS},
		{base + minutes*usageBucketMS, 0},
	} {
		for _, fn := range append([]string{""}, fns...) {
			us, err := s.QueryUsage(ctx, fn, c.from, c.to, 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			var inv, steps, wantInv, wantSteps int64
			for _, u := range us {
				inv += u.Invocations
				steps += u.Steps
			}
			for i, f := range fns {
				if fn != "" && f != fn {
					continue
				}
				for m := int64(0); m < minutes; m++ {
					ts := base + m*usageBucketMS
					if (c.from == 0 || ts >= c.from) && (c.to == 0 || ts < c.to) {
						wantInv += int64(i + 1)
						wantSteps += m
					}
				}
			}
			if inv != wantInv || steps != wantSteps {
				t.Fatalf("function %q [%d, %d): %d invocations %d steps, want %d %d", fn, c.from-base, c.to-base, inv, steps, wantInv, wantSteps)
			}
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.QueryUsage(cctx, "", 0, 0, time.Hour); err == nil {
		t.Fatal("a cancelled query answered")
	}
}

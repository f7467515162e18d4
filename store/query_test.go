package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestQueryRecords(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	// 3 streams x 2 devices, times deliberately out of sequence order (a
	// device's clock is behind): order is by time, ties by sequence.
	var want []Record
	for i := 0; i < 60; i++ {
		ts := int64(10_000 + (i%20)*1000)
		r := Record{Stream: fmt.Sprintf("s%d", i%3), Function: "f", Device: fmt.Sprintf("d%d", i%2), EventTS: ts,
			Data: []byte(fmt.Sprintf(`{"temp":%d,"nested":{"x":%d},"s":"str"}`, i, i%5))}
		res, err := s.Commit(ctx, &Commit{Records: []Record{r}})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, res.Records[0])
	}
	match := func(q Query) []Record {
		var out []Record
		for _, r := range want {
			ts := recordTS(&r)
			if q.match(&r) && (q.From == 0 || ts >= q.From) && (q.To == 0 || ts < q.To) {
				out = append(out, r)
			}
		}
		// stable sort by (ts, seq)
		for i := 1; i < len(out); i++ {
			for j := i; j > 0 && (out[j].EventTS < out[j-1].EventTS || (out[j].EventTS == out[j-1].EventTS && out[j].Seq < out[j-1].Seq)); j-- {
				out[j], out[j-1] = out[j-1], out[j]
			}
		}
		if q.Desc {
			for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
				out[i], out[j] = out[j], out[i]
			}
		}
		return out
	}
	queries := []Query{
		{},
		{Stream: "s1"},
		{Stream: "s1", Device: "d0"},
		{Function: "f", From: 12_000, To: 15_000},
		{Device: "d1", Desc: true},
		{Stream: "s2", From: 20_000, Desc: true},
		{To: 11_000, Desc: true},
		{Stream: "nope"},
		{From: 15_000, To: 15_000},
	}
	for _, q := range queries {
		for _, limit := range []int{1, 7, 100} {
			q.Limit = limit
			exp := match(q)
			var got []Record
			cursor := ""
			for page := 0; ; page++ {
				q.Cursor = cursor
				recs, next, err := s.QueryRecords(ctx, q)
				if err != nil {
					t.Fatalf("%+v: %v", q, err)
				}
				if len(recs) > limit {
					t.Fatalf("%+v: page of %d", q, len(recs))
				}
				got = append(got, recs...)
				if next == "" {
					break
				}
				if page > 100 {
					t.Fatal("no end of pages")
				}
				cursor = next
			}
			if len(got) != len(exp) {
				t.Fatalf("%+v: got %d records, want %d", q, len(got), len(exp))
			}
			for i := range got {
				if got[i].Seq != exp[i].Seq {
					t.Fatalf("%+v: record %d is seq %d, want %d", q, i, got[i].Seq, exp[i].Seq)
				}
			}
		}
	}
	// Cursors are checked.
	_, next, _ := s.QueryRecords(ctx, Query{Stream: "s1", Limit: 2})
	for _, c := range []string{"!!!", "AAAA", next + "x"} {
		if _, _, err := s.QueryRecords(ctx, Query{Stream: "s1", Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v, want ErrBadCursor", c, err)
		}
	}
	if _, _, err := s.QueryRecords(ctx, Query{Stream: "s2", Cursor: next}); !errors.Is(err, ErrBadCursor) {
		t.Errorf("cursor of another query: %v, want ErrBadCursor", err)
	}

	// Aggregates: per 5 s bucket over s0.
	aq := AggQuery{Query: Query{Stream: "s0"}, Field: "temp", Bucket: 5 * time.Second}
	bs, err := s.Aggregate(ctx, aq)
	if err != nil {
		t.Fatal(err)
	}
	type acc struct {
		n             int64
		min, max, sum float64
	}
	exp := map[int64]*acc{}
	for _, r := range match(aq.Query) {
		st := r.EventTS - r.EventTS%5000
		var v float64
		fmt.Sscanf(string(r.Data), `{"temp":%g`, &v)
		a := exp[st]
		if a == nil {
			a = &acc{min: math.Inf(1), max: math.Inf(-1)}
			exp[st] = a
		}
		a.n++
		a.sum += v
		a.min, a.max = math.Min(a.min, v), math.Max(a.max, v)
	}
	if len(bs) != len(exp) {
		t.Fatalf("%d buckets, want %d", len(bs), len(exp))
	}
	for i, b := range bs {
		e := exp[b.Start]
		if e == nil || b.Count != e.n || b.Min != e.min || b.Max != e.max || math.Abs(b.Mean-e.sum/float64(e.n)) > 1e-9 {
			t.Fatalf("bucket %+v, want %+v", b, e)
		}
		if i > 0 && bs[i-1].Start >= b.Start {
			t.Fatal("buckets not ascending")
		}
	}
	// Dotted path, one bucket; non-numeric fields are skipped.
	bs, err = s.Aggregate(ctx, AggQuery{Query: Query{}, Field: "nested.x"})
	if err != nil || len(bs) != 1 || bs[0].Count != 60 || bs[0].Min != 0 || bs[0].Max != 4 {
		t.Fatalf("nested.x aggregate: %+v %v", bs, err)
	}
	bs, err = s.Aggregate(ctx, AggQuery{Query: Query{}, Field: "s"})
	if err != nil || len(bs) != 0 {
		t.Fatalf("string field aggregate: %+v %v", bs, err)
	}
	if _, err := s.Aggregate(ctx, AggQuery{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty field: %v", err)
	}
}

func TestStateAPI(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for i := 0; i < 25; i++ {
		if err := s.PutState(ctx, "f", fmt.Sprintf("k/%02d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.PutState(ctx, "f", "other", []byte("1"))
	_ = s.PutState(ctx, "g", "k/00", []byte("1"))
	var keys []string
	cursor := ""
	for {
		kvs, next, err := s.ListState(ctx, "f", "k/", 10, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			keys = append(keys, kv.Key)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(keys) != 25 || keys[0] != "k/00" || keys[24] != "k/24" {
		t.Fatalf("keys %v", keys)
	}
	if _, _, err := s.ListState(ctx, "f", "zz", 10, cursor+"!"); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("bad state cursor: %v", err)
	}
	if err := s.DeleteState(ctx, "f", "k/00"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.GetState(ctx, "f", "k/00"); ok {
		t.Fatal("deleted state still there")
	}
	if v, ok, _ := s.GetState(ctx, "g", "k/00"); !ok || string(v) != "1" {
		t.Fatal("other function's state affected")
	}
	// Incr of a missing key starts at 0; set then incr in one commit.
	_, err := s.Commit(ctx, &Commit{State: []StateChange{
		{Function: "f", Op: StateIncr, Key: "c", Delta: 1.5},
		{Function: "f", Op: StateSet, Key: "d", Value: []byte("10")},
		{Function: "f", Op: StateIncr, Key: "d", Delta: -3},
		{Function: "f", Op: StateDelete, Key: "e"},
		{Function: "f", Op: StateIncr, Key: "e", Delta: 1},
		{Function: "f", Op: StateIncr, Key: "big", Delta: 20971520},
		{Function: "f", Op: StateIncr, Key: "huge", Delta: 1 << 60},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Integers are written as integers (20971520 was 2.097152e+07), as
	// the functions' JSON encoder writes them, up to 2^53.
	for k, want := range map[string]string{"c": "1.5", "d": "7", "e": "1", "big": "20971520", "huge": "1.152921504606847e+18"} {
		if v, _, _ := s.GetState(ctx, "f", k); string(v) != want {
			t.Errorf("%s = %q, want %q", k, v, want)
		}
	}
	if _, _, err := s.GetState(ctx, "", "x"); !errors.Is(err, ErrInvalid) {
		t.Fatal("empty function accepted")
	}
}

// TestFromAtEpochIsABound: a From of 0 with FromSet is a bound at the
// Unix epoch (records before it are left out); a From of 0 alone is no
// bound, as before. A from at the epoch given over the API was read as
// "no lower bound". (A record time is never 0 ms: an event time of 0 is
// none, and the processing time is taken.)
func TestFromAtEpochIsABound(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for _, ts := range []int64{-3_600_000, -1, 1, 1000} {
		r := Record{Stream: "s", Device: "d", EventTS: ts, Data: []byte(`{"v":1}`)}
		if _, err := s.Commit(ctx, &Commit{Records: []Record{r}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		q    Query
		want int
	}{
		{Query{Stream: "s"}, 4},
		{Query{Stream: "s", FromSet: true}, 2},
		{Query{Stream: "s", FromSet: true, Desc: true}, 2},
		{Query{Stream: "s", FromSet: true, To: 1000}, 1},
		{Query{Stream: "s", FromSet: true, Limit: 1}, 1},
	} {
		recs, _, err := s.QueryRecords(ctx, c.q)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != c.want {
			t.Errorf("%+v: %d records, want %d", c.q, len(recs), c.want)
		}
		for _, r := range recs {
			if c.q.FromSet && recordTS(&r) < 0 {
				t.Errorf("%+v: record at %d, before from", c.q, recordTS(&r))
			}
		}
	}
	bs, err := s.Aggregate(ctx, AggQuery{Query: Query{Stream: "s", FromSet: true}, Field: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].Count != 2 || bs[0].Start != 0 || bs[0].Min != 1 {
		t.Fatalf("aggregate from the epoch: %+v, want one bucket of 2", bs)
	}
}

// TestStateCursorOfAnotherListing: a state cursor is refused
// (ErrBadCursor) by a listing of another function or prefix, as a record
// cursor is by another query. Only a cursor whose key lay outside the
// prefix was refused: a cursor of the prefix "ab" was taken for the
// prefix "a" (and one of function f for function g), and the listing
// silently started past it, leaving out "a1". A cursor of the earlier
// format (a key only) is refused with a word on starting again.
func TestStateCursorOfAnotherListing(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for _, k := range []string{"a1", "ab1", "ab2"} {
		for _, fn := range []string{"f", "g"} {
			if err := s.PutState(ctx, fn, k, []byte(`1`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, cur, err := s.ListState(ctx, "f", "ab", 1, "")
	if err != nil || cur == "" {
		t.Fatal(cur, err)
	}
	// The cursor goes on with its own listing.
	kvs, next, err := s.ListState(ctx, "f", "ab", 1, cur)
	if err != nil || len(kvs) != 1 || kvs[0].Key != "ab2" {
		t.Fatalf("next page of its own listing: %v %q %v", kvs, next, err)
	}
	for _, c := range []struct{ fn, prefix string }{{"f", "a"}, {"g", "ab"}, {"f", ""}, {"g", "a"}} {
		kvs, _, err := s.ListState(ctx, c.fn, c.prefix, 10, cur)
		if !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor of f/ab used by %s/%q: %v, err %v; want ErrBadCursor", c.fn, c.prefix, kvs, err)
		}
	}
	old := base64.RawURLEncoding.EncodeToString([]byte("sab1")) // an earlier release's cursor of f/ab
	if _, _, err := s.ListState(ctx, "f", "ab", 10, old); !errors.Is(err, ErrBadCursor) || !strings.Contains(err.Error(), "again") {
		t.Errorf("cursor of the earlier format: err %v, want ErrBadCursor saying to start again", err)
	}
}

// TestStateIncrRefusesJSONString: StateIncr adds to a stored JSON number;
// anything else refuses the commit with ErrNotNumber and keeps the value.
// A JSON string holding a number ("12") was taken for the number (the
// slow path decoded into a json.Number, which accepts quoted numbers) and
// silently became 13.
func TestStateIncrRefusesJSONString(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for _, v := range []string{`"12"`, ` "12" `, `"1e3"`, `"x"`, `true`, `null`, `[1]`, `{"n":1}`} {
		if err := s.PutState(ctx, "f", "k", []byte(v)); err != nil {
			t.Fatal(err)
		}
		_, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "f", Op: StateIncr, Key: "k", Delta: 1}}})
		got, _, gerr := s.GetState(ctx, "f", "k")
		if gerr != nil {
			t.Fatal(gerr)
		}
		if !errors.Is(err, ErrNotNumber) || string(got) != v {
			t.Errorf("incr of %s: err %v, value now %s; want ErrNotNumber and the value kept", v, err, got)
		}
	}
}

func TestFunctionsDeadLettersClock(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	if _, err := s.GetFunction(ctx, "f", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing function: %v", err)
	}
	v1, err := s.PutFunction(ctx, FunctionRecord{Name: "f", Source: []byte("return 1"), Active: true})
	if err != nil || v1 != 1 {
		t.Fatalf("PutFunction: %d %v", v1, err)
	}
	v2, _ := s.PutFunction(ctx, FunctionRecord{Name: "f", Source: []byte("return 2")})
	_, _ = s.PutFunction(ctx, FunctionRecord{Name: "g", Source: []byte("x")})
	if f, _ := s.GetFunction(ctx, "f", 0); f.Version != 1 || !f.Active || string(f.Source) != "return 1" {
		t.Fatalf("active = %+v", f)
	}
	if err := s.SetActive(ctx, "f", v2); err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive(ctx, "f", 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetActive missing version: %v", err)
	}
	fs, _ := s.ListFunctions(ctx)
	if len(fs) != 2 || fs[0].Name != "f" || fs[0].Version != 2 || !fs[0].Active || fs[1].Name != "g" || fs[1].Active {
		t.Fatalf("ListFunctions %+v", fs)
	}
	vs, _ := s.ListVersions(ctx, "f")
	if len(vs) != 2 || vs[0].Active || !vs[1].Active {
		t.Fatalf("ListVersions %+v", vs)
	}
	if err := s.DeleteFunction(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListVersions(ctx, "f"); !errors.Is(err, ErrNotFound) {
		t.Fatal("deleted function still listed")
	}
	if v, _ := s.PutFunction(ctx, FunctionRecord{Name: "f"}); v != 1 {
		t.Fatalf("version after delete %d", v)
	}

	// Dead letters.
	for i := 0; i < 5; i++ {
		fn := "a"
		if i%2 == 1 {
			fn = "b"
		}
		if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: fn, Event: []byte{byte(i)}, Error: "boom", Attempts: 3}}); err != nil {
			t.Fatal(err)
		}
	}
	dls, _ := s.ListDeadLetters(ctx, "a", 0, 10)
	if len(dls) != 3 || dls[0].Error != "boom" || dls[0].Attempts != 3 {
		t.Fatalf("dead letters of a: %+v", dls)
	}
	if err := s.DeleteDeadLetter(ctx, dls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDeadLetter(ctx, dls[0].Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if n, err := s.PurgeDeadLetters(ctx, "b"); n != 2 || err != nil {
		t.Fatalf("purge b: %d %v", n, err)
	}
	all, _ := s.ListDeadLetters(ctx, "", 0, 10)
	if len(all) != 2 || s.Stats().Spaces[SpaceDeadLetters].Count != 2 {
		t.Fatalf("remaining dead letters %+v", all)
	}

	// Clock state: persisted and stamped into records.
	s.SetClockSynced(true)
	res, _ := s.Commit(ctx, &Commit{Records: []Record{{Stream: "x", ClockSynced: false}}})
	if !res.Records[0].ClockSynced {
		t.Fatal("record not stamped clock-synced")
	}
	s = reopen(t, s)
	if !s.ClockSynced() {
		t.Fatal("clock state not persisted")
	}
	s.SetClockSynced(false)
	res, _ = s.Commit(ctx, &Commit{Records: []Record{{Stream: "x", ClockSynced: true}}})
	if res.Records[0].ClockSynced {
		t.Fatal("record stamped synced while the clock is not")
	}
	recs, _, _ := s.QueryRecords(ctx, Query{Stream: "x"})
	if len(recs) != 2 || !recs[0].ClockSynced || recs[1].ClockSynced {
		t.Fatalf("stored clock flags: %+v", recs)
	}
}

func TestPublishOutbox(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for i := 0; i < 5; i++ {
		if _, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: fmt.Sprint(i), Payload: []byte("p"), QoS: 1, Retain: i == 2}}}); err != nil {
			t.Fatal(err)
		}
	}
	ps, _ := s.PendingPublishes(ctx, 0, 10)
	if len(ps) != 5 || !ps[2].Retain || ps[0].QoS != 1 {
		t.Fatalf("pending %+v", ps)
	}
	// Out-of-order acks; the head moves once the gap closes.
	if err := s.AckPublishes(ctx, ps[1].Seq, ps[3].Seq, 999); err != nil {
		t.Fatal(err)
	}
	ps2, _ := s.PendingPublishes(ctx, 0, 10)
	if len(ps2) != 3 || ps2[1].Seq != ps[2].Seq {
		t.Fatalf("after acks %+v", ps2)
	}
	s = reopen(t, s)
	_ = s.AckPublishes(ctx, ps[0].Seq)
	ps3, _ := s.PendingPublishes(ctx, 0, 10)
	if len(ps3) != 2 || ps3[0].Seq != ps[2].Seq || s.counters().Publish.Head != ps[2].Seq {
		t.Fatalf("after reopen and ack: %+v head %d", ps3, s.counters().Publish.Head)
	}
}

// TestPagesBoundedInBytes: a page of records, state entries, dead letters
// or log lines ends once it holds MaxPageBytes of stored values (after at
// least one), with the way to the next page, whatever its limit: 10,000
// entries of up to 1 MiB each would be read into memory at once.
func TestPagesBoundedInBytes(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	big := `"` + strings.Repeat("x", 600<<10) + `"`
	for i := range 3 {
		c := &Commit{
			Records:    []Record{{Stream: "s", Function: "f", Data: []byte(big)}},
			State:      []StateChange{{Function: "f", Op: StateSet, Key: fmt.Sprint("k", i), Value: []byte(big)}},
			DeadLetter: &DeadLetter{Function: "f", Event: []byte(big), Error: "boom"},
		}
		if _, err := s.Commit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	recs, cursor, err := s.QueryRecords(ctx, Query{Stream: "s", Limit: 100})
	if err != nil || len(recs) != 2 || cursor == "" {
		t.Fatalf("records page: %d, cursor %q, %v; want 2 and a cursor", len(recs), cursor, err)
	}
	if recs, cursor, err = s.QueryRecords(ctx, Query{Stream: "s", Limit: 100, Cursor: cursor}); err != nil || len(recs) != 1 || cursor != "" {
		t.Fatalf("records next page: %d, cursor %q, %v; want the last one", len(recs), cursor, err)
	}
	kvs, cursor, err := s.ListState(ctx, "f", "", 100, "")
	if err != nil || len(kvs) != 2 || cursor == "" {
		t.Fatalf("state page: %d, cursor %q, %v; want 2 and a cursor", len(kvs), cursor, err)
	}
	if kvs, cursor, err = s.ListState(ctx, "f", "", 100, cursor); err != nil || len(kvs) != 1 || cursor != "" {
		t.Fatalf("state next page: %d, cursor %q, %v", len(kvs), cursor, err)
	}
	dls, err := s.ListDeadLetters(ctx, "f", 0, 100)
	if err != nil || len(dls) != 2 {
		t.Fatalf("dead letters page: %d, %v; want 2", len(dls), err)
	}
	if dls, err = s.ListDeadLetters(ctx, "", dls[1].Seq, 100); err != nil || len(dls) != 1 {
		t.Fatalf("dead letters next page: %d, %v; want 1", len(dls), err)
	}
}

// TestEachVersion: the versions of a function one at a time, oldest
// first, with the active one marked; the callback's error ends the scan;
// ErrNotFound for a function without versions. (ListVersions held every
// version's source at once: the API's list of versions, which keeps none,
// now goes through EachVersion.)
func TestEachVersion(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	for i := range 5 {
		if _, err := s.PutFunction(ctx, FunctionRecord{Name: "f", Source: fmt.Appendf(nil, "return %d", i), Active: i == 2}); err != nil {
			t.Fatal(err)
		}
	}
	var seen []int64
	var active int64
	if err := s.EachVersion(ctx, "f", func(r FunctionRecord) error {
		seen = append(seen, r.Version)
		if r.Active {
			active = r.Version
		}
		if string(r.Source) != fmt.Sprintf("return %d", r.Version-1) {
			t.Errorf("version %d: source %q", r.Version, r.Source)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[1 2 3 4 5]" || active != 3 {
		t.Fatalf("versions %v, active %d", seen, active)
	}
	stop := errors.New("stop")
	n := 0
	if err := s.EachVersion(ctx, "f", func(FunctionRecord) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("stopped scan: %v after %d", err, n)
	}
	if err := s.EachVersion(ctx, "nope", func(FunctionRecord) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown function: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.EachVersion(cctx, "f", func(FunctionRecord) error { return nil }); err == nil {
		t.Fatal("a cancelled scan answered")
	}
}

// TestVersionsPruned: a function keeps its last VersionsKept versions and
// its active one; older ones are deleted as new ones are put (the history
// grew the store without bound, a source of up to 256 KiB per version).
func TestVersionsPruned(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	for i := 1; i <= VersionsKept+8; i++ {
		if _, err := s.PutFunction(ctx, FunctionRecord{Name: "f", Source: fmt.Appendf(nil, "return %d", i), Active: i == 5}); err != nil {
			t.Fatal(err)
		}
	}
	var kept []int64
	if err := s.EachVersion(ctx, "f", func(r FunctionRecord) error { kept = append(kept, r.Version); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(kept) != VersionsKept+1 || kept[0] != 5 || kept[1] != 9 || kept[len(kept)-1] != VersionsKept+8 {
		t.Fatalf("kept %v: want the active 5 and the last %d", kept, VersionsKept)
	}
	if f, err := s.GetFunction(ctx, "f", 0); err != nil || f.Version != 5 || string(f.Source) != "return 5" {
		t.Fatalf("active: %+v %v", f, err)
	}
	if _, err := s.GetFunction(ctx, "f", 6); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pruned version 6: %v", err)
	}
}

// The mean of finite values is finite: it was sum/count, and the sum of
// two values near the top of float64's range overflowed to +Inf although
// every value, the min, the max and the true mean were finite.
func TestAggregateMeanOfHugeValuesIsFinite(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	for i, v := range []string{"1e308", "1e308", "1.7976931348623157e308", "1.7976931348623157e308", "1.7976931348623157e308", "1e308", "-1e308"} {
		stream := []string{"a", "a", "b", "b", "b", "c", "c"}[i]
		if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: stream, Device: "d", EventTS: 1000 + int64(i),
			Data: []byte(`{"v":` + v + `}`)}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		stream    string
		n         int64
		min, mean float64
	}{
		{"a", 2, 1e308, 1e308},
		{"b", 3, math.MaxFloat64, math.MaxFloat64},
		{"c", 2, -1e308, 0},
	} {
		bs, err := s.Aggregate(ctx, AggQuery{Query: Query{Stream: c.stream}, Field: "v", Bucket: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) != 1 || bs[0].Count != c.n || bs[0].Min != c.min {
			t.Fatalf("stream %s: buckets %+v", c.stream, bs)
		}
		if b := bs[0]; b.Mean != c.mean {
			t.Errorf("stream %s: mean %v, want %v (bucket %+v)", c.stream, b.Mean, c.mean, b)
		}
	}
}

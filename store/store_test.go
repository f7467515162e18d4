package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openTest(t testing.TB, o Options) *Store {
	t.Helper()
	if o.Dir == "" && !o.InMemory {
		o.Dir = t.TempDir()
	}
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func reopen(t testing.TB, s *Store) *Store {
	t.Helper()
	o := s.opts
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openTest(t, o)
}

func enqueue(t testing.TB, s *Store, fn string, n int) []uint64 {
	t.Helper()
	var es []InboxEntry
	for i := 0; i < n; i++ {
		es = append(es, InboxEntry{Function: fn, Key: "dev1", Event: []byte(fmt.Sprintf(`{"i":%d}`, i))})
	}
	seqs, err := s.Enqueue(context.Background(), es)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return seqs
}

func TestEnqueueCommitExactlyOnce(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GatewayID: "gwA"})
	seqs := enqueue(t, s, "f1", 3)
	if seqs[0] != 1 || seqs[2] != 3 {
		t.Fatalf("seqs = %v", seqs)
	}
	if s.InboxLen() != 3 {
		t.Fatalf("InboxLen = %d", s.InboxLen())
	}
	pend, err := s.InboxPending(ctx, 0, 10)
	if err != nil || len(pend) != 3 || string(pend[1].Event) != `{"i":1}` || pend[1].Function != "f1" || pend[1].Key != "dev1" {
		t.Fatalf("InboxPending = %+v, %v", pend, err)
	}
	c := &Commit{
		InboxSeq: seqs[1],
		Records: []Record{{Stream: "temp", Function: "f1", Device: "dev1", EventID: "e1", EventTS: 1000,
			Data: []byte(`{"t":21.5}`), Targets: []string{"cloud", "cloud", "backup"}}},
		State:     []StateChange{{Function: "f1", Op: StateIncr, Key: "n", Delta: 2}, {Function: "f1", Op: StateIncr, Key: "n", Delta: 0.5}},
		Publishes: []Publish{{Topic: "out/1", Payload: []byte("x"), QoS: 1}},
		Logs:      []LogRecord{{Function: "f1", InvocationID: "inv1", Level: "info", Msg: "hello", TS: 5}},
		Usage:     &Usage{Function: "f1", TS: 120_001, Invocations: 1, Steps: 10},
	}
	res, err := s.Commit(ctx, c)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(res.Records) != 1 || res.Records[0].ID != s.IDPrefix()+"1" || res.Records[0].Seq != 1 || len(res.Records[0].Targets) != 2 {
		t.Fatalf("records = %+v", res.Records)
	}
	if len(res.Publishes) != 1 || res.Publishes[0].Seq != 1 {
		t.Fatalf("publishes = %+v", res.Publishes)
	}
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[1]}); !errors.Is(err, ErrAlreadyConsumed) {
		t.Fatalf("second commit err = %v, want ErrAlreadyConsumed", err)
	}
	if _, err := s.Commit(ctx, &Commit{InboxSeq: 99}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown inbox seq err = %v, want ErrNotFound", err)
	}
	v, ok, err := s.GetState(ctx, "f1", "n")
	if err != nil || !ok || string(v) != "2.5" {
		t.Fatalf("state n = %q %v %v", v, ok, err)
	}
	if s.InboxLen() != 2 {
		t.Fatalf("InboxLen = %d", s.InboxLen())
	}
	pend, _ = s.InboxPending(ctx, 0, 10)
	if len(pend) != 2 || pend[0].Seq != 1 || pend[1].Seq != 3 {
		t.Fatalf("pending after commit = %+v", pend)
	}
	for _, tgt := range []string{"cloud", "backup"} {
		ob, err := s.OutboxRead(ctx, tgt, 0, 10, 0)
		if err != nil || len(ob) != 1 || ob[0].Record.ID != s.IDPrefix()+"1" || ob[0].Seq != 1 {
			t.Fatalf("outbox %s = %+v %v", tgt, ob, err)
		}
	}
	logs, err := s.QueryLogs(ctx, "f1", "inv1", 0, 10)
	if err != nil || len(logs) != 1 || logs[0].Msg != "hello" {
		t.Fatalf("logs = %+v %v", logs, err)
	}
	us, err := s.QueryUsage(ctx, "f1", 0, 0, time.Minute)
	if err != nil || len(us) != 1 || us[0].TS != 120_000 || us[0].Steps != 10 {
		t.Fatalf("usage = %+v %v", us, err)
	}
	// Everything survives a reopen, and sequences continue.
	s = reopen(t, s)
	if s.InboxLen() != 2 {
		t.Fatalf("InboxLen after reopen = %d", s.InboxLen())
	}
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[1]}); !errors.Is(err, ErrAlreadyConsumed) {
		t.Fatalf("commit after reopen err = %v", err)
	}
	more := enqueue(t, s, "f1", 1)
	if more[0] != 4 {
		t.Fatalf("seq after reopen = %d, want 4", more[0])
	}
	res, err = s.Commit(ctx, &Commit{InboxSeq: seqs[0], Records: []Record{{Stream: "temp", Data: []byte(`{}`)}}})
	if err != nil || res.Records[0].Seq != 2 {
		t.Fatalf("commit after reopen = %+v %v", res, err)
	}
	pend, _ = s.InboxPending(ctx, 0, 10)
	if len(pend) != 2 || pend[0].Seq != 3 || pend[1].Seq != 4 {
		t.Fatalf("pending after reopen = %+v", pend)
	}
	// The head cursor skipped both consumed entries: readers seek past them.
	if h := s.counters().Inbox.Head; h != 3 {
		t.Fatalf("inbox head = %d, want 3", h)
	}
}

// TestIncrOverflowKeepsJSON: two increments that each fit, committed one
// after the other (two invocations on different lanes that both read the
// value before the other's commit), stored the text "+Inf": the key was no
// JSON for good (state.get failed, every later incr was dead-lettered).
// The second is refused whole; a non-finite delta is invalid input.
func TestIncrOverflowKeepsJSON(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	incr := func(d float64) error {
		_, err := s.Commit(ctx, &Commit{State: []StateChange{{Function: "f", Op: StateIncr, Key: "n", Delta: d}}})
		return err
	}
	if err := incr(1e308); err != nil {
		t.Fatal(err)
	}
	if err := incr(1e308); !errors.Is(err, ErrNotNumber) || !strings.Contains(err.Error(), "not a finite number") {
		t.Fatalf("overflowing increment: %v, want ErrNotNumber", err)
	}
	for _, d := range []float64{math.Inf(1), math.Inf(-1), math.NaN()} {
		if err := incr(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("increment by %v: %v, want ErrInvalid", d, err)
		}
	}
	v, ok, err := s.GetState(ctx, "f", "n")
	if err != nil || !ok || string(v) != "1e+308" {
		t.Fatalf("state f/n = %q %v %v, want 1e+308", v, ok, err)
	}
	if err := incr(-1e308); err != nil {
		t.Fatalf("later increment: %v", err)
	}
	if v, _, _ := s.GetState(ctx, "f", "n"); string(v) != "0" {
		t.Fatalf("state f/n = %q, want 0", v)
	}
}

func TestCommitAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if err := s.PutState(ctx, "f", "s", []byte(`"text"`)); err != nil {
		t.Fatal(err)
	}
	seqs := enqueue(t, s, "f", 1)
	_, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0],
		Records: []Record{{Stream: "x", Data: []byte(`{}`), Targets: []string{"up"}}},
		State:   []StateChange{{Function: "f", Op: StateSet, Key: "a", Value: []byte("1")}, {Function: "f", Op: StateIncr, Key: "s", Delta: 1}}})
	if !errors.Is(err, ErrNotNumber) {
		t.Fatalf("err = %v, want ErrNotNumber", err)
	}
	if s.InboxLen() != 1 {
		t.Fatal("inbox entry consumed by a failed commit")
	}
	if _, ok, _ := s.GetState(ctx, "f", "a"); ok {
		t.Fatal("state written by a failed commit")
	}
	if recs, _, _ := s.QueryRecords(ctx, Query{}); len(recs) != 0 {
		t.Fatal("record written by a failed commit")
	}
	if ob, _ := s.OutboxRead(ctx, "up", 0, 10, 0); len(ob) != 0 {
		t.Fatal("outbox written by a failed commit")
	}
	// Invalid input is refused before anything happens.
	for _, c := range []*Commit{
		nil,
		{Records: []Record{{Stream: "a\x00b"}}},
		{Records: []Record{{Stream: "a\xffb"}}}, // names are UTF-8 text
		{Records: []Record{{Stream: "s", Device: "d\xc3"}}},
		{Records: []Record{{Targets: []string{""}}}},
		{State: []StateChange{{Function: "f", Op: 99, Key: "k"}}},
		{State: []StateChange{{Function: "", Op: StateSet, Key: "k"}}},
		{DeadLetter: &DeadLetter{}},
	} {
		if _, err := s.Commit(ctx, c); !errors.Is(err, ErrInvalid) {
			t.Errorf("Commit(%+v) err = %v, want ErrInvalid", c, err)
		}
	}
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: ""}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Enqueue without function err = %v", err)
	}
	big := make([]byte, 4<<20)
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Event: big}}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge Enqueue err = %v, want ErrTooLarge", err)
	}
}

func TestClosedStore(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checks := map[string]error{}
	_, checks["Enqueue"] = s.Enqueue(ctx, []InboxEntry{{Function: "f"}})
	_, checks["Commit"] = s.Commit(ctx, &Commit{})
	_, checks["InboxPending"] = s.InboxPending(ctx, 0, 1)
	_, _, checks["GetState"] = s.GetState(ctx, "f", "k")
	_, _, checks["QueryRecords"] = s.QueryRecords(ctx, Query{})
	_, checks["OutboxRead"] = s.OutboxRead(ctx, "t", 0, 1, 0)
	checks["OutboxAck"] = s.OutboxAck(ctx, "t", 1)
	_, checks["PendingPublishes"] = s.PendingPublishes(ctx, 0, 1)
	checks["AckPublishes"] = s.AckPublishes(ctx, 1)
	_, checks["PutFunction"] = s.PutFunction(ctx, FunctionRecord{Name: "f"})
	_, checks["ListFunctions"] = s.ListFunctions(ctx)
	_, checks["RunRetention"] = s.RunRetention(ctx)
	checks["SetSession"] = s.SetSession([]byte("k"), nil)
	checks["DeleteSession"] = s.DeleteSession([]byte("k"))
	checks["LoadSessions"] = s.LoadSessions(ctx, func(k, v []byte) error { return nil })
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	_ = s.Stats()
	_ = s.OutboxStats("t")
}

func TestCloseWhileWriting(t *testing.T) {
	s := openTest(t, Options{Durability: DurabilityNone})
	var wg sync.WaitGroup
	var acked atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := s.Enqueue(context.Background(), []InboxEntry{{Function: "f"}})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Enqueue: %v", err)
					return
				}
				acked.Add(1)
			}
		}()
	}
	for acked.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s2 := openTest(t, s.opts)
	if got := s2.InboxLen(); got != acked.Load() {
		t.Fatalf("inbox has %d entries, %d were acknowledged", got, acked.Load())
	}
}

func TestFormatVersion(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir})
	// Pretend a newer release wrote the database.
	if err := s.db.Update(func(txn *badgerTxn) error { return txn.Set(keyFormat, []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	_, err := Open(context.Background(), Options{Dir: dir, Logger: quietLogger()})
	if !errors.Is(err, ErrFormatVersion) {
		t.Fatalf("Open of format 99: %v, want ErrFormatVersion", err)
	}
	// A badger directory that is not ours.
	_, err = Open(context.Background(), Options{Dir: filepath.Join(dir, "nested", "x"), Logger: quietLogger(), Profile: "huge"})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad profile: %v", err)
	}
}

func TestDiskGuard(t *testing.T) {
	ctx := context.Background()
	var free atomic.Uint64
	free.Store(1 << 30)
	s := openTest(t, Options{DiskReserve: 100 << 20, DiskCheckInterval: time.Millisecond,
		FreeSpace: func(string) (uint64, error) { return free.Load(), nil }})
	seqs := enqueue(t, s, "f", 2)
	free.Store(10 << 20)
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = s.Enqueue(ctx, []InboxEntry{{Function: "f"}}); errors.Is(err, ErrStoreFull) {
			break
		}
	}
	if !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Enqueue with full disk: %v, want ErrStoreFull", err)
	}
	if !s.Stats().DiskFull {
		t.Fatal("Stats().DiskFull is false")
	}
	n := s.InboxLen()
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0], Records: []Record{{Stream: "x"}}}); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Commit with records on a full disk: %v", err)
	}
	// Consuming without new data frees space and is allowed.
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0]}); err != nil {
		t.Fatalf("pure consume on a full disk: %v", err)
	}
	if s.InboxLen() != n-1 {
		t.Fatal("consume did not happen")
	}
	free.Store(1 << 30)
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "f"}}); err != nil {
		t.Fatalf("Enqueue after space returned: %v", err)
	}
}

func TestDurabilityModes(t *testing.T) {
	for _, d := range []Durability{DurabilityAlways, DurabilityInterval, DurabilityNone} {
		t.Run(d.String(), func(t *testing.T) {
			s := openTest(t, Options{Durability: d, SyncInterval: 5 * time.Millisecond})
			enqueue(t, s, "f", 10)
			s = reopen(t, s)
			if s.InboxLen() != 10 {
				t.Fatalf("InboxLen = %d", s.InboxLen())
			}
			p, err := ParseDurability(d.String())
			if err != nil || p != d {
				t.Fatalf("ParseDurability(%q) = %v %v", d, p, err)
			}
		})
	}
	if _, err := ParseDurability("sometimes"); !errors.Is(err, ErrInvalid) {
		t.Fatal("ParseDurability accepted junk")
	}
}

// TestValueLogFiles writes values above the value threshold across several
// value-log files (the files a 32-bit process maps) and reads them back
// after a reopen.
func TestValueLogFiles(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	n, size := 5000, 8<<10 // 40 MiB: three 16 MiB value-log files
	if testing.Short() {
		n = 2500
	}
	val := make([]byte, size)
	for i := 0; i < n; i += 50 {
		var es []InboxEntry
		for j := i; j < i+50; j++ {
			val[0], val[1] = byte(j), byte(j>>8)
			es = append(es, InboxEntry{Function: "f", Event: append([]byte(nil), val...)})
		}
		if _, err := s.Enqueue(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, s)
	got := 0
	for after := uint64(0); ; {
		es, err := s.InboxPending(ctx, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if len(e.Event) != size || int(e.Event[0])|int(e.Event[1])<<8 != got&0xffff {
				t.Fatalf("entry %d: wrong value", e.Seq)
			}
			got++
			after = e.Seq
		}
	}
	if got != n {
		t.Fatalf("read %d entries, wrote %d", got, n)
	}
	var vlog int64
	files, _ := filepath.Glob(filepath.Join(s.opts.Dir, "*.vlog"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			vlog += fi.Size()
		}
	}
	if vlog < int64(n*size)/2 {
		t.Fatalf("value log holds %d bytes: values did not go to the value log", vlog)
	}
}

// TestValueLogGCNeedsRoom: the value-log GC does not start a rewrite
// when the disk has less free space than the rewrite may write (on a full
// disk Badger's memory-mapped write is a SIGBUS, not an error).
// churn enqueues rounds x 50 inbox entries of function fn holding event
// and consumes each: values written and made garbage (memtable flushes,
// value-log GC material).
func churn(t *testing.T, s *Store, fn string, event []byte, rounds int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < rounds; i++ {
		var es []InboxEntry
		for j := 0; j < 50; j++ {
			es = append(es, InboxEntry{Function: fn, Event: event})
		}
		seqs, err := s.Enqueue(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		for _, sq := range seqs {
			if _, err := s.Commit(ctx, &Commit{InboxSeq: sq}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestValueLogGCNeedsRoom(t *testing.T) {
	ctx := context.Background()
	var free atomic.Uint64
	free.Store(1 << 40)
	s := openTest(t, Options{Durability: DurabilityNone, FreeSpace: func(string) (uint64, error) { return free.Load(), nil }})
	churn(t, s, "f", make([]byte, 4<<10), 20)
	free.Store(uint64(s.db.Opts().ValueLogFileSize/2+gcMargin) - 1)
	if n, err := s.RunValueLogGC(ctx); !errors.Is(err, ErrStoreFull) || n != 0 {
		t.Fatalf("GC with too little room: %d rewrites, %v; want none and ErrStoreFull", n, err)
	}
	free.Store(1 << 40)
	if _, err := s.RunValueLogGC(ctx); err != nil {
		t.Fatalf("GC with room: %v", err)
	}
}

// TestValueLogGC runs the GC loop over a value log whose entries were all
// consumed: it must end (Badger reports nothing more to rewrite) without
// error, and refuse to run after Close.
func TestValueLogGC(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Durability: DurabilityNone})
	val := make([]byte, 4<<10)
	var seqs []uint64
	for i := 0; i < 40; i++ {
		var es []InboxEntry
		for j := 0; j < 50; j++ {
			es = append(es, InboxEntry{Function: "f", Event: val})
		}
		sq, err := s.Enqueue(ctx, es)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, sq...)
	}
	for _, sq := range seqs {
		if _, err := s.Commit(ctx, &Commit{InboxSeq: sq}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flatten(2); err != nil {
		t.Fatal(err)
	}
	n, err := s.RunValueLogGC(ctx)
	if err != nil {
		t.Fatalf("RunValueLogGC: %v", err)
	}
	if s.Stats().GCRewrites != int64(n) {
		t.Fatalf("GCRewrites %d, RunValueLogGC said %d", s.Stats().GCRewrites, n)
	}
	_ = s.Close()
	if _, err := s.RunValueLogGC(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// TestValuesUpToTheLimitCommit: every value the store accepts (up to
// MaxValueBytes) commits wherever it can go, in the low-memory profile
// (the smallest transaction): a dead letter of a whole large event, a
// record synced to two targets, a publish, a state value, a log. Values
// past the value threshold are pointers in Badger's transaction; the
// estimates counted them whole (twice for a dead letter), so a 200 KiB
// event could not be dead-lettered and its lane was retried forever.
func TestValuesUpToTheLimitCommit(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Profile: ProfileLowMemory})
	for _, n := range []int{200 << 10, 600 << 10, s.opts.MaxValueBytes} {
		v := bytes.Repeat([]byte("v"), n)
		seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: v}})
		if err != nil {
			t.Fatalf("%d bytes: Enqueue: %v", n, err)
		}
		if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[0], DeadLetter: &DeadLetter{Function: "f", Key: "k", Event: v, Error: "boom"},
			Logs: []LogRecord{{Function: "f", Msg: string(v[:8<<10]), Fields: v[:8<<10]}}}); err != nil {
			t.Fatalf("%d bytes: dead letter: %v", n, err)
		}
		if _, err := s.Commit(ctx, &Commit{
			Records:   []Record{{Stream: "s", Function: "f", Data: v, Targets: []string{"up1", "up2"}}},
			Publishes: []Publish{{Topic: "t", Payload: v, QoS: 1}},
			State:     []StateChange{{Function: "f", Op: StateSet, Key: "k", Value: v}},
		}); err != nil {
			t.Fatalf("%d bytes: outputs: %v", n, err)
		}
	}
	dls, err := s.ListDeadLetters(ctx, "f", 0, 10)
	if err != nil || len(dls) != 3 || len(dls[2].Event) != s.opts.MaxValueBytes {
		t.Fatalf("dead letters: %d, %v", len(dls), err)
	}
	// Past the limit it is still refused, with the sentinel.
	over := make([]byte, s.opts.MaxValueBytes+1)
	if _, err := s.Commit(ctx, &Commit{DeadLetter: &DeadLetter{Function: "f", Event: over}}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("dead letter over the limit: %v, want ErrTooLarge", err)
	}
}

// TestCommitAckPublishesRepeated: a sequence repeated in
// Commit.AckPublishes is acknowledged once; its size read back from disk
// (after a reopen) was counted twice, so the counters said 0 publishes
// while one was still pending.
func TestCommitAckPublishesRepeated(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if _, err := s.Commit(ctx, &Commit{Publishes: []Publish{{Topic: "a", Payload: []byte("1")}, {Topic: "a", Payload: []byte("2")}}}); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s) // the size window is empty: ackPublish reads sizes back
	if _, err := s.Commit(ctx, &Commit{AckPublishes: []uint64{1, 1}}); err != nil {
		t.Fatal(err)
	}
	st := s.Stats().Spaces[SpacePublishes]
	ps, err := s.PendingPublishes(ctx, 0, 10)
	if err != nil || len(ps) != 1 || st.Count != 1 || st.Bytes <= 0 {
		t.Fatalf("after acknowledging 1 twice: %d pending (%v), counters %+v", len(ps), err, st)
	}
}

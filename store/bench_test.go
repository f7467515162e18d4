package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Benchmarks are cheap at -benchtime 1x (the CI smoke run). Set
// MOONGATE_BENCH_FULL=1 for the 1-million-record figures of
// docs/performance.md.
func benchFull() bool { return os.Getenv("MOONGATE_BENCH_FULL") == "1" }

func benchProfile() Profile {
	if p := os.Getenv("MOONGATE_BENCH_PROFILE"); p != "" {
		return Profile(p)
	}
	return ProfileLowMemory
}

func smallCommit(seq uint64, i int) *Commit {
	return &Commit{
		InboxSeq: seq,
		Records: []Record{{Stream: "temp", Function: "f", Device: "dev" + strconv.Itoa(i%50), EventID: strconv.Itoa(i),
			EventTS: 1_700_000_000_000 + int64(i), Data: []byte(`{"t":21.5,"h":40}`), Targets: []string{"cloud"}}},
		State: []StateChange{{Function: "f", Op: StateIncr, Key: "n" + strconv.Itoa(i%16), Delta: 1}},
	}
}

func fillInbox(b *testing.B, s *Store, n int) []uint64 {
	b.Helper()
	seqs := make([]uint64, 0, n)
	for len(seqs) < n {
		k := min(512, n-len(seqs))
		es := make([]InboxEntry, k)
		for i := range es {
			es[i] = InboxEntry{Function: "f", Key: "dev", Event: []byte(`{"t":21.5,"h":40}`)}
		}
		sq, err := s.Enqueue(context.Background(), es)
		if err != nil {
			b.Fatal(err)
		}
		seqs = append(seqs, sq...)
	}
	return seqs
}

// runWriters runs n operations spread over w goroutines and returns ops/s.
func runWriters(b *testing.B, w, n int, op func(i int) error) float64 {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := op(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkCommit: durable processing commits (consume one inbox entry,
// store one record routed to one outbox, one state increment) in
// DurabilityAlways mode with 1, 8 and 64 concurrent writers.
func BenchmarkCommit(b *testing.B) {
	for _, w := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("writers=%d", w), func(b *testing.B) {
			s := openTest(b, Options{Profile: benchProfile(), GCInterval: -1})
			seqs := fillInbox(b, s, b.N)
			b.ResetTimer()
			cpu0 := cpuTime()
			rate := runWriters(b, w, b.N, func(i int) error {
				_, err := s.Commit(context.Background(), smallCommit(seqs[i], i))
				return err
			})
			cpu := cpuTime() - cpu0
			b.StopTimer()
			b.ReportMetric(rate, "commits/s")
			// Process CPU time (all goroutines, Badger's included) per commit:
			// less sensitive to other load on the machine than commits/s.
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/commit")
			st := s.Stats()
			b.ReportMetric(float64(st.Writes)/float64(max(st.Batches, 1)), "writes/batch")
		})
	}
}

// BenchmarkEnqueue: durable single-event Enqueue calls (the MQTT ack path)
// with 64 concurrent writers.
func BenchmarkEnqueue(b *testing.B) {
	s := openTest(b, Options{Profile: benchProfile(), GCInterval: -1})
	b.ResetTimer()
	rate := runWriters(b, 64, b.N, func(i int) error {
		_, err := s.Enqueue(context.Background(), []InboxEntry{{Function: "f", Key: "dev", Event: []byte(`{"t":21.5,"h":40}`)}})
		return err
	})
	b.ReportMetric(rate, "events/s")
}

// BenchmarkOutboxDrain: reading and acknowledging an outbox in pages of 500
// (what sync does), after history entries already went through it.
func BenchmarkOutboxDrain(b *testing.B) {
	history := 20_000
	if benchFull() {
		history = 1_000_000
	}
	for _, h := range []int{0, history} {
		b.Run(fmt.Sprintf("history=%d", h), func(b *testing.B) {
			ctx := context.Background()
			s := openTest(b, Options{Profile: benchProfile(), Durability: DurabilityNone, GCInterval: -1})
			fill := func(n int) {
				for i := 0; i < n; i += 256 {
					c := &Commit{}
					for j := i; j < min(n, i+256); j++ {
						c.Records = append(c.Records, smallCommit(0, j).Records[0])
					}
					if _, err := s.Commit(ctx, c); err != nil {
						b.Fatal(err)
					}
				}
			}
			drain := func() int {
				n := 0
				for {
					es, err := s.OutboxRead(ctx, "cloud", 0, 500, 0)
					if err != nil {
						b.Fatal(err)
					}
					if len(es) == 0 {
						return n
					}
					n += len(es)
					if err := s.OutboxAck(ctx, "cloud", es[len(es)-1].Seq); err != nil {
						b.Fatal(err)
					}
				}
			}
			fill(h)
			drain()
			fill(max(b.N, 1000))
			b.ResetTimer()
			start := time.Now()
			n := drain()
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "entries/s")
		})
	}
}

// BenchmarkInboxHead: InboxPending (first 100) after history entries were
// enqueued and consumed: the cost must not grow with the history.
func BenchmarkInboxHead(b *testing.B) {
	history := 20_000
	if benchFull() {
		history = 1_000_000
	}
	for _, h := range []int{0, history} {
		b.Run(fmt.Sprintf("history=%d", h), func(b *testing.B) {
			ctx := context.Background()
			s := openTest(b, Options{Profile: benchProfile(), Durability: DurabilityNone, GCInterval: -1})
			for done := 0; done < h; done += 512 {
				seqs := fillInbox(b, s, 512)
				c := make([]*Commit, len(seqs))
				for i, sq := range seqs {
					c[i] = &Commit{InboxSeq: sq}
				}
				runWriters(b, 16, len(c), func(i int) error { _, err := s.Commit(ctx, c[i]); return err })
			}
			fillInbox(b, s, 100)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				es, err := s.InboxPending(ctx, 0, 100)
				if err != nil || len(es) != 100 {
					b.Fatal(len(es), err)
				}
			}
		})
	}
}

var (
	queryFixMu sync.Mutex
	queryFix   = map[int]*Store{}
	fixDirs    []string
)

// queryStore returns a store with n records (10 streams, 100 devices, one
// record per second) built once per process.
func queryStore(b *testing.B, n int) *Store {
	queryFixMu.Lock()
	defer queryFixMu.Unlock()
	if s := queryFix[n]; s != nil {
		return s
	}
	dir, err := os.MkdirTemp("", "moongate-bench-")
	if err != nil {
		b.Fatal(err)
	}
	fixDirs = append(fixDirs, dir)
	s, err := Open(context.Background(), Options{Dir: dir, Profile: benchProfile(), Durability: DurabilityNone, GCInterval: -1, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	const per = 256
	err = nil
	var mu sync.Mutex
	runWriters(b, 4, (n+per-1)/per, func(k int) error {
		c := &Commit{}
		for i := k * per; i < min(n, (k+1)*per); i++ {
			c.Records = append(c.Records, Record{Stream: "s" + strconv.Itoa(i%10), Function: "f", Device: "d" + strconv.Itoa(i%100),
				EventTS: int64(i) * 1000, Data: []byte(`{"temp":` + strconv.Itoa(15+i%20) + `,"hum":40}`)})
		}
		_, e := s.Commit(context.Background(), c)
		if e != nil {
			mu.Lock()
			err = e
			mu.Unlock()
		}
		return e
	})
	if err != nil {
		b.Fatal(err)
	}
	queryFix[n] = s
	return s
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, s := range queryFix {
		_ = s.Close()
	}
	for _, d := range fixDirs {
		_ = os.RemoveAll(d)
	}
	os.Exit(code)
}

// BenchmarkQuery: local query latency over n records.
func BenchmarkQuery(b *testing.B) {
	n := 20_000
	if benchFull() {
		n = 1_000_000
	}
	s := queryStore(b, n)
	ctx := context.Background()
	mid := int64(n/2) * 1000
	cases := []struct {
		name string
		run  func() (int, error)
	}{
		{"stream-newest-100", func() (int, error) {
			r, _, err := s.QueryRecords(ctx, Query{Stream: "s3", Desc: true, Limit: 100})
			return len(r), err
		}},
		{"device-1h-window", func() (int, error) {
			r, _, err := s.QueryRecords(ctx, Query{Device: "d7", From: mid, To: mid + 3600_000, Limit: 1000})
			return len(r), err
		}},
		{"all-page-100-at-middle", func() (int, error) {
			r, _, err := s.QueryRecords(ctx, Query{From: mid, Limit: 100})
			return len(r), err
		}},
		{"agg-stream-1h-5min-buckets", func() (int, error) {
			r, err := s.Aggregate(ctx, AggQuery{Query: Query{Stream: "s3", From: mid, To: mid + 3600_000}, Field: "temp", Bucket: 5 * time.Minute})
			return len(r), err
		}},
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/records=%d", c.name, n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				k, err := c.run()
				if err != nil || k == 0 {
					b.Fatal(k, err)
				}
			}
		})
	}
}

func procIOWriteBytes() int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

func procStatusKB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkEventsDisk: events = Enqueue + processing Commit, 64 writers,
// DurabilityAlways; reports bytes written to disk per event (/proc/self/io
// write_bytes, including Badger's flushes and compactions until Close) and
// the process RSS after writing them (run alone: -bench EventsDisk).
func BenchmarkEventsDisk(b *testing.B) {
	n := max(b.N, 5000)
	if benchFull() {
		n = 1_000_000
	}
	if v, err := strconv.Atoi(os.Getenv("MOONGATE_BENCH_EVENTS")); err == nil && v > 0 {
		n = v
	}
	for _, p := range []Profile{ProfileLowMemory, ProfileLarge} {
		b.Run(fmt.Sprintf("profile=%s/events=%d", p, n), func(b *testing.B) {
			ctx := context.Background()
			runtime.GC()
			w0 := procIOWriteBytes()
			s := openTest(b, Options{Profile: p, GCInterval: -1})
			b.ResetTimer()
			start := time.Now()
			runWriters(b, 64, n, func(i int) error {
				seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "dev", Event: []byte(`{"t":21.5,"h":40}`)}})
				if err != nil {
					return err
				}
				_, err = s.Commit(ctx, smallCommit(seqs[0], i))
				return err
			})
			el := time.Since(start)
			b.StopTimer()
			rss := procStatusKB("VmRSS")
			anon := procStatusKB("RssAnon")
			hwm := procStatusKB("VmHWM")
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			if p := os.Getenv("MOONGATE_BENCH_HEAPPROFILE"); p != "" {
				f, err := os.Create(p)
				if err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			w1 := procIOWriteBytes()
			b.ReportMetric(float64(n)/el.Seconds(), "events/s")
			if w0 >= 0 && w1 >= 0 {
				b.ReportMetric(float64(w1-w0)/float64(n), "disk-bytes/event")
			}
			b.ReportMetric(float64(rss)/1024, "RSS-MiB")
			b.ReportMetric(float64(anon)/1024, "anonRSS-MiB")
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heapInuse-MiB")
			b.ReportMetric(float64(hwm)/1024, "peakRSS-MiB")
		})
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// MOONGATE_BENCH_BADGER overrides Badger options in benchmarks, for tuning
// experiments: comma-separated key=value with keys memtable, memtables, l0,
// stall, basetable, baselevel (sizes in MiB) and multiplier.
func init() {
	spec := os.Getenv("MOONGATE_BENCH_BADGER")
	if spec == "" {
		return
	}
	badgerTune = func(bo badger.Options) badger.Options {
		for _, kv := range strings.Split(spec, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil {
				panic("MOONGATE_BENCH_BADGER: " + kv)
			}
			switch k {
			case "memtable":
				bo = bo.WithMemTableSize(int64(n) << 20)
			case "memtables":
				bo = bo.WithNumMemtables(n)
			case "l0":
				bo = bo.WithNumLevelZeroTables(n)
			case "stall":
				bo = bo.WithNumLevelZeroTablesStall(n)
			case "basetable":
				bo = bo.WithBaseTableSize(int64(n) << 20)
			case "baselevel":
				bo = bo.WithBaseLevelSize(int64(n) << 20)
			case "multiplier":
				bo = bo.WithLevelSizeMultiplier(n)
			default:
				panic("MOONGATE_BENCH_BADGER: unknown key " + k)
			}
		}
		return bo
	}
}

// BenchmarkEventLatency: events offered at a fixed rate (MOONGATE_BENCH_RATE
// per second, default 5,000) by 64 simulated devices: each event is an
// Enqueue, then a processing Commit with one local publish, then the
// publish is acknowledged, as the gateway does. Reports the latency of the
// durable part of an event (Enqueue start to Commit return) at p50, p99 and
// max: the store's share of the end-to-end latency.
func BenchmarkEventLatency(b *testing.B) {
	rate := 5000
	if v, err := strconv.Atoi(os.Getenv("MOONGATE_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	ctx := context.Background()
	s := openTest(b, Options{Profile: benchProfile(), GCInterval: -1})
	const devices = 64
	lat := make([]time.Duration, b.N)
	acks := make(chan uint64, 4096)
	ackDone := make(chan struct{})
	go func() {
		defer close(ackDone)
		var seqs []uint64
		for seq := range acks {
			seqs = append(seqs[:0], seq)
		more:
			for len(seqs) < 256 {
				select {
				case q, ok := <-acks:
					if !ok {
						break more
					}
					seqs = append(seqs, q)
				default:
					break more
				}
			}
			if err := s.AckPublishes(ctx, seqs...); err != nil {
				b.Error(err)
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	for d := 0; d < devices; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := d; i < b.N; i += devices {
				due := start.Add(time.Duration(i) * interval)
				if w := time.Until(due); w > 0 {
					time.Sleep(w) // the offered schedule, not a wait for readiness
				}
				seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "dev", Event: []byte(`{"t":21.5,"h":40}`)}})
				if err != nil {
					b.Error(err)
					return
				}
				c := smallCommit(seqs[0], i)
				c.Publishes = []Publish{{Topic: "devices/d/cmd", Payload: []byte(`{"ok":true}`), QoS: 1}}
				res, err := s.Commit(ctx, c)
				if err != nil {
					b.Error(err)
					return
				}
				// Latency from when the event was due: time spent queued
				// behind a slow commit counts.
				lat[i] = time.Since(due)
				for _, p := range res.Publishes {
					acks <- p.Seq
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(acks)
	<-ackDone
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}

// BenchmarkCommitLogsAtQuota: commits of one log line each, 64 writers,
// with the logs space full (every write drops an old line): the cost of
// choosing what to drop (the oldest line of the function holding most),
// with 4 and with 1,000 functions holding lines.
func BenchmarkCommitLogsAtQuota(b *testing.B) {
	for _, fns := range []int{4, 1000} {
		b.Run(fmt.Sprintf("functions=%d", fns), func(b *testing.B) {
			s := openTest(b, Options{Profile: benchProfile(), GCInterval: -1, Durability: DurabilityNone,
				Quotas: map[string]Quota{SpaceLogs: {MaxBytes: 256 << 10}}})
			line := strings.Repeat("l", 100)
			commit := func(i int) error {
				_, err := s.Commit(context.Background(), &Commit{Logs: []LogRecord{{Function: "f" + strconv.Itoa(i%fns), Level: "info", Msg: line}}})
				return err
			}
			for i := range 4000 { // past the quota
				if err := commit(i); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			rate := runWriters(b, 64, b.N, commit)
			b.StopTimer()
			if s.Stats().Spaces[SpaceLogs].Drops == 0 {
				b.Fatal("nothing dropped")
			}
			b.ReportMetric(rate, "commits/s")
		})
	}
}

// BenchmarkQueryUsageNarrow: one minute of usage out of 4 functions x 30
// days of minute meters (172,800 kept), all functions and one.
func BenchmarkQueryUsageNarrow(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, Options{Profile: benchProfile(), Durability: DurabilityNone, GCInterval: -1})
	now := int64(1_800_000_000_000)
	now -= now % usageBucketMS
	wb := s.db.NewWriteBatch()
	for _, fn := range []string{"f1", "f2", "f3", "f4"} {
		for m := int64(0); m < 30*24*60; m++ {
			if err := wb.Set(nameSeqKey(pUsage, fn, tsBits(now-m*usageBucketMS)), encodeUsage(&Usage{Invocations: 1})); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := wb.Flush(); err != nil {
		b.Fatal(err)
	}
	for _, fn := range []string{"", "f1"} {
		b.Run("function="+fn, func(b *testing.B) {
			for b.Loop() {
				if us, err := s.QueryUsage(ctx, fn, now, now+usageBucketMS, 0); err != nil || len(us) == 0 {
					b.Fatal(us, err)
				}
			}
		})
	}
}

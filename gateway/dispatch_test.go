package gateway

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// An older job pushed to a lane that waits in the ready queue (no worker
// holds it) runs first: only a job a worker is running keeps its place at
// the head. (Chained entries fed late used to run after younger ones.)
func TestDispatchOlderJobTakesTheHeadOfAWaitingLane(t *testing.T) {
	var mu sync.Mutex
	var order []uint64
	ran := make(chan struct{}, 4)
	d := newDispatcher(1, 10, 1<<20, 0, func(_ context.Context, j *job) (outcome, time.Duration) {
		mu.Lock()
		order = append(order, j.entry.Seq)
		mu.Unlock()
		ran <- struct{}{}
		return done, 0
	})
	push := func(seq uint64) {
		j := &job{entry: store.InboxEntry{Seq: seq}, size: 1}
		if !d.tryAdmit(j) {
			t.Fatal("no room")
		}
		d.push("lane", j)
	}
	push(101) // the lane is queued in the ready list; no worker yet
	push(100)
	ctx, cancel := context.WithCancel(context.Background())
	d.start(ctx, 1)
	<-ran
	<-ran
	cancel()
	d.wait()
	if len(order) != 2 || order[0] != 100 || order[1] != 101 {
		t.Errorf("order %v, want [100 101]", order)
	}
}

// A job pushed while a worker runs the lane's head never goes in front of it.
func TestDispatchRunningHeadKeepsItsPlace(t *testing.T) {
	var mu sync.Mutex
	var order []uint64
	started := make(chan struct{})
	release := make(chan struct{})
	ran := make(chan struct{}, 4)
	d := newDispatcher(1, 10, 1<<20, 0, func(_ context.Context, j *job) (outcome, time.Duration) {
		if j.entry.Seq == 101 {
			close(started)
			<-release
		}
		mu.Lock()
		order = append(order, j.entry.Seq)
		mu.Unlock()
		ran <- struct{}{}
		return done, 0
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.start(ctx, 1)
	for _, seq := range []uint64{101, 100} {
		if seq == 100 {
			<-started
		}
		j := &job{entry: store.InboxEntry{Seq: seq}, size: 1}
		if !d.tryAdmit(j) {
			t.Fatal("no room")
		}
		d.push("lane", j)
	}
	close(release)
	<-ran
	<-ran
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != 101 || order[1] != 100 {
		t.Errorf("order %v, want [101 100] (the running job first)", order)
	}
}

// Copies of one message claim its fingerprint one at a time: when the
// holder is done, exactly one waiter takes it; the next waits for that one.
func TestInflightClaimIsExclusive(t *testing.T) {
	var s inflightSet
	var key fpKey
	ctx := context.Background()
	if err := s.claim(ctx, key); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 2)
	for i := 1; i <= 2; i++ {
		go func() {
			if err := s.claim(ctx, key); err == nil {
				got <- i
			}
		}()
	}
	// Both waiters are parked on the key's channel before it is released.
	waitFor(t, 5*time.Second, "two waiters", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.m[key] != nil
	})
	s.done(key)
	first := <-got
	select {
	case second := <-got:
		t.Fatalf("waiters %d and %d both claimed the key", first, second)
	case <-time.After(200 * time.Millisecond): // negative check: the other stays parked
	}
	s.done(key)
	<-got
	s.done(key)
	cctx, cancel := context.WithCancel(ctx)
	if err := s.claim(cctx, key); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := s.claim(cctx, key); err == nil {
		t.Error("claim of a held key with an ended context succeeded")
	}
}

// A stop does not wait for the events whose workers are queued for an
// invocation turn (Options.Workers): only the invocation running finishes,
// the others stay in the inbox for the next start. Before, each queued
// worker still ran its whole invocation, so a stop could take up to 16
// times a function's timeout.
func TestStopDoesNotRunQueuedInvocations(t *testing.T) {
	fnDir := t.TempDir()
	dataDir := t.TempDir()
	writeFunction(t, fnDir, "spin", `function handle(e) while true do end end`,
		"triggers:\n  - mqtt: spin/{device}\nlimits: {timeout: 2s, max_steps: 10000000000}\n")
	p := startInProcess(t, testConfig(dataDir, fnDir, "pipeline: {workers: 1}\n"))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "spinner", true)
	const n = 8
	for i := range n {
		publish(t, dev, "spin/d"+strconv.Itoa(i), 1, []byte(`{}`)) // one lane each
	}
	waitFor(t, 10*time.Second, "every event queued", func() bool { return p.d.Gateway().Stats().Enqueued == n })
	p.stop(t)
	st, err := store.Open(context.Background(), store.Options{Dir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	left, err := st.InboxPending(context.Background(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	// One invocation was running at the stop (perhaps a second had just
	// taken the turn); the rest never started. The timeout is long enough
	// that a slow publish phase on a loaded machine does not let a third
	// one time out and leave the inbox before the stop (with 300 ms it did).
	if len(left) < n-2 {
		t.Errorf("%d of %d events left in the inbox after the stop: the queued invocations ran", len(left), n)
	}
}

// TestAdmitGroupLargerThanTheBacklog: a message that fans out to more
// functions than the backlog holds entries, or whose entries hold more
// bytes than its size, is admitted (taking the whole backlog) instead of
// waiting forever, and its jobs give back exactly what was reserved
// (before, the jobs of a group over the byte bound gave back more than it
// took, and the semaphore panicked: the daemon crashed).
func TestAdmitGroupLargerThanTheBacklog(t *testing.T) {
	const maxN, maxB = 2, 1000
	ran := make(chan struct{}, 16)
	d := newDispatcher(2, maxN, maxB, 0, func(context.Context, *job) (outcome, time.Duration) {
		ran <- struct{}{}
		return done, 0
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); d.wait() }()
	d.start(ctx, 2)
	for _, sizes := range [][]int64{{600, 600, 600}, {10, 10, 10, 10, 10}, {0, 0, 2000}, {400, 400}, {700, 700}, {1500}} {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		jobs := make([]*job, len(sizes))
		for i, sz := range sizes {
			jobs[i] = &job{entry: store.InboxEntry{Seq: uint64(i + 1), Function: fmt.Sprint("f", i%2)}, size: sz}
		}
		if err := d.admit(actx, jobs...); err != nil {
			t.Fatalf("sizes %v: admit: %v", sizes, err)
		}
		acancel()
		for i, j := range jobs {
			d.push(fmt.Sprint("lane", i), j)
		}
		for range jobs {
			<-ran
		}
		// Everything given back: the whole backlog can be taken again.
		whole := make([]*job, maxN)
		for i := range whole {
			whole[i] = &job{entry: store.InboxEntry{Function: "f0"}, size: maxB / maxN}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			actx, acancel := context.WithTimeout(ctx, time.Millisecond)
			err := d.admit(actx, whole...)
			acancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sizes %v: the backlog's room did not come back", sizes)
			}
			runtime.Gosched()
		}
		d.release(whole...)
	}
}

// TestFunctionShareOfTheBacklog: the jobs of one function hold at most its
// share of the backlog; once it is full, admitting another of its jobs
// waits, while another function's job is admitted at once. A group over
// the share (one message matched twice by a function) takes the whole
// share instead of waiting forever, and everything taken comes back.
func TestFunctionShareOfTheBacklog(t *testing.T) {
	const maxN, maxB, share = 8, 8000, 2
	hold := make(chan struct{})
	d := newDispatcher(2, maxN, maxB, share, func(context.Context, *job) (outcome, time.Duration) {
		<-hold
		return done, 0
	})
	if d.fnB != maxB*share/maxN {
		t.Fatalf("bytes share %d, want %d", d.fnB, maxB*share/maxN)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var unhold sync.Once
	defer func() { unhold.Do(func() { close(hold) }); cancel(); d.wait() }()
	d.start(ctx, 2)
	seq := uint64(0)
	mk := func(fn string, size int64) *job {
		seq++
		return &job{entry: store.InboxEntry{Seq: seq, Function: fn, Key: fmt.Sprint(seq)}, size: size}
	}
	admitWithin := func(jobs ...*job) error {
		actx, acancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer acancel()
		return d.admit(actx, jobs...)
	}
	for range share {
		j := mk("a", 10)
		if err := admitWithin(j); err != nil {
			t.Fatalf("a within its share: %v", err)
		}
		d.push(j.entry.Key, j)
	}
	if err := admitWithin(mk("a", 10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a over its share: admit returned %v, want it to wait", err)
	}
	if j := mk("a", 10); d.tryAdmit(j) {
		t.Fatal("tryAdmit took room over a's share")
	}
	// The bytes of the share bound too.
	b1 := mk("b", 1500)
	if err := admitWithin(b1); err != nil {
		t.Fatalf("b, while a's share is full: %v", err)
	}
	if err := admitWithin(mk("b", 1500)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b over its byte share (%d): admit returned %v, want it to wait", d.fnB, err)
	}
	d.release(b1)
	// A group of c over its share in entries and bytes: takes the whole
	// share.
	group := []*job{mk("c", 1500), mk("c", 1500), mk("c", 1500)}
	if err := admitWithin(group...); err != nil {
		t.Fatalf("c's group over its share: %v", err)
	}
	d.release(group...)
	unhold.Do(func() { close(hold) })
	// Everything given back: each function can take its whole share.
	for _, fn := range []string{"a", "b", "c"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			jobs := []*job{mk(fn, d.fnB/2), mk(fn, d.fnB/2)}
			if d.tryAdmitAll(jobs) {
				d.release(jobs...)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's share did not come back", fn)
			}
			runtime.Gosched()
		}
	}
}

// tryAdmitAll admits jobs if there is room for all of them now.
func (d *dispatcher) tryAdmitAll(jobs []*job) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	return d.admit(ctx, jobs...) == nil
}

// BenchmarkAdmit: admitting one event's job and giving its room back (the
// intake's share of the dispatcher's cost per event).
func BenchmarkAdmit(b *testing.B) {
	d := newDispatcher(4, 10000, 16<<20, 2500, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for i := range b.N {
		j := &job{entry: store.InboxEntry{Function: "reference", Seq: uint64(i)}, size: 200}
		if err := d.admit(ctx, j); err != nil {
			b.Fatal(err)
		}
		d.giveRoom(j)
	}
}

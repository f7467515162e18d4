package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const crashDirEnv = "MOONGATE_STORE_CRASH_DIR"

// TestCrashChild is the writer process of TestCrash: it is only run when
// TestCrash re-executes the test binary with crashDirEnv set.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("helper process of TestCrash (runs only when re-executed by it)")
	}
	ctx := context.Background()
	s, err := Open(ctx, Options{Dir: dir, GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		fmt.Printf("OPENERR %v\n", err)
		os.Exit(3)
	}
	var outMu sync.Mutex
	say := func(format string, a ...any) {
		line := fmt.Sprintf(format, a...)
		outMu.Lock()
		os.Stdout.WriteString(line + "\n")
		outMu.Unlock()
	}
	commit := func(e InboxEntry) error {
		id := string(e.Event)
		res, err := s.Commit(ctx, &Commit{
			InboxSeq: e.Seq,
			Records:  []Record{{Stream: "crash", Function: e.Function, EventID: id, Data: []byte(fmt.Sprintf(`{"inbox":%d}`, e.Seq)), Targets: []string{"up"}}},
			State: []StateChange{
				{Function: "crash", Op: StateIncr, Key: "count", Delta: 1},
				{Function: "crash", Op: StateSet, Key: "last-" + e.Key, Value: []byte(strconv.Quote(id))},
			},
			Publishes: []Publish{{Topic: "out/" + id, Payload: []byte(id), QoS: 1}},
		})
		if errors.Is(err, ErrAlreadyConsumed) {
			return nil
		}
		if err != nil {
			return err
		}
		say("ACK C %d %d %d %s", e.Seq, res.Records[0].Seq, res.Publishes[0].Seq, id)
		return nil
	}
	// Recovery: finish what the previous (killed) run accepted.
	for {
		pend, err := s.InboxPending(ctx, 0, 100)
		if err != nil {
			say("ERR pending %v", err)
			os.Exit(4)
		}
		if len(pend) == 0 {
			break
		}
		for _, e := range pend {
			if err := commit(e); err != nil {
				say("ERR recover %v", err)
				os.Exit(4)
			}
		}
	}
	say("READY")
	run := os.Getenv("MOONGATE_STORE_CRASH_RUN")
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("r%s-w%d-%d", run, w, i)
				// Queued without waiting: durable no later than the
				// enqueue acknowledged below (checked after the kill).
				if err := s.SetSession([]byte("s/"+id), []byte(id)); err != nil {
					say("ERR session %v", err)
					os.Exit(5)
				}
				seqs, err := s.Enqueue(ctx, []InboxEntry{{Function: "fn", Key: fmt.Sprintf("w%d", w), Event: []byte(id)}})
				if err != nil {
					say("ERR enqueue %v", err)
					os.Exit(5)
				}
				say("ACK E %d %s", seqs[0], id)
				if i%5 == 4 {
					continue // leave some entries for the next run's recovery
				}
				if err := commit(InboxEntry{Seq: seqs[0], Function: "fn", Key: fmt.Sprintf("w%d", w), Event: []byte(id)}); err != nil {
					say("ERR commit %v", err)
					os.Exit(6)
				}
			}
		}()
	}
	time.AfterFunc(90*time.Second, func() { os.Exit(7) })
	wg.Wait()
}

type ackE struct {
	seq uint64
	id  string
}

type ackC struct {
	inbox, rec, pub uint64
	id              string
}

// TestCrash kills a writer process with SIGKILL at random moments and checks
// after each kill that every acknowledged write is present, nothing is
// partially applied, nothing is duplicated and sequences only increase.
func TestCrash(t *testing.T) {
	kills := 25
	if v := os.Getenv("MOONGATE_STORE_CRASH_KILLS"); v != "" {
		kills, _ = strconv.Atoi(v)
	}
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var maxRec, maxInbox, maxPub uint64
	allE := map[string]ackE{}
	allC := map[string]ackC{}
	start := time.Now()
	totalAcks := 0
	for k := 0; k < kills; k++ {
		args := []string{"-test.run=^TestCrashChild$", "-test.count=1"}
		cmd := exec.Command(exe, args...)
		if w := os.Getenv("MOONGATE_STORE_EXEC_WRAPPER"); w != "" {
			// Under qemu-arm without binfmt_misc the binary needs its emulator.
			cmd = exec.Command(w, append([]string{exe}, args...)...)
		}
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, "MOONGATE_STORE_CRASH_RUN="+strconv.Itoa(k))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			r := bufio.NewReader(stdout)
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return // a partial last line is not an acknowledgement
				}
				lines <- strings.TrimSuffix(l, "\n")
			}
		}()
		// Kill either at a random moment after start (possibly during open or
		// recovery) or after a random number of acknowledged writes.
		var timer <-chan time.Time
		wantAcks := -1
		if rng.IntN(5) == 0 {
			timer = time.After(time.Duration(rng.IntN(150)) * time.Millisecond)
		} else {
			wantAcks = 1 + rng.IntN(400)
		}
		var got []string
		acks := 0
		killed := false
		deadline := time.After(60 * time.Second)
	loop:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break loop
				}
				if strings.HasPrefix(l, "ERR") || strings.HasPrefix(l, "OPENERR") {
					t.Fatalf("run %d: child: %s", k, l)
				}
				got = append(got, l)
				if strings.HasPrefix(l, "ACK") {
					acks++
				}
				if !killed && wantAcks >= 0 && acks >= wantAcks {
					_ = cmd.Process.Signal(syscall.SIGKILL)
					killed = true
				}
			case <-timer:
				_ = cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			case <-deadline:
				_ = cmd.Process.Kill()
				t.Fatalf("run %d: child made no progress in 60s", k)
			}
		}
		werr := cmd.Wait()
		if !killed {
			t.Fatalf("run %d: child exited by itself: %v", k, werr)
		}
		// Every new sequence must be above everything seen before this run.
		var runE []ackE
		var runC []ackC
		for _, l := range got {
			f := strings.Fields(l)
			switch {
			case len(f) == 4 && f[1] == "E":
				seq, _ := strconv.ParseUint(f[2], 10, 64)
				runE = append(runE, ackE{seq, f[3]})
			case len(f) == 6 && f[1] == "C":
				a, _ := strconv.ParseUint(f[2], 10, 64)
				b, _ := strconv.ParseUint(f[3], 10, 64)
				c, _ := strconv.ParseUint(f[4], 10, 64)
				runC = append(runC, ackC{a, b, c, f[5]})
			}
		}
		for _, e := range runE {
			if e.seq <= maxInbox {
				t.Fatalf("run %d: inbox seq %d not above %d from earlier runs", k, e.seq, maxInbox)
			}
			if _, dup := allE[e.id]; dup {
				t.Fatalf("run %d: event %s enqueued twice", k, e.id)
			}
			allE[e.id] = e
		}
		for _, c := range runC {
			if c.rec <= maxRec || c.pub <= maxPub {
				t.Fatalf("run %d: record/publish seq %d/%d not above %d/%d from earlier runs", k, c.rec, c.pub, maxRec, maxPub)
			}
			if prev, dup := allC[c.id]; dup {
				t.Fatalf("run %d: event %s committed twice (%+v, %+v)", k, c.id, prev, c)
			}
			allC[c.id] = c
		}
		totalAcks += len(runE) + len(runC)
		maxRec, maxInbox, maxPub = verifyCrashStore(t, k, dir, allE, allC)
	}
	t.Logf("%d kills, %d acknowledged writes verified, %d records, in %v", kills, totalAcks, maxRec, time.Since(start))
}

// verifyCrashStore opens the store and checks it against the
// acknowledgements; it returns the highest record, inbox and publish
// sequences present or acknowledged.
func verifyCrashStore(t *testing.T, run int, dir string, allE map[string]ackE, allC map[string]ackC) (uint64, uint64, uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, Options{Dir: dir, GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		t.Fatalf("run %d: reopen after SIGKILL: %v", run, err)
	}
	defer s.Close()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Fatalf("run %d: "+format, append([]any{run}, a...)...)
	}
	// A session write queued before an acknowledged enqueue is there.
	sess := map[string]bool{}
	if err := s.LoadSessions(ctx, func(k, v []byte) error {
		if string(k) != "s/"+string(v) {
			fail("session item %q holds %q", k, v)
		}
		sess[string(v)] = true
		return nil
	}); err != nil {
		fail("LoadSessions: %v", err)
	}
	for id := range allE {
		if !sess[id] {
			fail("event %s was acknowledged but the session write queued before it is missing", id)
		}
	}
	// Records by event id: no duplicates, ids from sequences (each run,
	// a new Open, has its own incarnation in them).
	recs := map[string]Record{}
	var maxRec uint64
	inboxOfRecord := map[uint64]string{}
	err = s.db.View(func(txn *badger.Txn) error {
		return scanSeq(txn, pRecord, 1, 0, func(seq uint64, v []byte) error {
			r, err := decodeRecord(v)
			if err != nil {
				return err
			}
			if r.Seq != seq || !recordIDOf(r.ID, "gw", seq) {
				fail("record key %d holds seq %d id %s", seq, r.Seq, r.ID)
			}
			if prev, dup := recs[r.EventID]; dup {
				fail("event %s has two records (%d and %d)", r.EventID, prev.Seq, seq)
			}
			recs[r.EventID] = r
			var in uint64
			fmt.Sscanf(string(r.Data), `{"inbox":%d}`, &in)
			inboxOfRecord[in] = r.EventID
			maxRec = max(maxRec, seq)
			return nil
		})
	})
	if err != nil {
		fail("scan records: %v", err)
	}
	// Inbox: what is left must not have been committed.
	inbox := map[uint64]InboxEntry{}
	var maxInbox uint64
	for after := uint64(0); ; {
		pend, err := s.InboxPending(ctx, after, 500)
		if err != nil {
			fail("InboxPending: %v", err)
		}
		if len(pend) == 0 {
			break
		}
		for _, e := range pend {
			inbox[e.Seq] = e
			if id, ok := inboxOfRecord[e.Seq]; ok {
				fail("inbox entry %d (%s) still pending although its record exists: partial commit", e.Seq, id)
			}
			after = e.Seq
			maxInbox = max(maxInbox, e.Seq)
		}
	}
	if int64(len(inbox)) != s.InboxLen() {
		fail("InboxLen %d, %d entries present", s.InboxLen(), len(inbox))
	}
	// Publishes and outbox entries: one per record, same event ids.
	pubs := map[string]uint64{}
	var maxPub uint64
	for after := uint64(0); ; {
		ps, err := s.PendingPublishes(ctx, after, 500)
		if err != nil {
			fail("PendingPublishes: %v", err)
		}
		if len(ps) == 0 {
			break
		}
		for _, p := range ps {
			id := string(p.Payload)
			if _, dup := pubs[id]; dup {
				fail("two publishes for %s", id)
			}
			if _, ok := recs[id]; !ok {
				fail("publish %d for %s without its record: partial commit", p.Seq, id)
			}
			pubs[id] = p.Seq
			after = p.Seq
			maxPub = max(maxPub, p.Seq)
		}
	}
	obs := map[string]bool{}
	for after := uint64(0); ; {
		es, err := s.OutboxRead(ctx, "up", after, 500, 0)
		if err != nil {
			fail("OutboxRead: %v", err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			obs[e.Record.EventID] = true
			after = e.Seq
		}
	}
	if len(pubs) != len(recs) || len(obs) != len(recs) {
		fail("%d records, %d publishes, %d outbox entries: partial commit", len(recs), len(pubs), len(obs))
	}
	v, ok, err := s.GetState(ctx, "crash", "count")
	n := 0.0
	if ok {
		n, err = parseJSONNumber(v)
	}
	if err != nil || int(n) != len(recs) {
		fail("state count %q (%v), %d records: partial commit", v, err, len(recs))
	}
	if st := s.Stats().Spaces[SpaceRecords]; st.Count != int64(len(recs)) {
		fail("records counter %d, %d present", st.Count, len(recs))
	}
	// Every acknowledged write is there.
	for id, e := range allE {
		if _, pending := inbox[e.seq]; pending {
			if string(inbox[e.seq].Event) != id {
				fail("inbox entry %d holds %q, acknowledged %q", e.seq, inbox[e.seq].Event, id)
			}
			continue
		}
		if _, done := recs[id]; !done {
			fail("acknowledged event %s (inbox %d) lost: neither pending nor committed", id, e.seq)
		}
	}
	for id, c := range allC {
		r, ok := recs[id]
		if !ok {
			fail("acknowledged commit of %s lost", id)
		}
		if r.Seq != c.rec || pubs[id] != c.pub {
			fail("commit of %s acknowledged as record %d publish %d, store has %d/%d", id, c.rec, c.pub, r.Seq, pubs[id])
		}
		if _, pending := inbox[c.inbox]; pending {
			fail("committed inbox entry %d still pending", c.inbox)
		}
	}
	for _, e := range allE {
		maxInbox = max(maxInbox, e.seq)
	}
	for _, c := range allC {
		maxRec, maxPub = max(maxRec, c.rec), max(maxPub, c.pub)
	}
	return maxRec, maxInbox, maxPub
}

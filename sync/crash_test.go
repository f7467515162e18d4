package sync

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// Environment of the crash child (the test binary re-executed by
// TestCrashDuringOutage).
const (
	envCrashDir    = "MOONGATE_SYNC_CRASH_DIR"
	envCrashType   = "MOONGATE_SYNC_CRASH_TYPE"
	envCrashURL    = "MOONGATE_SYNC_CRASH_URL"
	envCrashRecord = "MOONGATE_SYNC_CRASH_RECORDS"
)

// TestCrashChild is the moongate stand-in of TestCrashDuringOutage: the
// store (durability always), a producer committing function results routed
// to target "up", and the sync manager draining them. It prints "C <id>"
// once each commit returned, and runs until killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		t.Skip("helper process of TestCrashDuringOutage (runs only when re-executed by it)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	st, err := store.Open(ctx, store.Options{Dir: dir, GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		fmt.Println("OPENERR", err)
		os.Exit(3)
	}
	tc := fastTarget("up", os.Getenv(envCrashType))
	tc.Inflight = 32
	switch tc.Type {
	case "http":
		tc.HTTP.URL = os.Getenv(envCrashURL)
	case "mqtt":
		tc.MQTT.Broker = os.Getenv(envCrashURL)
	case "nats":
		tc.NATS.URL = os.Getenv(envCrashURL)
	}
	m, err := New(Options{Store: st, GatewayID: "gw", Logger: quietLogger(), Targets: []TargetConfig{tc}, PollInterval: 5 * time.Millisecond})
	if err != nil {
		fmt.Println("NEWERR", err)
		os.Exit(3)
	}
	go func() { _ = m.Run(ctx) }()
	limit, _ := strconv.Atoi(os.Getenv(envCrashRecord))
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "READY")
	out.Flush()
	for i := 0; i < limit && ctx.Err() == nil; {
		c := &store.Commit{}
		for j := 0; j < 10; j, i = j+1, i+1 {
			c.Records = append(c.Records, store.Record{Stream: fmt.Sprintf("s%d", i%3), Function: "f", Data: []byte(fmt.Sprintf(`{"n":%d}`, i)), Targets: []string{"up"}})
		}
		res, err := st.Commit(ctx, c)
		if err != nil {
			fmt.Fprintln(out, "COMMITERR", err)
			out.Flush()
			os.Exit(3)
		}
		for _, r := range res.Records {
			fmt.Fprintln(out, "C", r.ID)
		}
		out.Flush()
		time.Sleep(2 * time.Millisecond) // sustained load, not a flood
	}
	fmt.Fprintln(out, "PRODUCED")
	out.Flush()
	<-ctx.Done()
}

// crashChild is a running TestCrashChild process.
type crashChild struct {
	cmd  *exec.Cmd
	mu   gosync.Mutex
	ids  []string
	done chan struct{}
	prod chan struct{}
}

func startCrashChild(t *testing.T, dir, typ, url string, records int) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashType+"="+typ, envCrashURL+"="+url, envCrashRecord+"="+strconv.Itoa(records))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, done: make(chan struct{}), prod: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "READY":
				close(ready)
			case line == "PRODUCED":
				close(c.prod)
			case strings.HasPrefix(line, "C "):
				c.mu.Lock()
				c.ids = append(c.ids, line[2:])
				c.mu.Unlock()
			default:
				t.Errorf("child: %s", line)
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case <-ready:
	case <-c.done:
		t.Fatal("crash child exited before READY")
	case <-time.After(30 * time.Second):
		t.Fatal("crash child not READY")
	}
	t.Cleanup(c.kill)
	return c
}

func (c *crashChild) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (c *crashChild) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// TestCrashDuringOutage, per target: moongate (store + sync) runs under
// load, the upstream goes down, moongate is SIGKILLed while it is down and
// restarted (still down), then the upstream comes back, and moongate is
// SIGKILLed again while it drains the backlog and restarted. Every record
// committed (by both runs, read back from the store) reaches the upstream,
// in order per stream; re-sent records keep their id; JetStream holds each
// exactly once.
func TestCrashDuringOutage(t *testing.T) {
	for _, typ := range []string{"http", "mqtt", "nats"} {
		t.Run(typ, func(t *testing.T) {
			var url string
			var down, up func()
			var received func() []upRecord
			switch typ {
			case "http":
				u := newHTTPUpstream(t)
				url, down, up, received = u.URL, func() { u.setMode("503") }, func() { u.setMode("ok") }, u.col.snapshot
			case "mqtt":
				mq := mqtttest.StartMosquitto(t)
				col := mqttSubscriber(t, mq.URL())
				url, down, up, received = mq.URL(), mq.Stop, mq.Restart, col.snapshot
			case "nats":
				ns := startNATS(t)
				createStream(t, ns.url())
				url, down, up = ns.url(), ns.stop, ns.start
				received = func() []upRecord { return streamRecords(t, ns.url()) }
			}
			dir := t.TempDir()
			c1 := startCrashChild(t, dir, typ, url, 1<<30)
			waitFor(t, 20*time.Second, "first commits", func() bool { return c1.count() > 300 })
			down()
			n := c1.count()
			waitFor(t, 20*time.Second, "commits while the upstream is down", func() bool { return c1.count() > n+500 })
			c1.kill()
			c2 := startCrashChild(t, dir, typ, url, 1000)
			waitFor(t, 20*time.Second, "commits after the restart", func() bool { return c2.count() > 300 })
			up()
			select {
			case <-c2.prod:
			case <-time.After(30 * time.Second):
				t.Fatal("second run did not finish producing")
			}
			// Kill it once more while it drains the backlog to the
			// upstream (batches in flight), and let a third run finish.
			c2.kill()
			c3 := startCrashChild(t, dir, typ, url, 0)
			// Every printed commit must arrive while the third run drains.
			total := c1.count() + c2.count()
			var got []upRecord
			waitFor(t, 60*time.Second, "upstream has every printed commit", func() bool {
				if typ == "nats" {
					if streamCount(url) < total {
						return false
					}
				}
				got = received()
				seen := map[string]bool{}
				for _, r := range got {
					seen[r.ID] = true
				}
				return len(seen) >= total
			})
			c3.kill()
			// The store knows every committed record, including commits
			// the first child made but was killed before printing.
			st := openStore(t, dir, store.DurabilityAlways)
			var want []sent
			q := store.Query{Limit: store.MaxQueryLimit}
			for {
				recs, cur, err := st.QueryRecords(context.Background(), q)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range recs {
					want = append(want, sent{ID: r.ID, Seq: r.Seq, Stream: r.Stream})
				}
				if cur == "" {
					break
				}
				q.Cursor = cur
			}
			if len(want) < total {
				t.Fatalf("store holds %d records, children printed %d commits", len(want), total)
			}
			// Records committed but not printed may still be in the outbox
			// if the child was killed before delivering them: deliver the
			// rest with a manager in this process.
			if backlog := st.OutboxStats("up").Backlog; backlog > 0 {
				tc := fastTarget("up", typ)
				tc.HTTP.URL, tc.MQTT.Broker, tc.NATS.URL = "", "", ""
				switch typ {
				case "http":
					tc.HTTP.URL = url
				case "mqtt":
					tc.MQTT.Broker = url
				case "nats":
					tc.NATS.URL = url
				}
				_, stop := startManager(t, st, tc)
				waitFor(t, 30*time.Second, "the rest of the outbox", func() bool { return st.OutboxStats("up").Backlog == 0 })
				stop()
			}
			waitFor(t, 30*time.Second, "every stored record upstream", func() bool {
				got = received()
				seen := map[string]bool{}
				for _, r := range got {
					seen[r.ID] = true
				}
				return len(seen) >= len(want)
			})
			dups := checkDelivery(t, want, got)
			if typ == "nats" && dups != 0 {
				t.Errorf("%d duplicates in the JetStream stream", dups)
			}
			t.Logf("%s: %d records over three runs, %d duplicate arrivals", typ, len(want), dups)
		})
	}
}

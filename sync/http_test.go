package sync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// producer commits records continuously (sustained load of function
// results) until stopped, and returns everything it committed.
type producer struct {
	stop chan struct{}
	done chan struct{}
	mu   gosync.Mutex
	sent []sent
	err  error
}

func startProducer(t testing.TB, st *store.Store, perTick int, targets ...string) *producer {
	p := &producer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		i := 0
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			c := &store.Commit{}
			for j := 0; j < perTick; j++ {
				c.Records = append(c.Records, store.Record{Stream: fmt.Sprintf("s%d", i%3), Function: "f", Device: "d1",
					EventID: fmt.Sprintf("e%d", i), Data: []byte(fmt.Sprintf(`{"n":%d}`, i)), Targets: targets})
				i++
			}
			res, err := st.Commit(context.Background(), c)
			if err != nil {
				p.mu.Lock()
				p.err = err
				p.mu.Unlock()
				return
			}
			p.mu.Lock()
			for _, r := range res.Records {
				p.sent = append(p.sent, sent{ID: r.ID, Seq: r.Seq, Stream: r.Stream})
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(p.finish)
	return p
}

func (p *producer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sent)
}

func (p *producer) finish() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func (p *producer) result(t testing.TB) []sent {
	p.finish()
	if p.err != nil {
		t.Fatalf("producer: %v", p.err)
	}
	return p.sent
}

func TestHTTPDelivers(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	want := commitRecords(t, st, 1000, 3, "cloud")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL + "/ingest"
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "all records upstream", func() bool { return up.col.distinct() == len(want) })
	if dups := checkDelivery(t, want, up.col.snapshot()); dups != 0 {
		t.Errorf("%d duplicates without any failure", dups)
	}
	// The worker acknowledges, then counts, then sets the state: wait for
	// all three.
	waitFor(t, 5*time.Second, "outbox acknowledged and counted", func() bool {
		s := statusOf(m, "cloud")
		return st.OutboxStats("cloud").Backlog == 0 && s.Delivered == int64(len(want)) && s.State == StateConnected
	})
	if s := statusOf(m, "cloud"); s.Backlog != 0 || s.DeliveredB == 0 {
		t.Errorf("status %+v", s)
	}
	if v := up.keyErr.Load(); v != nil {
		t.Error(v)
	}
	// Records data arrives as the JSON the function returned.
	if r := up.col.snapshot()[0]; !strings.HasPrefix(string(r.Data), `{"n":0,`) {
		t.Errorf("data %s", r.Data)
	}
}

// TestHTTPOutage: under sustained load the upstream fails with 503, then
// drops connections mid-batch, then answers slowly, then recovers; every
// record arrives, in order per stream, and a retried batch keeps its
// Idempotency-Key.
func TestHTTPOutage(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	m, _ := startManager(t, st, tc)
	p := startProducer(t, st, 10, "cloud")
	waitFor(t, 10*time.Second, "first deliveries", func() bool { return up.col.distinct() > 200 })
	for _, mode := range []string{"503", "drop", "slow"} {
		up.slow.Store(int64(20 * time.Millisecond))
		up.setMode(mode)
		before := p.count()
		waitFor(t, 10*time.Second, "load during "+mode, func() bool { return p.count() > before+500 })
		if mode != "slow" {
			waitFor(t, 5*time.Second, "disconnected state", func() bool { return statusOf(m, "cloud").State == StateDisconnected })
			if s := statusOf(m, "cloud"); s.LastError == "" || s.LastErrorAt.IsZero() || s.Backlog == 0 {
				t.Errorf("status during %s: %+v", mode, s)
			}
		}
		up.setMode("ok")
		n := p.count()
		waitFor(t, 20*time.Second, "catch up after "+mode, func() bool { return up.col.distinct() >= n })
	}
	want := p.result(t)
	waitFor(t, 20*time.Second, "all records", func() bool { return up.col.distinct() == len(want) })
	dups := checkDelivery(t, want, up.col.snapshot())
	if v := up.keyErr.Load(); v != nil {
		t.Error(v)
	}
	t.Logf("%d records, %d duplicate arrivals, %d requests", len(want), dups, up.requests.Load())
	waitFor(t, 5*time.Second, "connected", func() bool { return statusOf(m, "cloud").State == StateConnected })
}

// TestHTTPRefusedRecordsDeadLettered: a 4xx for a batch is split until the
// refused records are found; they go to the dead letters with the response
// body, the rest is delivered.
func TestHTTPRefusedRecordsDeadLettered(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	bad := map[string]bool{}
	up.reject = func(r upRecord) bool { return bad[r.ID] }
	want := commitRecords(t, st, 300, 2, "cloud")
	bad[want[17].ID], bad[want[250].ID] = true, true
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "delivery", func() bool { return up.col.distinct() == len(want)-2 })
	waitFor(t, 5*time.Second, "outbox empty", func() bool { return st.OutboxStats("cloud").Backlog == 0 })
	dl, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"cloud", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 2 || dl[0].Key != want[17].ID || dl[1].Key != want[250].ID || !strings.Contains(dl[0].Error, "http 400: refused record "+want[17].ID) ||
		!strings.Contains(string(dl[0].Event), `"id":"`+want[17].ID+`"`) {
		t.Fatalf("dead letters %+v", dl)
	}
	for _, r := range up.col.snapshot() {
		if bad[r.ID] {
			t.Errorf("refused record %s counted as delivered", r.ID)
		}
	}
	waitFor(t, 5*time.Second, "status: 2 dead-lettered, the rest delivered", func() bool {
		s := statusOf(m, "cloud")
		return s.DeadLettered == 2 && s.Delivered == int64(len(want)-2)
	})
}

func TestHTTPRetryAfter(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	up.setMode("429")
	commitRecords(t, st, 10, 1, "cloud")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	startManager(t, st, tc)
	waitFor(t, 5*time.Second, "first request", func() bool { return up.requests.Load() >= 1 })
	first := time.Unix(0, up.lastReq.Load())
	waitFor(t, 5*time.Second, "second request", func() bool { return up.requests.Load() >= 2 })
	if gap := time.Unix(0, up.lastReq.Load()).Sub(first); gap < 900*time.Millisecond {
		t.Fatalf("retried after %s despite Retry-After: 1", gap)
	}
	up.setMode("ok")
	waitFor(t, 5*time.Second, "delivery", func() bool { return up.col.distinct() == 10 })
}

func TestRetryAfterParse(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"": 0, "3": 3 * time.Second, "-1": 0, "abc": 0, "999999999999": time.Hour,
		now.Add(90 * time.Second).Format(httpTimeFormat): 90 * time.Second,
		now.Add(-time.Minute).Format(httpTimeFormat):     0,
	} {
		if got := retryAfter(in, now); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

const httpTimeFormat = "Mon, 02 Jan 2006 15:04:05 GMT"

// TestPriorityStreams: with a backlog of telemetry waiting, records of a
// priority stream are delivered before it.
func TestPriorityStreams(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	up.setMode("503")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.MaxRecords = 50
	tc.PriorityStreams = []string{"alerts"}
	m, _ := startManager(t, st, tc)
	commitRecords(t, st, 2000, 2, m.Route("s0", []string{"cloud"})...)
	if got := m.Route("alerts", []string{"other", "cloud"}); got[0] != "other" || got[1] != PriorityOutbox("cloud") {
		t.Fatalf("route %v", got)
	}
	res, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`{"alert":1}`), Targets: m.Route("alerts", []string{"cloud"})}}})
	if err != nil {
		t.Fatal(err)
	}
	alertID := res.Records[0].ID
	if s := statusOf(m, "cloud"); s.Backlog != 2001 {
		t.Fatalf("backlog %d", s.Backlog)
	}
	up.setMode("ok")
	waitFor(t, 10*time.Second, "all", func() bool { return up.col.distinct() == 2001 })
	got := up.col.snapshot()
	pos := -1
	for i, r := range got {
		if r.ID == alertID {
			pos = i
			break
		}
	}
	// The telemetry batch that failed is retried first (it keeps its
	// idempotency key); the alert must come right after it.
	if pos < 0 || pos > tc.MaxRecords {
		t.Fatalf("alert delivered at position %d of %d", pos, len(got))
	}
}

// pausedByBudget starts an http target "cloud" with a daily budget of
// 5,000 bytes and the priority stream "alerts", commits 500 records and
// returns once the budget has paused it.
func pausedByBudget(t *testing.T) (*store.Store, *httpUpstream, *Manager) {
	t.Helper()
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.MaxRecords = 10
	tc.DailyBudget = 5000
	tc.PriorityStreams = []string{"alerts"}
	m, _ := startManager(t, st, tc)
	commitRecords(t, st, 500, 1, "cloud")
	waitFor(t, 5*time.Second, "paused", func() bool { return statusOf(m, "cloud").State == StatePaused })
	return st, up, m
}

// TestDailyBudget: once the day's bytes are spent the target pauses; the
// priority stream still flows.
func TestDailyBudget(t *testing.T) {
	st, up, m := pausedByBudget(t)
	s := statusOf(m, "cloud")
	if s.BudgetUsed > 5000 || s.BudgetUsed == 0 || s.Backlog == 0 || !s.Connected {
		t.Fatalf("status %+v", s)
	}
	n := up.col.distinct()
	if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`1`), Targets: m.Route("alerts", []string{"cloud"})}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "alert despite the budget", func() bool { return up.col.distinct() == n+1 })
	if s := statusOf(m, "cloud"); s.State != StatePaused {
		t.Fatalf("state %s after a priority delivery, want still paused", s.State)
	}
}

// TestPausedStateSurvivesRetryAndReconnect: while the daily budget has
// paused the normal outbox, a priority delivery that failed once and then
// succeeded, or an idle reconnect, leaves the state "paused": the normal
// outbox stays paused until the next UTC day. (Both set "connected".)
func TestPausedStateSurvivesRetryAndReconnect(t *testing.T) {
	t.Run("priority retry", func(t *testing.T) {
		st, up, m := pausedByBudget(t)
		up.setMode("503")
		n := up.col.distinct()
		if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`1`), Targets: m.Route("alerts", []string{"cloud"})}}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the alert refused once", func() bool { return statusOf(m, "cloud").State == StateDisconnected })
		up.setMode("ok")
		waitFor(t, 5*time.Second, "the alert delivered", func() bool { return up.col.distinct() == n+1 })
		// The worker counts, then sets the state.
		waitFor(t, 5*time.Second, "state after the retry", func() bool { return statusOf(m, "cloud").State != StateDisconnected })
		if s := statusOf(m, "cloud"); s.State != StatePaused || up.col.distinct() != n+1 {
			t.Fatalf("state %q, %d records upstream (want %q, %d): the normal outbox is still paused for the day (backlog %d, budget used %d of %d)",
				s.State, up.col.distinct(), StatePaused, n+1, s.Backlog, s.BudgetUsed, 5000)
		}
	})
	t.Run("idle reconnect", func(t *testing.T) {
		mq := mqtttest.StartMosquitto(t)
		st := openStore(t, "", store.DurabilityNone)
		tc := fastTarget("broker", "mqtt")
		tc.MQTT.Broker = mq.URL()
		tc.MaxRecords = 10
		tc.DailyBudget = 5000
		m, _ := startManager(t, st, tc)
		commitRecords(t, st, 500, 1, "broker")
		waitFor(t, 10*time.Second, "paused", func() bool { return statusOf(m, "broker").State == StatePaused })
		mq.Restart()
		waitFor(t, 10*time.Second, "the connection lost", func() bool { return statusOf(m, "broker").LastError != "" })
		waitFor(t, 10*time.Second, "reconnected", func() bool {
			s := statusOf(m, "broker")
			return s.Connected && s.State != StateDisconnected
		})
		if s := statusOf(m, "broker"); s.State != StatePaused {
			t.Fatalf("state %q after an idle reconnect (last error %q), want %q: the normal outbox is still paused for the day", s.State, s.LastError, StatePaused)
		}
	})
}

// TestBandwidthLimit: the upload rate stays near the cap.
func TestBandwidthLimit(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	want := commitRecords(t, st, 400, 1, "cloud")
	total := st.OutboxStats("cloud").Bytes
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.MaxRecords = 20
	// The limiter's burst is one second of bandwidth (half the backlog):
	// the other half takes about one more second.
	tc.BandwidthLimit = total / 2
	tc.MaxBytes = int(total / 10)
	start := time.Now()
	startManager(t, st, tc)
	waitFor(t, 10*time.Second, "all", func() bool { return up.col.distinct() == len(want) })
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Fatalf("%d bytes at %d bytes/s took only %s", total, tc.BandwidthLimit, el)
	}
}

// TestPriorityOvertakesBandwidthWait: with bandwidth_limit, a normal
// batch waits for the limiter's tokens before anything of it is sent
// (max_bytes / bandwidth_limit: 6.4 s here, 17 minutes with 1 MiB batches
// on a 1 KiB/s link). An alert committed meanwhile goes first, not after
// the whole wait.
func TestPriorityOvertakesBandwidthWait(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.MaxRecords = 10000
	tc.MaxBytes = 64 << 10
	tc.BandwidthLimit = 10 << 10
	tc.PriorityStreams = []string{"alerts"}
	commitRecords(t, st, 3000, 1, "cloud") // about 400 KiB
	m, _ := startManager(t, st, tc)
	// The first batch goes with the burst; the second waits for tokens.
	waitFor(t, 10*time.Second, "first batch", func() bool { return up.col.distinct() > 0 })
	lim := m.byName["cloud"].limiter
	waitFor(t, 10*time.Second, "the second batch waiting for its bandwidth", func() bool { return lim.Tokens() < -float64(tc.BandwidthLimit) })
	normal := up.col.distinct()
	res, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`{"fire":true}`), Targets: m.Route("alerts", []string{"cloud"})}}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Records[0].ID
	start := time.Now()
	waitFor(t, 3*time.Second, "the alert, before the normal batch's wait is over", func() bool {
		for _, r := range up.col.snapshot() {
			if r.ID == id {
				return true
			}
		}
		return false
	})
	t.Logf("alert delivered %s after its commit", time.Since(start).Round(time.Millisecond))
	if got := up.col.distinct(); got != normal+1 {
		t.Fatalf("%d records upstream, want the %d normal ones and the alert", got, normal)
	}
	// The normal batch goes after it, when its bandwidth allows.
	waitFor(t, 15*time.Second, "the next normal batch", func() bool { return up.col.distinct() > normal+1 })
}

// TestQuotaDropsVisible: a target that is down long enough for its outbox
// quota to fill shows the store's drops in its status.
func TestQuotaDropsVisible(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(context.Background(), store.Options{Dir: dir, GatewayID: "gw", Durability: store.DurabilityNone, Logger: quietLogger(),
		Quotas: map[string]store.Quota{"outbox": {MaxBytes: 20 << 10}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	up := newHTTPUpstream(t)
	up.setMode("503")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	m, _ := startManager(t, st, tc)
	commitRecords(t, st, 1000, 1, "cloud")
	if _, err := st.RunRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := statusOf(m, "cloud")
	if s.Dropped == 0 || s.BacklogBytes > 20<<10 {
		t.Fatalf("status %+v", s)
	}
	// An outbox nobody drains is listed too.
	commitRecords(t, st, 5, 1, "nowhere")
	if u := statusOf(m, "nowhere"); u.State != StateUnconfigured || u.Backlog != 5 {
		t.Fatalf("unconfigured outbox status %+v", u)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	h := fastTarget("a", "http")
	h.HTTP.URL = "http://127.0.0.1:1/"
	for name, tc := range map[string]struct {
		targets []TargetConfig
		want    error
	}{
		"duplicate":    {[]TargetConfig{h, h}, ErrDuplicateTarget},
		"unknown type": {[]TargetConfig{{Name: "x", Type: "kafka"}}, ErrUnknownType},
		"bad url":      {[]TargetConfig{{Name: "x", Type: "http", HTTP: HTTPConfig{URL: "ftp://x"}}}, ErrInvalidConfig},
		"bad name":     {[]TargetConfig{{Name: "a!priority", Type: "http"}}, ErrInvalidConfig},
		"mqtt topic":   {[]TargetConfig{{Name: "x", Type: "mqtt", MQTT: MQTTConfig{Broker: "tcp://127.0.0.1:1", Topic: "a/#"}}}, ErrInvalidConfig},
		"nats url":     {[]TargetConfig{{Name: "x", Type: "nats"}}, ErrInvalidConfig},
		"tls key":      {[]TargetConfig{{Name: "x", Type: "http", HTTP: HTTPConfig{URL: "https://x", TLS: TLSConfig{Cert: "c.pem"}}}}, ErrInvalidConfig},
	} {
		if _, err := New(Options{Store: st, Targets: tc.targets}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if err := Register(Module{ID: ModulePrefix + "http", New: newHTTPTarget}); !errors.Is(err, ErrDuplicateTarget) {
		t.Errorf("duplicate module: %v", err)
	}
	if err := Register(Module{ID: "http", New: newHTTPTarget}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("module outside the namespace: %v", err)
	}
	if got := Modules(); strings.Join(got, ",") != "sync.target.http,sync.target.mqtt,sync.target.nats" {
		t.Errorf("modules %v", got)
	}
}

// TestHTTPTimeoutRetriesSameKey: an upstream slower than ack_timeout
// processes batches the gateway gave up on; the retries carry the same
// Idempotency-Key and the same records (the test upstream fails the test
// if a key comes back with other records), so the upstream can drop them.
func TestHTTPTimeoutRetriesSameKey(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	up.slow.Store(int64(300 * time.Millisecond))
	up.setMode("slow")
	want := commitRecords(t, st, 600, 3, "cloud")
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	tc.AckTimeout = 100 * time.Millisecond
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "timeouts", func() bool { return up.requests.Load() >= 3 })
	if s := statusOf(m, "cloud"); s.Delivered != 0 || !strings.Contains(s.LastError, "Timeout") && !strings.Contains(s.LastError, "deadline") {
		t.Errorf("status while timing out: %+v", s)
	}
	up.setMode("ok")
	waitFor(t, 10*time.Second, "all", func() bool { return st.OutboxStats("cloud").Backlog == 0 })
	dups := checkDelivery(t, want, up.col.snapshot())
	if v := up.keyErr.Load(); v != nil {
		t.Error(v)
	}
	t.Logf("%d duplicate arrivals from batches the gateway timed out on", dups)
}

// TestHTTPErrorsHideURLSecrets: the errors of a failed request (which
// become the target's last error, shown by /v1/sync to read tokens) do
// not carry a token from the URL's query string or a password.
func TestHTTPErrorsHideURLSecrets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a refused connection, at once
	raw := "http://user:hunter2@" + addr + "/ingest?token=s3cret&x=1#frag"
	_, err = http.Get(raw)
	if err == nil {
		t.Fatal("no error from a closed port")
	}
	msg := redactURLError(err).Error()
	if strings.Contains(msg, "s3cret") || strings.Contains(msg, "hunter2") || !strings.Contains(msg, addr+"/ingest?redacted") {
		t.Fatalf("error %q", msg)
	}
	for in, want := range map[string]string{
		"https://h/p":            "https://h/p",
		"https://h/p?k=v":        "https://h/p?redacted",
		"https://u:pw@h/p?k=v#f": "https://u:xxxxx@h/p?redacted",
		"://bad":                 "(unparsable URL)",
	} {
		if got := safeURL(in); got != want {
			t.Errorf("safeURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTargetErrorsHideBrokerPasswords: a connection failure of an MQTT or
// NATS target whose URL carries a password (paho takes user:pass@ from
// the URL) does not put it in the status (/v1/sync, any read token) nor
// the log.
func TestTargetErrorsHideBrokerPasswords(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused at once
	st := openStore(t, "", 0)
	mq := fastTarget("broker", "mqtt")
	mq.MQTT.Broker = "tcp://sync:hunter2@" + addr
	js := fastTarget("js", "nats")
	js.NATS.URL = "nats://sync:hunter2@" + addr
	m, _ := startManager(t, st, mq, js)
	for _, name := range []string{"broker", "js"} {
		waitFor(t, 10*time.Second, name+"'s error", func() bool { return statusOf(m, name).LastError != "" })
		if e := statusOf(m, name).LastError; strings.Contains(e, "hunter2") {
			t.Errorf("%s: LastError shows the password: %q", name, e)
		}
	}
}

// TestPriorityOutboxDrainedAfterConfigChange: records routed to a
// target's priority outbox while it had priority_streams are still sent
// (and counted in its backlog until then) after the configuration dropped
// priority_streams; before, nothing drained them and no status showed them.
func TestPriorityOutboxDrainedAfterConfigChange(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	up := newHTTPUpstream(t)
	for i := 0; i < 3; i++ {
		if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`1`), Targets: []string{PriorityOutbox("cloud")}}}}); err != nil {
			t.Fatal(err)
		}
	}
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL // no PriorityStreams any more
	startManager(t, st, tc)
	waitFor(t, 10*time.Second, "the 3 priority records upstream", func() bool { return up.col.distinct() == 3 })
	waitFor(t, 10*time.Second, "an empty priority outbox", func() bool { return st.OutboxStats(PriorityOutbox("cloud")).Backlog == 0 })
}

// countingTarget delivers everything, counting Prepare calls (the
// read-ahead of a full batch) and the priority records delivered.
type countingTarget struct {
	prepares, alerts atomic.Int64
}

func (c *countingTarget) Deliver(_ context.Context, b []store.OutboxEntry) (Result, error) {
	for i := range b {
		if b[i].Record.Stream == "alerts" {
			c.alerts.Add(1)
		}
	}
	return Result{Done: len(b)}, nil
}
func (c *countingTarget) Close() error                { return nil }
func (c *countingTarget) Prepare([]store.OutboxEntry) { c.prepares.Add(1) }

// TestPausedTargetStopsReading: once the daily budget is spent, the normal
// outbox is not read (nor its next batch prepared) again until the day
// ends, while priority records still go at once. Before, a paused target
// read and encoded its next batch every second for the rest of the day.
func TestPausedTargetStopsReading(t *testing.T) {
	ct := &countingTarget{}
	if err := Register(Module{ID: ModulePrefix + "test-counting", New: func(TargetConfig, Env) (Target, error) { return ct, nil }}); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, "", store.DurabilityNone)
	commitRecords(t, st, 400, 1, "cloud")
	tc := fastTarget("cloud", "test-counting")
	tc.MaxRecords = 10
	tc.DailyBudget = 2000
	tc.PriorityStreams = []string{"alerts"}
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "paused", func() bool { return statusOf(m, "cloud").State == StatePaused })
	p0 := ct.prepares.Load()
	for i := range 3 {
		if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "alerts", Data: []byte(`1`), Targets: []string{PriorityOutbox("cloud")}}}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the priority record", func() bool { return ct.alerts.Load() == int64(i+1) })
	}
	if n := ct.prepares.Load() - p0; n > 1 { // at most the read-ahead already under way
		t.Fatalf("%d normal batches prepared while paused", n)
	}
	if s := statusOf(m, "cloud"); s.State != StatePaused {
		t.Fatalf("state %s after priority deliveries, want paused", s.State)
	}
}

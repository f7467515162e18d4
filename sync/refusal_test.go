package sync

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// commitOne commits one record of stream s0 with data, routed to targets,
// and returns it as sent.
func commitOne(t testing.TB, st *store.Store, data []byte, targets ...string) sent {
	t.Helper()
	res, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "s0", Function: "f", Device: "d1",
		EventID: "big", EventTS: time.Now().UnixMilli(), Data: data, Targets: targets}}})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Records[0]
	return sent{ID: r.ID, Seq: r.Seq, Stream: r.Stream}
}

// readBatch returns the NDJSON lines of a batch request.
func readBatch(r *http.Request) ([][]byte, error) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, err
		}
		body = zr
	}
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		return nil, err
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte{'\n'}), []byte{'\n'}), nil
}

// TestDeadLetterTooLargeCut: the upstream refuses (422) records whose line
// is over 1 MiB. Such a record's whole line cannot be a dead letter (the
// store's value limit is 1 MiB, and its data alone may be that): it is
// dead-lettered with its data cut to a head, and the outbox moves on
// instead of re-posting the same batch forever.
func TestDeadLetterTooLargeCut(t *testing.T) {
	const limit = 1 << 20
	st := openStore(t, "", store.DurabilityNone)
	col := &collector{}
	var requests atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		lines, err := readBatch(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var recs []upRecord
		for _, l := range lines {
			if len(l) > limit {
				http.Error(w, fmt.Sprintf("record of %d bytes too large", len(l)), http.StatusUnprocessableEntity)
				return
			}
			var rec upRecord
			if err := json.Unmarshal(l, &rec); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			recs = append(recs, rec)
		}
		col.add(recs...)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(up.Close)

	// Not JSON, all control characters: the line escapes it 6 times over.
	ctl := bytes.Repeat([]byte{1}, limit)
	// JSON of exactly the store's limit: the line adds the metadata.
	str := append(append([]byte{'"'}, bytes.Repeat([]byte{'x'}, limit-2)...), '"')
	want := commitRecords(t, st, 5, 1, "cloud")
	bad1 := commitOne(t, st, ctl, "cloud")
	want = append(want, commitRecords(t, st, 5, 1, "cloud")...)
	bad2 := commitOne(t, st, str, "cloud")
	want = append(want, commitRecords(t, st, 5, 1, "cloud")...)

	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	m, _ := startManager(t, st, tc)
	waitFor(t, 20*time.Second, "both refused records dead-lettered and the rest delivered", func() bool {
		s := statusOf(m, "cloud")
		return s.DeadLettered == 2 && s.Delivered == int64(len(want)) && s.Backlog == 0
	})
	if dups := checkDelivery(t, want, col.snapshot()); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"cloud", 0, 10)
	if err != nil || len(dls) != 2 {
		t.Fatalf("dead letters %d %v", len(dls), err)
	}
	for i, b := range []struct {
		s    sent
		head string // the data's first bytes as the event shows them
	}{{bad1, "\x01\x01\x01"}, {bad2, `"xxx`}} {
		dl := dls[i]
		if dl.Key != b.s.ID || !strings.Contains(dl.Error, "http 422: record of") ||
			!strings.Contains(dl.Error, fmt.Sprintf("cut to the first %d of %d bytes", deadLetterHead, limit)) ||
			!strings.Contains(dl.Error, "stays in the store's records") {
			t.Errorf("dead letter %d: key %s error %q", i, dl.Key, dl.Error)
		}
		var ev struct {
			upRecord
			Data      string `json:"data"`
			Truncated bool   `json:"data_truncated"`
			Size      int    `json:"data_size"`
		}
		if len(dl.Event) > limit || json.Unmarshal(dl.Event, &ev) != nil {
			t.Fatalf("dead letter %d: event of %d bytes: %.200s", i, len(dl.Event), dl.Event)
		}
		if ev.ID != b.s.ID || ev.Seq != b.s.Seq || !ev.Truncated || ev.Size != limit || len(ev.Data) != deadLetterHead || !strings.HasPrefix(ev.Data, b.head) {
			t.Errorf("dead letter %d: event id %s seq %d truncated %v size %d data %d bytes %q...", i, ev.ID, ev.Seq, ev.Truncated, ev.Size, len(ev.Data), ev.Data[:min(8, len(ev.Data))])
		}
	}
	t.Logf("%d requests", requests.Load())
}

// fullDeadLetters is a store whose dead-letter commits fail with
// ErrStoreFull (an error that clears) while full is set.
type fullDeadLetters struct {
	*store.Store
	full  atomic.Bool
	tries atomic.Int64
}

func (s *fullDeadLetters) Commit(ctx context.Context, c *store.Commit) (store.CommitResult, error) {
	if c.DeadLetter != nil && s.full.Load() {
		s.tries.Add(1)
		return store.CommitResult{}, fmt.Errorf("test: %w", store.ErrStoreFull)
	}
	return s.Store.Commit(ctx, c)
}

// TestDeadLetterStoreFullKept: a refused record whose dead letter cannot
// be stored for now (disk space) stays in the outbox, nothing cut, and is
// dead-lettered whole once the store takes it.
func TestDeadLetterStoreFullKept(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	fs := &fullDeadLetters{Store: st}
	fs.full.Store(true)
	up := newHTTPUpstream(t)
	want := commitRecords(t, st, 20, 1, "cloud")
	bad := want[10].ID
	up.reject = func(r upRecord) bool { return r.ID == bad }
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = up.URL
	m, _ := startManager(t, fs, tc)
	waitFor(t, 10*time.Second, "dead letter attempts", func() bool { return fs.tries.Load() >= 3 })
	if s := statusOf(m, "cloud"); s.Backlog < 10 || s.DeadLettered != 0 || s.State != StateDisconnected || !strings.Contains(s.LastError, "disk space") {
		t.Fatalf("status while the store is full: %+v", s)
	}
	fs.full.Store(false)
	waitFor(t, 10*time.Second, "dead-lettered", func() bool { s := statusOf(m, "cloud"); return s.DeadLettered == 1 && s.Backlog == 0 })
	dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"cloud", 0, 10)
	if err != nil || len(dls) != 1 || dls[0].Key != bad || strings.Contains(string(dls[0].Event), "data_truncated") || strings.Contains(dls[0].Error, "cut") {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
}

// statusUpstream answers every batch with a fixed HTTP status while one
// is set, recording each request's record count and Idempotency-Key, and
// accepts batches otherwise.
type statusUpstream struct {
	*httptest.Server
	col        collector
	status     atomic.Int64
	retryAfter atomic.Value // string
	mu         gosync.Mutex
	reqs       []string // "<records> <key>" of each refused request
	times      []time.Time
}

func newStatusUpstream(t testing.TB, status int) *statusUpstream {
	u := &statusUpstream{}
	u.status.Store(int64(status))
	u.retryAfter.Store("")
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := int(u.status.Load()); s != 0 {
			_, _ = io.Copy(io.Discard, r.Body)
			u.mu.Lock()
			u.reqs = append(u.reqs, r.Header.Get("X-Moongate-Records")+" "+r.Header.Get("Idempotency-Key"))
			u.times = append(u.times, time.Now())
			u.mu.Unlock()
			if ra := u.retryAfter.Load().(string); ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			http.Error(w, "endpoint says "+strconv.Itoa(s), s)
			return
		}
		lines, err := readBatch(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, l := range lines {
			var rec upRecord
			if err := json.Unmarshal(l, &rec); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			u.col.add(rec)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *statusUpstream) refused() ([]string, []time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.reqs...), append([]time.Time(nil), u.times...)
}

// TestHTTPEndpointFailuresRetried: 401, 403, 404, 405, 407, 410, 421,
// 426, 431 and 451 say the endpoint or its credentials are wrong, not the
// records (410, 426, 431 and 451 dead-lettered the whole backlog): the same
// whole batch is retried with backoff (no bisection, same key), the state
// shows the error, nothing goes to the dead letters; once the endpoint
// works again everything is delivered.
func TestHTTPEndpointFailuresRetried(t *testing.T) {
	for _, code := range []int{401, 403, 404, 405, 407, 410, 421, 426, 431, 451} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			st := openStore(t, "", store.DurabilityNone)
			up := newStatusUpstream(t, code)
			want := commitRecords(t, st, 120, 2, "cloud")
			tc := fastTarget("cloud", "http")
			tc.HTTP.URL = up.URL
			m, _ := startManager(t, st, tc)
			waitFor(t, 10*time.Second, "three attempts", func() bool { r, _ := up.refused(); return len(r) >= 3 })
			reqs, _ := up.refused()
			for _, r := range reqs {
				if r != reqs[0] || !strings.HasPrefix(r, "120 ") {
					t.Fatalf("%d requests, records and key of the first: %q: want the whole batch of 120, same key, every time", len(reqs), reqs[:min(4, len(reqs))])
				}
			}
			s := statusOf(m, "cloud")
			if s.State != StateDisconnected || !strings.Contains(s.LastError, fmt.Sprintf("http %d: endpoint says", code)) || s.Backlog != 120 || s.DeadLettered != 0 || s.Delivered != 0 {
				t.Fatalf("status while the endpoint fails: %+v", s)
			}
			up.status.Store(0)
			waitFor(t, 10*time.Second, "delivered", func() bool { return statusOf(m, "cloud").Backlog == 0 })
			if dups := checkDelivery(t, want, up.col.snapshot()); dups != 0 {
				t.Errorf("%d duplicates", dups)
			}
			if dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"cloud", 0, 10); err != nil || len(dls) != 0 {
				t.Fatalf("dead letters %+v %v", dls, err)
			}
			// The worker acknowledges, then counts, then sets the state.
			waitFor(t, 5*time.Second, "status: 120 delivered, connected", func() bool {
				s := statusOf(m, "cloud")
				return s.Delivered == 120 && s.State == StateConnected
			})
			if s := statusOf(m, "cloud"); s.DeadLettered != 0 {
				t.Fatalf("status after: %+v", s)
			}
		})
	}
	t.Run("Retry-After", func(t *testing.T) {
		st := openStore(t, "", store.DurabilityNone)
		up := newStatusUpstream(t, http.StatusUnauthorized)
		up.retryAfter.Store("1")
		commitRecords(t, st, 10, 1, "cloud")
		tc := fastTarget("cloud", "http")
		tc.HTTP.URL = up.URL
		startManager(t, st, tc)
		waitFor(t, 5*time.Second, "second attempt", func() bool { r, _ := up.refused(); return len(r) >= 2 })
		_, times := up.refused()
		if gap := times[1].Sub(times[0]); gap < 900*time.Millisecond {
			t.Fatalf("retried after %s despite Retry-After: 1", gap)
		}
		up.status.Store(0)
		waitFor(t, 5*time.Second, "delivery", func() bool { return up.col.distinct() == 10 })
	})
}

// TestNATSRefusesOversized: a record over the server's max_payload (the
// client refuses to publish it) and one over the stream's max_msg_size
// (JetStream answers error 10054) are dead-lettered; the records around
// them are delivered, once each.
func TestNATSRefusesOversized(t *testing.T) {
	ns := startNATS(t, "max_payload: 65536")
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "GATEWAYS", Subjects: []string{"gateways.>"}, Duplicates: 2 * time.Minute,
		MaxMsgSize: 8 << 10}); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, "", store.DurabilityNone)
	pad := func(n int) []byte { return []byte(`{"pad":"` + strings.Repeat("x", n) + `"}`) }
	want := commitRecords(t, st, 5, 1, "js")
	overStream := commitOne(t, st, pad(20<<10), "js")
	want = append(want, commitRecords(t, st, 5, 1, "js")...)
	overServer := commitOne(t, st, pad(100<<10), "js")
	want = append(want, commitRecords(t, st, 5, 1, "js")...)

	tc := fastTarget("js", "nats")
	tc.NATS.URL = ns.url()
	m, _ := startManager(t, st, tc)
	waitFor(t, 20*time.Second, "the oversized records dead-lettered, the rest delivered", func() bool {
		s := statusOf(m, "js")
		return s.DeadLettered == 2 && s.Delivered == int64(len(want)) && s.Backlog == 0
	})
	got := streamRecords(t, ns.url())
	if dups := checkDelivery(t, want, got); dups != 0 || len(got) != len(want) {
		t.Errorf("stream holds %d messages for %d records (%d duplicates)", len(got), len(want), dups)
	}
	dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"js", 0, 10)
	if err != nil || len(dls) != 2 {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
	if dls[0].Key != overStream.ID || !strings.Contains(dls[0].Error, "10054") {
		t.Errorf("dead letter of the record over max_msg_size: %s %q", dls[0].Key, dls[0].Error)
	}
	if dls[1].Key != overServer.ID || !strings.Contains(dls[1].Error, "max_payload of 65536") {
		t.Errorf("dead letter of the record over max_payload: %s %q", dls[1].Key, dls[1].Error)
	}
	if !strings.Contains(string(dls[1].Event), `"id":"`+overServer.ID+`"`) {
		t.Errorf("dead letter event %.100s", dls[1].Event)
	}
}

// TestMQTTMaxPayload: mosquitto drops the connection of a client that
// publishes a packet over its max_packet_size; the target, whose
// max_payload is set below it, refuses the larger record before it is
// sent (dead letter), and delivers the records around it.
func TestMQTTMaxPayload(t *testing.T) {
	mq := mqtttest.StartMosquitto(t, mqtttest.WithConfig("max_packet_size 16384"))
	col := mqttSubscriber(t, mq.URL())
	st := openStore(t, "", store.DurabilityNone)
	want := commitRecords(t, st, 5, 1, "broker")
	big := commitOne(t, st, []byte(`{"pad":"`+strings.Repeat("x", 20<<10)+`"}`), "broker")
	want = append(want, commitRecords(t, st, 5, 1, "broker")...)
	tc := fastTarget("broker", "mqtt")
	tc.MQTT.Broker = mq.URL()
	tc.MQTT.MaxPayload = 16000
	m, _ := startManager(t, st, tc)
	waitFor(t, 20*time.Second, "the large record dead-lettered, the rest delivered", func() bool {
		s := statusOf(m, "broker")
		return s.DeadLettered == 1 && s.Delivered == int64(len(want)) && s.Backlog == 0
	})
	waitFor(t, 10*time.Second, "subscriber has all", func() bool { return col.distinct() == len(want) })
	checkDelivery(t, want, col.snapshot())
	dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"broker", 0, 10)
	if err != nil || len(dls) != 1 || dls[0].Key != big.ID || !strings.Contains(dls[0].Error, "exceeds the target's max_payload of 16000 bytes") {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
}

// TestMQTTMaxPayloadLimits: max_payload defaults to what an MQTT packet
// can carry whatever the topic, is refused out of range, and a record
// over the packet limit is refused even with a larger max_payload.
func TestMQTTMaxPayloadLimits(t *testing.T) {
	tc := fastTarget("m", "mqtt")
	tc.MQTT.Broker = "tcp://127.0.0.1:1"
	tgt, err := newMQTTTarget(tc, Env{GatewayID: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	mt := tgt.(*mqttTarget)
	if mt.cfg.MQTT.MaxPayload != MaxMQTTPayload || MaxMQTTPayload != 268435455-65539 {
		t.Fatalf("default max payload %d", mt.cfg.MQTT.MaxPayload)
	}
	if r := mt.oversize(MaxMQTTPayload, "gateways/gw/s"); r != "" {
		t.Errorf("largest payload refused: %s", r)
	}
	if r := mt.oversize(MaxMQTTPayload+1, "t"); !strings.Contains(r, "max_payload") {
		t.Errorf("payload over the default: %q", r)
	}
	if r := mt.oversize(100, strings.Repeat("t", 65536)); !strings.Contains(r, "max_topic of 65535") {
		t.Errorf("topic over the packet limit (the default max_topic): %q", r)
	}
	if mt.cfg.MQTT.MaxTopic != 65535 {
		t.Errorf("default max topic %d", mt.cfg.MQTT.MaxTopic)
	}
	for _, bad := range []int{-1, MaxMQTTPayload + 1} {
		tc.MQTT.MaxPayload = bad
		if _, err := newMQTTTarget(tc, Env{GatewayID: "gw"}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("max payload %d: %v", bad, err)
		}
	}
}

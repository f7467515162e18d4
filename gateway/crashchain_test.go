package gateway

// Crash tests (SIGKILL of a real child daemon under load) for paths the
// older crash tests did not cover: chains through stream and state
// triggers (with backpressure), state writes over the API, local
// publishes to persistent subscribers of the embedded broker, committed
// HTTP / API invocations, dead-letter replay. Written by a review; the
// timer and cron ones (20-60 s each) were left out of the suite.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/store"
)

const killAdminToken = "mgt_kill_admin_0123456789abcdef"

// killConfig writes a child config with fixed MQTT and API ports (the same
// across restarts) and an admin token; extra is appended.
func killConfig(t *testing.T, dataDir, fnDir, extra string) (cfgPath, mqttURL, apiBase string) {
	t.Helper()
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mp, ap := l1.Addr().(*net.TCPAddr).Port, l2.Addr().(*net.TCPAddr).Port
	l1.Close()
	l2.Close()
	cfg := fmt.Sprintf(`gateway_id: test
data_dir: %q
functions_dir: %q
log: {level: warn}
mqtt:
  embedded: {listen: "127.0.0.1:%d"}
api:
  listen: "127.0.0.1:%d"
  tokens:
    - {name: admin, scope: admin, hash: %q}
store: {durability: always}
%s`, dataDir, fnDir, mp, ap, apiserver.HashToken(killAdminToken), extra)
	cfgPath = filepath.Join(t.TempDir(), "moongate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, fmt.Sprintf("tcp://127.0.0.1:%d", mp), fmt.Sprintf("http://127.0.0.1:%d", ap)
}

var killHTTP = &http.Client{Timeout: 20 * time.Second}

// killPost POSTs JSON body to base+path with the admin token.
func killPost(base, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+killAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := killHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func killOpen(t *testing.T, dataDir string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), store.Options{Dir: dataDir})
	if err != nil {
		t.Fatalf("reopen store: %v", err)
	}
	return st
}

// ---------------------------------------------------------------------
// 1. Chains: mqtt -> up (record to stream readings, state last/DEVICE)
//    -> agg (stream trigger) and watch (state trigger), embedded broker,
//    SIGKILL under load.

const killUpLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  state.set("last/" .. e.device, r.n)
  mqtt.publish("ack/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1, retain = true})
  return {n = r.n}
end
`

func TestKillChainStreamStateSIGKILL(t *testing.T) {
	const devices, perDevice = 6, 200
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "up", killUpLua, referenceManifest+"stream: readings\n")
	writeFunction(t, fnDir, "agg", `function handle(e) local r = json.decode(e.payload) return {n = r.n, record_id = e.record_id} end`,
		"triggers:\n  - stream: readings\n")
	writeFunction(t, fnDir, "watch", `function handle(e) local c = json.decode(e.payload) return {n = c.new, key = c.key, old = c.old} end`,
		"triggers:\n  - state: {function: up, prefix: \"last/\"}\n")
	cfgPath, url := childConfig(t, dataDir, fnDir)
	c := startChild(t, cfgPath)
	acks := observeAcks(t, url)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, url, acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	kills := []int64{rand.Int64N(total / 4), total/4 + rand.Int64N(total/4), total/2 + rand.Int64N(total/4)}
	for _, at := range kills {
		waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d acknowledgements", acks.n.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 60*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, ""))
	checkExactlyOnceInOrder(t, dataDir, "up", devices, perDevice)
	checkExactlyOnceInOrder(t, dataDir, "agg", devices, perDevice)

	st := killOpen(t, dataDir)
	defer st.Close()
	ids := map[string]bool{}
	for _, r := range allRecords(t, st, "up") {
		ids[r.ID] = true
	}
	for _, r := range allRecords(t, st, "agg") {
		var v struct {
			RecordID string `json:"record_id"`
		}
		_ = json.Unmarshal(r.Data, &v)
		if !ids[v.RecordID] {
			t.Fatalf("agg record for unknown or repeated up record %q", v.RecordID)
		}
		delete(ids, v.RecordID)
	}
	if len(ids) != 0 {
		t.Fatalf("%d up records triggered no agg run", len(ids))
	}
	// watch: one record per state change, per key in order, old = pkillous.
	recs := allRecords(t, st, "watch")
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	count := map[string]map[int]int{}
	last := map[string]int{}
	bad := 0
	for _, r := range recs {
		var v struct {
			N   int
			Key string
			Old *int
		}
		if err := json.Unmarshal(r.Data, &v); err != nil {
			t.Fatalf("watch record %s: %v", r.Data, err)
		}
		if count[v.Key] == nil {
			count[v.Key] = map[int]int{}
			last[v.Key] = -1
		}
		count[v.Key][v.N]++
		wantOld := last[v.Key]
		if (v.Old == nil && wantOld != -1) || (v.Old != nil && *v.Old != wantOld) || v.N <= last[v.Key] {
			if bad < 5 {
				t.Logf("watch %s: n=%d old=%v after n=%d", v.Key, v.N, v.Old, last[v.Key])
			}
			bad++
		}
		last[v.Key] = v.N
	}
	missing, doubled := 0, 0
	for d := range devices {
		for n := range perDevice {
			switch k := count[fmt.Sprintf("last/dev%02d", d)][n]; {
			case k == 0:
				missing++
			case k > 1:
				doubled++
			}
		}
	}
	if missing != 0 || doubled != 0 || bad != 0 || len(recs) != int(total) {
		t.Fatalf("watch records: %d (want %d), missing %d, doubled %d, out of order/wrong old %d", len(recs), total, missing, doubled, bad)
	}
}

// ---------------------------------------------------------------------
// 2. "@every 1s" timer across SIGKILLs.

// ---------------------------------------------------------------------
// 3. Local QoS 1 publishes to a persistent-session subscriber of the
//    embedded broker across SIGKILLs.

const killPubLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  mqtt.publish("ack/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1, retain = true})
  mqtt.publish("out/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1})
  return {n = r.n}
end
`

func TestKillLocalPublishPersistentSubscriberSIGKILL(t *testing.T) {
	killLocalPublish(t, 6, 200, false)
}

// The subscriber is away (its persistent session queues) while the daemon
// is killed; it comes back at the end.
func TestKillLocalPublishOfflineSubscriberSIGKILL(t *testing.T) {
	killLocalPublish(t, 4, 100, true)
}

func killLocalPublish(t *testing.T, devices, perDevice int, offline bool) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "pub", killPubLua, referenceManifest)
	cfgPath, url := childConfig(t, dataDir, fnDir)
	c := startChild(t, cfgPath)

	var mu sync.Mutex
	got := map[string]int{}
	var distinct atomic.Int64
	handler := func(_ paho.Client, m paho.Message) {
		mu.Lock()
		if got[m.Topic()] == 0 {
			distinct.Add(1)
		}
		got[m.Topic()]++
		mu.Unlock()
	}
	subbed := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(url).SetClientID("kill-sink").SetCleanSession(false).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).SetOrderMatters(false).SetKeepAlive(5 * time.Second).
		SetDefaultPublishHandler(handler).
		SetOnConnectHandler(func(cl paho.Client) {
			tok := cl.Subscribe("out/#", 1, handler)
			go func() {
				tok.Wait()
				select {
				case subbed <- tok.Error():
				default:
				}
			}()
		})
	sink := paho.NewClient(o)
	if tok := sink.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("sink connect: %v", tok.Error())
	}
	t.Cleanup(func() { sink.Disconnect(50) })
	if err := <-subbed; err != nil {
		t.Fatal(err)
	}

	if offline {
		sink.Disconnect(50)
	}
	acks := observeAcks(t, url)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, url, acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	kills := []int64{rand.Int64N(total / 4), total/4 + rand.Int64N(total/4), total/2 + rand.Int64N(total/4)}
	for _, at := range kills {
		waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d acknowledgements, sink has %d", acks.n.Load(), distinct.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 60*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	if offline {
		// One more SIGKILL with everything queued for the sink.
		c.kill()
		c = startChild(t, cfgPath)
		sink = paho.NewClient(o)
		if tok := sink.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("sink reconnect: %v", tok.Error())
		}
	}
	complete := poll(30*time.Second, func() bool { return distinct.Load() >= total })
	c.term(t)
	sink.Disconnect(50)
	st := killOpen(t, dataDir)
	defer st.Close()
	recs := allRecords(t, st, "pub")
	pending, err := st.PendingPublishes(context.Background(), 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var lost []string
	dups := 0
	for _, r := range recs {
		var v struct{ N int }
		_ = json.Unmarshal(r.Data, &v)
		topic := fmt.Sprintf("out/%s/%d", r.Device, v.N)
		if got[topic] == 0 {
			lost = append(lost, topic)
		}
		if got[topic] > 1 {
			dups++
		}
	}
	t.Logf("%d records, sink got %d distinct (%d duplicated), publish outbox holds %d, complete=%v", len(recs), len(got), dups, len(pending), complete)
	if len(lost) > 0 {
		t.Fatalf("%d committed QoS 1 publishes never reached the persistent-session subscriber (outbox still holds %d): %v", len(lost), len(pending), lost[:min(len(lost), 10)])
	}
}

// ---------------------------------------------------------------------
// 4. Committed HTTP-triggered calls (/fn/NAME) and committed API invokes
//    across SIGKILLs: every call answered 200 is committed exactly once;
//    no call is committed twice.

const killHTTPLua = `
function handle(e, ctx)
  local src = e.body
  if e.trigger ~= "http" then src = e.payload end
  local b = json.decode(src)
  emit("calls", {id = b.id, via = e.trigger})
  state.incr("calls")
  if e.trigger == "http" then return {status = 200, body = {id = b.id}} end
  return nil
end
`

func TestKillCommittedCallsSIGKILL(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "hf", killHTTPLua, "triggers:\n  - http: {methods: [POST]}\n")
	writeFunction(t, fnDir, "down", `function handle(e) return {id = json.decode(e.payload).id} end`, "triggers:\n  - stream: calls\n")
	cfgPath, _, api := killConfig(t, dataDir, fnDir, "")
	c := startChild(t, cfgPath)

	type outcome struct {
		status int
		err    error
		body   string
	}
	var mu sync.Mutex
	outcomes := map[string]outcome{}
	var ok200 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				var st int
				var body []byte
				var err error
				if w%2 == 0 {
					st, body, err = killPost(api, "/fn/hf/x", map[string]string{"id": id})
					if err == nil && st == 200 && !strings.Contains(string(body), id) {
						err = fmt.Errorf("200 with body %s", body)
					}
				} else {
					payload, _ := json.Marshal(map[string]string{"id": id})
					st, body, err = killPost(api, "/v1/functions/hf:invoke", map[string]any{"event": map[string]any{"payload_text": string(payload)}, "dry_run": false})
					if err == nil && st == 200 && !strings.Contains(string(body), `"committed":true`) {
						st = -st // 200 but not committed
					}
				}
				mu.Lock()
				outcomes[id] = outcome{st, err, string(body)}
				mu.Unlock()
				if err == nil && st == 200 {
					ok200.Add(1)
				}
				if err != nil || st != 200 {
					time.Sleep(20 * time.Millisecond) // daemon down: do not spin
				}
			}
		}()
	}
	c = killDuringCalls(t, c, cfgPath, &ok200, 200, "calls")
	close(stop)
	wg.Wait()
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, ""))

	st := killOpen(t, dataDir)
	defer st.Close()
	count := func(fn string) map[string]int {
		m := map[string]int{}
		for _, r := range allRecords(t, st, fn) {
			var v struct{ ID string }
			_ = json.Unmarshal(r.Data, &v)
			m[v.ID]++
		}
		return m
	}
	hf, down := count("hf"), count("down")
	calls, _, _ := st.GetState(context.Background(), "hf", "calls")
	lostOK, doubled, other, unknownCommitted := 0, 0, 0, 0
	for id, o := range outcomes {
		switch {
		case o.err == nil && o.status == 200:
			if hf[id] != 1 || down[id] != 1 {
				if lostOK < 10 {
					t.Logf("call %s answered 200: %d hf records, %d down records", id, hf[id], down[id])
				}
				lostOK++
			}
		default:
			if o.err == nil {
				other++
				if hf[id] > 0 && o.status != -200 {
					t.Logf("call %s answered %d (%s) but committed %d times", id, o.status, o.body, hf[id])
				}
			} else if hf[id] > 0 {
				unknownCommitted++
			}
		}
		if hf[id] > 1 || down[id] > 1 {
			doubled++
		}
	}
	for id := range hf {
		if _, ok := outcomes[id]; !ok {
			t.Errorf("record for unknown call %s", id)
		}
	}
	t.Logf("%d calls, %d answered 200, %d other answers, %d transport errors committed anyway, calls state %s, hf records %d", len(outcomes), ok200.Load(), other, unknownCommitted, calls, len(hf))
	if lostOK != 0 || doubled != 0 {
		t.Fatalf("%d calls answered 200 not committed exactly once (with the chained run), %d calls committed twice", lostOK, doubled)
	}
	// The counter agrees with the records.
	n := 0
	for _, k := range hf {
		n += k
	}
	if string(calls) != fmt.Sprint(n) {
		t.Fatalf("state calls = %s, records %d", calls, n)
	}
}

// ---------------------------------------------------------------------
// 5. Dead-letter replay racing SIGKILL.

func TestKillReplayDeadLettersSIGKILL(t *testing.T) {
	killReplay(t, `function handle(e) return {n = json.decode(e.payload).n} end`, func(int) bool { return true })
}

// The replayed events of every third dead letter fail again: they become
// new dead letters (once), the others records.
func TestKillReplayFailingAgainSIGKILL(t *testing.T) {
	killReplay(t, `function handle(e) local n = json.decode(e.payload).n if n % 3 == 0 then error("still failing") end return {n = n} end`,
		func(n int) bool { return n%3 != 0 })
}

func killReplay(t *testing.T, v2 string, succeeds func(int) bool) {
	const n = 400
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "f", `function handle(e) error("v1 fails") end`, referenceManifest)
	cfgPath, url, api := killConfig(t, dataDir, fnDir,
		"pipeline:\n  retry: {max_attempts: 1, initial_backoff: 10ms, max_backoff: 20ms}\n")
	c := startChild(t, cfgPath)
	dev := connect(t, url, "kill-dev", true)
	for i := range n {
		publish(t, dev, fmt.Sprintf("devices/d%d/telemetry", i%8), 1, fmt.Appendf(nil, `{"n":%d}`, i))
	}
	dev.Disconnect(50)
	waitFor(t, 60*time.Second, "every event dead-lettered", func() bool { return killCountDeadLetters(api) >= n })
	c.term(t)
	seqs := killDeadLetters(t, dataDir, n)

	// v2 works.
	writeFunction(t, fnDir, "f", v2, referenceManifest)
	c = startChild(t, cfgPath)
	var replayed atomic.Int64
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(seqs)) {
					return
				}
				st, body, err := killPost(api, "/v1/deadletters:replay", map[string]any{"seq": seqs[i]})
				if err != nil || st != 200 {
					return // killed
				}
				if !strings.Contains(string(body), `"replayed":"1"`) && !strings.Contains(string(body), `"replayed":1`) {
					t.Errorf("replay %d: %s", seqs[i], body)
				}
				replayed.Add(1)
			}
		}()
	}
	at := int64(50 + rand.IntN(250))
	waitFor(t, 60*time.Second, fmt.Sprintf("%d replays", at), func() bool { return replayed.Load() >= at })
	c.kill()
	wg.Wait()
	t.Logf("SIGKILL after %d single replays answered", replayed.Load())

	// Right after the kill: each event is exactly one of dead letter,
	// pending inbox entry, record.
	killCheckReplayState(t, dataDir, n, nil)

	// Replay the rest (all of f), killing once more in the middle.
	c = startChild(t, cfgPath)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st, body, err := killPost(api, "/v1/deadletters:replay", map[string]any{"function": "f"})
		t.Logf("replay all: %d %s %v", st, body, err)
	}()
	time.Sleep(time.Duration(rand.IntN(60)) * time.Millisecond)
	c.kill()
	<-done
	killCheckReplayState(t, dataDir, n, nil)
	c = startChild(t, cfgPath)
	st, body, err := killPost(api, "/v1/deadletters:replay", map[string]any{"function": "f"})
	if err != nil || st != 200 {
		t.Fatalf("replay all: %d %s %v", st, body, err)
	}
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, "pipeline:\n  retry: {max_attempts: 1, initial_backoff: 10ms, max_backoff: 20ms}\n"))
	killCheckReplayState(t, dataDir, n, succeeds)
}

// killCountDeadLetters counts f's dead letters over the API (-1 on error).
func killCountDeadLetters(api string) int {
	req, _ := http.NewRequest("GET", api+"/v1/deadletters?function=f&limit=10000", nil)
	req.Header.Set("Authorization", "Bearer "+killAdminToken)
	resp, err := killHTTP.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var v struct {
		DeadLetters []json.RawMessage `json:"dead_letters"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return -1
	}
	return len(v.DeadLetters)
}

// killDeadLetters waits for nothing (the daemon is stopped): it returns the
// seqs of f's dead letters and checks there are want.
func killDeadLetters(t *testing.T, dataDir string, want int) []uint64 {
	t.Helper()
	st := killOpen(t, dataDir)
	defer st.Close()
	var seqs []uint64
	var after uint64
	for {
		dls, err := st.ListDeadLetters(context.Background(), "f", after, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 0 {
			break
		}
		for _, d := range dls {
			seqs = append(seqs, d.Seq)
		}
		after = dls[len(dls)-1].Seq
	}
	if len(seqs) != want {
		t.Fatalf("%d dead letters of f, want %d", len(seqs), want)
	}
	return seqs
}

func killCheckReplayState(t *testing.T, dataDir string, n int, succeeds func(int) bool) {
	final := succeeds != nil
	t.Helper()
	st := killOpen(t, dataDir)
	defer st.Close()
	ctx := context.Background()
	nOf := func(event []byte) int {
		ev, err := DecodeEvent(event)
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ N int }
		_ = json.Unmarshal(ev.Payload, &v)
		return v.N
	}
	where := make([][]string, n)
	var after uint64
	for {
		dls, err := st.ListDeadLetters(ctx, "f", after, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 0 {
			break
		}
		for _, d := range dls {
			k := nOf(d.Event)
			where[k] = append(where[k], fmt.Sprintf("dead letter %d", d.Seq))
		}
		after = dls[len(dls)-1].Seq
	}
	after = 0
	for {
		es, err := st.InboxPending(ctx, after, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if e.Function == "f" {
				k := nOf(e.Event)
				where[k] = append(where[k], fmt.Sprintf("inbox %d", e.Seq))
			}
		}
		after = es[len(es)-1].Seq
	}
	for _, r := range allRecords(t, st, "f") {
		var v struct{ N int }
		_ = json.Unmarshal(r.Data, &v)
		where[v.N] = append(where[v.N], fmt.Sprintf("record %d", r.Seq))
	}
	bad := 0
	for k, w := range where {
		ok := len(w) == 1 && (!final || strings.HasPrefix(w[0], "record") == succeeds(k))
		if !ok {
			if bad < 10 {
				t.Errorf("event n=%d is in %v", k, w)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d events not in exactly one place (final=%v)", bad, final)
	}
}

// ---------------------------------------------------------------------
// 1b. A state key every device increments (deltas applied at commit) with
//     a state trigger on it, and two emits per event to a stream with a
//     listener, across SIGKILLs: the watcher sees 0->1->2->...->N once
//     each, in order; every emitted record runs its listener once.

const killIncrLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  state.incr("total")
  emit("pieces", {n = r.n, part = 1})
  emit("pieces", {n = r.n, part = 2})
  mqtt.publish("ack/" .. e.device .. "/" .. r.n, tostring(r.n), {qos = 1, retain = true})
  return nil
end
`

func TestKillChainIncrSIGKILL(t *testing.T) {
	const devices, perDevice = 8, 150
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "up2", killIncrLua, referenceManifest)
	writeFunction(t, fnDir, "parts", `function handle(e) local r = json.decode(e.payload) return {n = r.n, part = r.part, dev = e.device} end`,
		"triggers:\n  - stream: pieces\n")
	writeFunction(t, fnDir, "tot", `function handle(e) local c = json.decode(e.payload) return {old = c.old, new = c.new} end`,
		"triggers:\n  - state: {function: up2, prefix: \"total\"}\n")
	cfgPath, url := childConfig(t, dataDir, fnDir)
	c := startChild(t, cfgPath)
	acks := observeAcks(t, url)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, url, acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	const kills = 4
	for k := range kills {
		at := int64(k)*total/5 + rand.Int64N(total/5)
		waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d acknowledgements", acks.n.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 60*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, ""))

	st := killOpen(t, dataDir)
	defer st.Close()
	v, ok, err := st.GetState(context.Background(), "up2", "total")
	if err != nil || !ok || string(v) != fmt.Sprint(total) {
		t.Errorf("up2 total = %s (%v %v), want %d", v, ok, err, total)
	}
	recs := allRecords(t, st, "tot")
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	seen := map[int]int{}
	prev, disorder := 0, 0
	for _, r := range recs {
		var x struct{ Old, New *int }
		_ = json.Unmarshal(r.Data, &x)
		old := 0
		if x.Old != nil {
			old = *x.Old
		}
		if x.New == nil || *x.New != old+1 {
			t.Errorf("tot record %s", r.Data)
			continue
		}
		seen[*x.New]++
		if *x.New != prev+1 {
			if disorder < 10 {
				t.Logf("tot: new=%d after new=%d (record seq %d, event %s ts %d, processed %d)", *x.New, prev, r.Seq, r.EventID, r.EventTS, r.ProcessedTS)
			}
			disorder++
		}
		prev = *x.New
	}
	missing, doubled := 0, 0
	for i := 1; i <= int(total); i++ {
		switch seen[i] {
		case 0:
			missing++
		case 1:
		default:
			doubled++
		}
	}
	if missing+doubled+disorder != 0 || len(recs) != int(total) {
		t.Errorf("state-triggered records: %d (want %d), missing %d, doubled %d, out of order %d", len(recs), total, missing, doubled, disorder)
	}
	parts := map[string]int{}
	for _, r := range allRecords(t, st, "parts") {
		var x struct {
			N, Part int
			Dev     string
		}
		_ = json.Unmarshal(r.Data, &x)
		parts[fmt.Sprintf("%s/%d/%d", x.Dev, x.N, x.Part)]++
	}
	pm, pd := 0, 0
	for d := range devices {
		for n := range perDevice {
			for p := 1; p <= 2; p++ {
				switch parts[fmt.Sprintf("dev%02d/%d/%d", d, n, p)] {
				case 0:
					pm++
				case 1:
				default:
					pd++
				}
			}
		}
	}
	if pm+pd != 0 {
		t.Errorf("stream-triggered records: %d distinct, missing %d, doubled %d", len(parts), pm, pd)
	}
}

// TestKillChainBackpressureSIGKILL: the chain of TestChainSIGKILL with a
// slow listener and a tiny in-memory backlog, so that chained entries wait
// for room (the chain feeder reads them back from the inbox) when the
// daemon is killed: after restarts every up record ran agg exactly once,
// in order per device.
func TestKillChainBackpressureSIGKILL(t *testing.T) {
	const devices, perDevice = 6, 120
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "up", killUpLua, referenceManifest+"stream: readings\n")
	writeFunction(t, fnDir, "agg", `function handle(e)
  local t0 = time.now_ms()
  while time.now_ms() - t0 < 3 do end
  local r = json.decode(e.payload)
  return {n = r.n, record_id = e.record_id}
end`, "triggers:\n  - stream: readings\nlimits: {max_steps: 10000000000}\n")
	port := freePort(t)
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	cfgPath := filepath.Join(t.TempDir(), "moongate.yaml")
	cfg := testConfig(dataDir, fnDir, fmt.Sprintf("mqtt:\n  embedded: {listen: \"127.0.0.1:%d\"}\npipeline: {inbox_limit: 8, workers: 2}\n", port))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startChild(t, cfgPath)
	acks := observeAcks(t, url)
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); publishSequences(t, url, acks, devices, perDevice) }()
	total := int64(devices * perDevice)
	for k := range 4 {
		at := int64(k)*total/5 + rand.Int64N(total/5)
		waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledgements", at), func() bool { return acks.n.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d acknowledgements", acks.n.Load())
		c = startChild(t, cfgPath)
	}
	<-pubDone
	waitFor(t, 60*time.Second, "all acknowledgements", func() bool { return acks.n.Load() >= total })
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, ""))
	checkExactlyOnceInOrder(t, dataDir, "up", devices, perDevice)
	checkExactlyOnceInOrder(t, dataDir, "agg", devices, perDevice)
}

// TestKillStateWriteSIGKILL: operator state writes over the API (PUT) to
// keys another function watches, across SIGKILLs: every write answered
// 200 ran the watcher exactly once; none ran it twice.
func TestKillStateWriteSIGKILL(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "cfg", `function handle(e) end`, "triggers:\n  - http: {methods: [POST]}\n")
	writeFunction(t, fnDir, "w", `function handle(e) local c = json.decode(e.payload) return {key = c.key, new = c.new} end`,
		"triggers:\n  - state: {function: cfg, prefix: \"k/\"}\n")
	cfgPath, _, api := killConfig(t, dataDir, fnDir, "")
	c := startChild(t, cfgPath)
	var mu sync.Mutex
	answered := map[string]int{} // "key=value" -> status (0: transport error)
	var ok200 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("k%%2Fw%d", w)
				req, _ := http.NewRequest("PUT", api+"/v1/functions/cfg/state/"+key, strings.NewReader(fmt.Sprint(i)))
				req.Header.Set("Authorization", "Bearer "+killAdminToken)
				resp, err := killHTTP.Do(req)
				st := 0
				if err == nil {
					st = resp.StatusCode
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				answered[fmt.Sprintf("k/w%d=%d", w, i)] = st
				mu.Unlock()
				if st == 200 {
					ok200.Add(1)
				} else {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	c = killDuringCalls(t, c, cfgPath, &ok200, 150, "writes")
	close(stop)
	wg.Wait()
	c.term(t)
	drainInProcess(t, testConfig(dataDir, fnDir, ""))
	st := killOpen(t, dataDir)
	defer st.Close()
	ran := map[string]int{}
	for _, r := range allRecords(t, st, "w") {
		var x struct {
			Key string
			New int
		}
		_ = json.Unmarshal(r.Data, &x)
		ran[fmt.Sprintf("%s=%d", x.Key, x.New)]++
	}
	lost, doubled, stray := 0, 0, 0
	for k, s := range answered {
		if s == 200 && ran[k] != 1 {
			if lost < 5 {
				t.Logf("write %s answered 200, watcher ran %d times", k, ran[k])
			}
			lost++
		}
	}
	for k, n := range ran {
		if n > 1 {
			doubled++
		}
		if _, ok := answered[k]; !ok {
			stray++
		}
	}
	if lost+doubled+stray != 0 {
		t.Fatalf("%d writes answered 200 not watched exactly once, %d watched twice, %d unknown", lost, doubled, stray)
	}
	t.Logf("%d writes, %d answered 200, %d watcher runs", len(answered), ok200.Load(), len(ran))
}

// killDuringCalls SIGKILLs the child three times, after about every each
// more calls answered 200 (ok200), restarting it each time, and waits for
// each more answered by the last one, which it returns (running).
func killDuringCalls(t *testing.T, c *child, cfgPath string, ok200 *atomic.Int64, each int64, what string) *child {
	t.Helper()
	for k := range 3 {
		at := each*int64(k+1) + rand.Int64N(each)
		waitFor(t, 60*time.Second, fmt.Sprintf("%d %s answered", at, what), func() bool { return ok200.Load() >= at })
		c.kill()
		t.Logf("SIGKILL after %d %s answered 200", ok200.Load(), what)
		c = startChild(t, cfgPath)
	}
	at := ok200.Load() + each
	waitFor(t, 60*time.Second, "more "+what+" answered", func() bool { return ok200.Load() >= at })
	return c
}

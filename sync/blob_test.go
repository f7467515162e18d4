package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// Blob sends: buckets with Sync route each put to targets; the http
// target PUTs the content, mqtt and nats send the metadata record.

func openBlobStore(t testing.TB, dir string, targets ...string) *store.Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := store.Open(context.Background(), store.Options{Dir: dir, GatewayID: "gw", Durability: store.DurabilityNone, Logger: quietLogger(),
		Buckets: map[string]store.Bucket{"photos": {MaxSize: 32 << 20, Sync: targets}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func putBlob(t testing.TB, st *store.Store, name, ctype string, data []byte) store.BlobInfo {
	t.Helper()
	bi, _, err := st.PutBlob(context.Background(), store.BlobPut{Bucket: "photos", Name: name, ContentType: ctype, Body: bytes.NewReader(data)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return bi
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// blobPut is one PUT the blob upstream received in full.
type blobPut struct {
	Path   string
	Header http.Header
	Body   []byte
	Length int64
}

// blobUpstream accepts PUT .../blobs/{bucket}/{name} (and record batches,
// which it counts), with switchable failures. It can be stopped (refusing
// connections) and restarted on the same address.
type blobUpstream struct {
	t        testing.TB
	addr     string
	srv      *httptest.Server
	mode     atomic.Value // ok | 503 | 401 | stall | 417 (refuses Expect: 100-continue)
	refuse   func(path string) bool
	mu       gosync.Mutex
	puts     []blobPut
	events   []string // "put <path>" and "post <n>" in arrival order
	attempts atomic.Int64
	keys     map[string]string // blob id -> Idempotency-Key of its first attempt
	release  chan struct{}     // stall mode: closed to let stalled handlers go
}

func newBlobUpstream(t testing.TB) *blobUpstream {
	u := &blobUpstream{t: t, keys: map[string]string{}, release: make(chan struct{})}
	u.mode.Store("ok")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	u.serveOn(ln)
	t.Cleanup(func() {
		u.mu.Lock()
		select {
		case <-u.release:
		default:
			close(u.release)
		}
		u.mu.Unlock()
		u.stop()
	})
	return u
}

func (u *blobUpstream) url() string { return "http://" + u.addr + "/ingest" }

func (u *blobUpstream) serveOn(ln net.Listener) {
	s := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(u.serve)}}
	s.Start()
	u.mu.Lock()
	u.srv = s
	u.mu.Unlock()
}

// stop closes the server: connections are refused until start.
func (u *blobUpstream) stop() {
	u.mu.Lock()
	s := u.srv
	u.srv = nil
	u.mu.Unlock()
	if s != nil {
		s.CloseClientConnections()
		s.Close()
	}
}

func (u *blobUpstream) start() {
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		u.t.Fatalf("listen again on %s: %v", u.addr, err)
	}
	u.serveOn(ln)
}

func (u *blobUpstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		n := 0
		if b, err := io.ReadAll(r.Body); err == nil {
			n = bytes.Count(b, []byte{'\n'})
		}
		u.mu.Lock()
		u.events = append(u.events, "post")
		u.mu.Unlock()
		_ = n
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/ingest/blobs/") {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
		return
	}
	u.attempts.Add(1)
	u.mu.Lock()
	id := r.Header.Get("X-Moongate-Blob-Id")
	if _, ok := u.keys[id]; !ok {
		u.keys[id] = r.Header.Get("Idempotency-Key")
	} else if u.keys[id] != r.Header.Get("Idempotency-Key") {
		u.t.Errorf("retry of %s (%s) with another Idempotency-Key", id, r.URL.Path)
	}
	u.mu.Unlock()
	switch u.mode.Load().(string) {
	case "417":
		if r.Header.Get("Expect") != "" {
			http.Error(w, "no expectations", http.StatusExpectationFailed)
			return
		}
	case "503":
		w.Header().Set("Retry-After", "0")
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	case "401":
		http.Error(w, "token expired", http.StatusUnauthorized)
		return
	case "stall":
		// Read a little, then stop reading until released.
		_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
		<-u.release
		return
	}
	if u.refuse != nil && u.refuse(r.URL.Path) {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "refused "+r.URL.Path, http.StatusUnprocessableEntity)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil || int64(len(body)) != r.ContentLength {
		// An incomplete body is never stored (the client gave up).
		return
	}
	u.mu.Lock()
	u.puts = append(u.puts, blobPut{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, Length: r.ContentLength})
	u.events = append(u.events, "put "+r.URL.Path)
	u.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
}

func (u *blobUpstream) received() []blobPut {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]blobPut(nil), u.puts...)
}

func (u *blobUpstream) eventLog() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.events...)
}

func blobTarget(u *blobUpstream) TargetConfig {
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = u.url()
	tc.AckTimeout = 2 * time.Second
	return tc
}

func objectGone(t testing.TB, st *store.Store, sha string) bool {
	t.Helper()
	f, err := st.OpenBlobObject(sha)
	if errors.Is(err, store.ErrNotFound) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return false
}

// TestHTTPBlobSend: an upload in a bucket routed to an http target is PUT
// to {url}/blobs/{bucket}/{name} with its bytes and headers, before a
// record committed after it; the send is acknowledged and counted.
func TestHTTPBlobSend(t *testing.T) {
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	data := randomBytes(700<<10, 1)
	sum := sha256.Sum256(data)
	bi := putBlob(t, st, "cam 1/a+b.jpg", "image/jpeg", data)
	if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "s", Data: []byte(`{}`), Targets: []string{"cloud"}}}}); err != nil {
		t.Fatal(err)
	}
	es, err := st.OutboxRead(context.Background(), "cloud", 0, 10, 0)
	if err != nil || len(es) != 2 || es[0].Blob == nil {
		t.Fatalf("outbox %+v %v", es, err)
	}
	m, _ := startManager(t, st, blobTarget(up))
	waitFor(t, 10*time.Second, "the blob and the record", func() bool { return len(up.eventLog()) == 2 })
	ev := up.eventLog()
	if ev[0] != "put /ingest/blobs/photos/cam 1/a+b.jpg" || ev[1] != "post" {
		t.Fatalf("arrivals %q, want the blob then the record", ev)
	}
	p := up.received()[0]
	if !bytes.Equal(p.Body, data) || p.Length != int64(len(data)) {
		t.Fatalf("body of %d bytes (length %d), want %d", len(p.Body), p.Length, len(data))
	}
	idKey := sha256.Sum256([]byte(es[0].Blob.ID + "\n"))
	for h, want := range map[string]string{
		"Content-Type":       "image/jpeg",
		"Content-Digest":     "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":",
		"X-Moongate-Sha256":  hex.EncodeToString(sum[:]),
		"Idempotency-Key":    hex.EncodeToString(idKey[:]),
		"X-Moongate-Blob-Id": st.IDPrefix() + "blob-1",
		"X-Moongate-Gateway": "gw",
	} {
		if got := p.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	waitFor(t, 5*time.Second, "acknowledged", func() bool {
		s := statusOf(m, "cloud")
		return s.BlobsDelivered == 1 && s.Delivered == 1 && s.BlobBacklog == 0 && s.Backlog == 0
	})
	// Acknowledged: the blob's own reference is the only one left.
	if n, _ := st.BlobRefs(context.Background(), bi.SHA256); n != 1 {
		t.Fatalf("references after the ack: %d", n)
	}
}

// TestHTTPBlobOutageAndDelete: the upstream refuses connections while two
// blobs wait, one of them deleted and the other replaced; the status shows
// them pending. When it comes back both are delivered with the content
// they had when stored, once; then the objects nobody refers to are gone.
func TestHTTPBlobOutageAndDelete(t *testing.T) {
	ctx := context.Background()
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	up.stop()
	m, _ := startManager(t, st, blobTarget(up))
	a, b := randomBytes(300<<10, 2), randomBytes(200<<10, 3)
	ia := putBlob(t, st, "a.bin", "", a)
	ib := putBlob(t, st, "b.bin", "application/x-b", b)
	if err := st.DeleteBlob(ctx, "photos", "a.bin"); err != nil {
		t.Fatal(err)
	}
	putBlob(t, st, "b.bin", "application/x-b", []byte("b, second version"))
	waitFor(t, 10*time.Second, "the failure in the status", func() bool {
		s := statusOf(m, "cloud")
		return s.State == StateDisconnected && s.LastError != "" && s.BlobBacklog == 3
	})
	s := statusOf(m, "cloud")
	if s.BlobBacklogBytes != int64(len(a)+len(b))+17 || s.Backlog != 0 {
		t.Fatalf("status while down: %+v", s)
	}
	if objectGone(t, st, ia.SHA256) || objectGone(t, st, ib.SHA256) {
		t.Fatal("an object with a pending send was removed")
	}
	up.start()
	waitFor(t, 20*time.Second, "three blobs delivered", func() bool { return statusOf(m, "cloud").BlobsDelivered == 3 })
	got := up.received()
	if len(got) != 3 || got[0].Path != "/ingest/blobs/photos/a.bin" || !bytes.Equal(got[0].Body, a) ||
		!bytes.Equal(got[1].Body, b) || string(got[2].Body) != "b, second version" {
		t.Fatalf("received %d puts", len(got))
	}
	if got[0].Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("default content type %q", got[0].Header.Get("Content-Type"))
	}
	waitFor(t, 5*time.Second, "unreferenced objects removed", func() bool {
		return objectGone(t, st, ia.SHA256) && objectGone(t, st, ib.SHA256)
	})
	// A send is counted as delivered before its acknowledgement is handed
	// to the acker: the backlog empties a moment later.
	waitFor(t, 5*time.Second, "an empty blob backlog", func() bool { return statusOf(m, "cloud").BlobBacklog == 0 })
	if s := statusOf(m, "cloud"); s.BlobsDeadLettered != 0 || s.BlobsDelivered != 3 {
		t.Fatalf("status after: %+v", s)
	}
}

// TestHTTPBlob5xxRetried: 503 answers are retried with the same
// Idempotency-Key until the upstream takes the blob.
func TestHTTPBlob5xxRetried(t *testing.T) {
	blobRetriedUntilAccepted(t, "503", 100<<10, 4, func(s TargetStatus) bool {
		return s.BlobBacklog == 1 && s.BlobsDelivered == 0 && strings.Contains(s.LastError, "503")
	})
}

// TestHTTPBlobAuthFailureRetried: a blob PUT answered 401 (expired
// credentials) is retried with the same key, not dead-lettered.
func TestHTTPBlobAuthFailureRetried(t *testing.T) {
	st := blobRetriedUntilAccepted(t, "401", 10<<10, 6, func(s TargetStatus) bool {
		return s.BlobBacklog == 1 && s.BlobsDelivered == 0 && s.BlobsDeadLettered == 0 && s.State == StateDisconnected &&
			strings.Contains(s.LastError, "http 401")
	})
	if dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"cloud", 0, 10); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
}

// blobRetriedUntilAccepted puts a blob while the upstream answers mode,
// checks the status once three attempts were refused (refused), then lets
// the upstream take it and checks it arrived once, whole.
func blobRetriedUntilAccepted(t *testing.T, mode string, size int, seed uint64, refused func(TargetStatus) bool) *store.Store {
	t.Helper()
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	up.mode.Store(mode)
	m, _ := startManager(t, st, blobTarget(up))
	data := randomBytes(size, seed)
	putBlob(t, st, "r.bin", "", data)
	waitFor(t, 10*time.Second, "three refused attempts", func() bool { return up.attempts.Load() >= 3 })
	if s := statusOf(m, "cloud"); !refused(s) {
		t.Fatalf("status while refused (%s): %+v", mode, s)
	}
	up.mode.Store("ok")
	waitFor(t, 10*time.Second, "delivered", func() bool { return statusOf(m, "cloud").BlobsDelivered == 1 })
	if got := up.received(); len(got) != 1 || !bytes.Equal(got[0].Body, data) {
		t.Fatalf("received %d puts", len(got))
	}
	return st
}

// TestHTTPBlobExpectationFailed: an upstream that answers 417 to
// "Expect: 100-continue" gets the blob without it.
func TestHTTPBlobExpectationFailed(t *testing.T) {
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	up.mode.Store("417")
	m, _ := startManager(t, st, blobTarget(up))
	data := randomBytes(10<<10, 8)
	putBlob(t, st, "e.bin", "", data)
	waitFor(t, 10*time.Second, "delivered", func() bool { return statusOf(m, "cloud").BlobsDelivered == 1 })
	if got := up.received(); len(got) != 1 || !bytes.Equal(got[0].Body, data) || got[0].Header.Get("Expect") != "" {
		t.Fatalf("received %+v", got)
	}
	if s := statusOf(m, "cloud"); s.BlobsDeadLettered != 0 || up.attempts.Load() != 2 {
		t.Fatalf("status %+v after %d attempts", s, up.attempts.Load())
	}
}

// TestHTTPBlobRefused: a 4xx refuses one blob for good: it goes to the dead
// letters (counted, with the metadata record as the event), its reference
// is given back, and the next blob is delivered.
func TestHTTPBlobRefused(t *testing.T) {
	ctx := context.Background()
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	up.refuse = func(p string) bool { return strings.HasSuffix(p, "/bad.bin") }
	bad := putBlob(t, st, "bad.bin", "", []byte("refused upstream"))
	if err := st.DeleteBlob(ctx, "photos", "bad.bin"); err != nil {
		t.Fatal(err)
	}
	putBlob(t, st, "good.bin", "", []byte("accepted"))
	m, _ := startManager(t, st, blobTarget(up))
	waitFor(t, 10*time.Second, "one refused, one delivered", func() bool {
		s := statusOf(m, "cloud")
		return s.BlobsDeadLettered == 1 && s.BlobsDelivered == 1 && s.BlobBacklog == 0
	})
	dls, err := st.ListDeadLetters(ctx, DeadLetterPrefix+"cloud", 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
	if dls[0].Key != st.IDPrefix()+"blob-1" || !strings.Contains(dls[0].Error, "http 422") || !strings.Contains(string(dls[0].Event), `"name":"bad.bin"`) {
		t.Fatalf("dead letter %+v event %s", dls[0], dls[0].Event)
	}
	waitFor(t, 5*time.Second, "the refused blob's object removed", func() bool { return objectGone(t, st, bad.SHA256) })
}

// TestHTTPBlobCorruptObject: an object changed on disk after it was stored
// is never delivered whole: the upload is cut before its last bytes and
// the send dead-lettered.
func TestHTTPBlobCorruptObject(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openBlobStore(t, dir, "cloud")
	up := newBlobUpstream(t)
	data := randomBytes(256<<10, 5)
	bi := putBlob(t, st, "c.bin", "", data)
	obj := filepath.Join(dir, "blobs", "objects", bi.SHA256[:2], bi.SHA256)
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 0xff
	if err := os.WriteFile(obj, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	m, _ := startManager(t, st, blobTarget(up))
	waitFor(t, 10*time.Second, "dead-lettered", func() bool { return statusOf(m, "cloud").BlobsDeadLettered == 1 })
	if got := up.received(); len(got) != 0 {
		t.Fatalf("the upstream stored %d corrupt bodies", len(got))
	}
	dls, _ := st.ListDeadLetters(ctx, DeadLetterPrefix+"cloud", 0, 10)
	if len(dls) != 1 || !strings.Contains(dls[0].Error, "does not match") {
		t.Fatalf("dead letters %+v", dls)
	}
}

// TestHTTPBlobStalled: an upstream that stops reading the body fails the
// upload after the ack timeout (no progress), and the blob is sent again
// once the upstream reads.
func TestHTTPBlobStalled(t *testing.T) {
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	up.mode.Store("stall")
	tc := blobTarget(up)
	tc.AckTimeout = 300 * time.Millisecond
	m, _ := startManager(t, st, tc)
	data := bytes.Repeat(randomBytes(1<<20, 6), 24) // more than the loopback socket buffers hold
	putBlob(t, st, "big.bin", "", data)
	waitFor(t, 10*time.Second, "the stall reported", func() bool {
		return strings.Contains(statusOf(m, "cloud").LastError, "no progress")
	})
	up.mode.Store("ok")
	up.mu.Lock()
	close(up.release)
	up.mu.Unlock()
	waitFor(t, 20*time.Second, "delivered after the stall", func() bool { return statusOf(m, "cloud").BlobsDelivered == 1 })
	got := up.received()
	if len(got) != 1 || !bytes.Equal(got[0].Body, data) {
		t.Fatalf("received %d puts", len(got))
	}
}

// TestHTTPBlobAcceptedWithSlowAnswerBody: the upstream stores a blob and
// answers 201 at once, but the answer's body comes later than ack_timeout.
// The status decides, as for a batch of records: the blob is delivered
// once, and the record behind it goes on. (It was taken for a stall and
// PUT again and again, never acknowledged, holding the outbox.)
func TestHTTPBlobAcceptedWithSlowAnswerBody(t *testing.T) {
	st := openBlobStore(t, "", "cloud")
	var puts, posts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPut {
			puts.Add(1)
		} else {
			posts.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte(`{"stored":true}`))
	}))
	defer srv.Close()
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = srv.URL + "/ingest"
	tc.AckTimeout = 300 * time.Millisecond
	m, _ := startManager(t, st, tc)
	putBlob(t, st, "a.bin", "", randomBytes(4<<10, 1))
	if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: "s", Data: []byte(`{}`), Targets: []string{"cloud"}}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 6*time.Second, "the blob and the record behind it delivered", func() bool {
		s := statusOf(m, "cloud")
		return s.BlobsDelivered == 1 && s.Delivered == 1
	})
	if s := statusOf(m, "cloud"); puts.Load() != 1 || s.BlobBacklog != 0 {
		t.Fatalf("blob answered 201: %d PUTs, blob backlog %d, last error %q", puts.Load(), s.BlobBacklog, s.LastError)
	}
}

// TestHTTPBlobSendDroppedWhileHeld: a blob send waiting for its retry
// (the upstream answers 503) is dropped by the outbox quota, which gives
// its object back. The worker drops it from the batch it holds: it is
// counted as dropped only, neither sent nor dead-lettered nor counted as
// delivered. (The send was retried, found its object gone, was "refused"
// and dead-lettered: counted twice, as dropped and as refused, although
// the upstream refused nothing.)
func TestHTTPBlobSendDroppedWhileHeld(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{Dir: t.TempDir(), GatewayID: "gw", Durability: store.DurabilityNone, Logger: quietLogger(),
		Buckets: map[string]store.Bucket{"photos": {MaxSize: 1 << 20, Sync: []string{"cloud"}}},
		Quotas:  map[string]store.Quota{"outbox": {MaxBytes: 32 << 10, Policy: store.DropOldest}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	up := newBlobUpstream(t)
	up.mode.Store("503")
	m, _ := startManager(t, st, blobTarget(up))
	putBlob(t, st, "a.bin", "", randomBytes(4<<10, 3))
	if err := st.DeleteBlob(ctx, "photos", "a.bin"); err != nil {
		t.Fatal(err) // the send holds the only reference to the object
	}
	waitFor(t, 5*time.Second, "the blob send tried", func() bool { return up.attempts.Load() > 0 })
	const n = 600
	commitRecords(t, st, n, 1, "cloud") // over the 32 KiB outbox quota: the oldest entries go
	if _, err := st.RunRetention(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the blob send dropped", func() bool { return st.OutboxStats("cloud").BlobsDropped == 1 })
	up.mode.Store("ok")
	waitFor(t, 10*time.Second, "backlog drained", func() bool { return st.OutboxStats("cloud").Backlog == 0 })
	// Records delivered while the commits went on may be dropped before
	// their acknowledgement is written: counted in both.
	waitFor(t, 5*time.Second, "records counted", func() bool {
		s := statusOf(m, "cloud")
		return s.Delivered+s.Dropped >= n
	})
	s := statusOf(m, "cloud")
	dls, _ := st.ListDeadLetters(ctx, "", 0, 10)
	var errs []string
	for _, d := range dls {
		errs = append(errs, d.Function+": "+d.Error)
	}
	if s.BlobsDeadLettered != 0 || s.BlobsDelivered != 0 || s.BlobsDropped != 1 || len(dls) != 0 || len(up.received()) != 0 {
		t.Fatalf("blob send dropped by the quota: blobs dropped %d, dead-lettered %d, delivered %d, received upstream %d; dead letters %q",
			s.BlobsDropped, s.BlobsDeadLettered, s.BlobsDelivered, len(up.received()), errs)
	}
	if s.Dropped == 0 || s.DeadLettered != 0 {
		t.Fatalf("%d records: delivered %d, dropped %d, dead-lettered %d", n, s.Delivered, s.Dropped, s.DeadLettered)
	}
}

// TestMQTTBlobMetadata: an mqtt target gets the metadata record of a blob
// send (stream "blobs"), not its content.
func TestMQTTBlobMetadata(t *testing.T) {
	mq := mqtttest.StartMosquitto(t)
	col := mqttSubscriber(t, mq.URL())
	st := openBlobStore(t, "", "broker")
	tc := fastTarget("broker", "mqtt")
	tc.MQTT.Broker = mq.URL()
	m, _ := startManager(t, st, tc)
	bi := putBlob(t, st, "m.jpg", "image/jpeg", randomBytes(50<<10, 7))
	waitFor(t, 10*time.Second, "the metadata record", func() bool { return col.distinct() == 1 })
	r := col.snapshot()[0]
	var meta map[string]any
	if err := json.Unmarshal(r.Data, &meta); err != nil {
		t.Fatal(err)
	}
	if r.ID != st.IDPrefix()+"blob-1" || r.Stream != store.BlobStream || meta["sha256"] != bi.SHA256 || meta["name"] != "m.jpg" ||
		meta["size"] != float64(bi.Size) || meta["content_type"] != "image/jpeg" || meta["bucket"] != "photos" {
		t.Fatalf("record %+v data %s", r, r.Data)
	}
	waitFor(t, 5*time.Second, "acknowledged", func() bool {
		s := statusOf(m, "broker")
		return s.BlobsDelivered == 1 && s.BlobBacklog == 0
	})
}

// TestNATSBlobMetadata: the same for a nats target, once in the stream.
func TestNATSBlobMetadata(t *testing.T) {
	ns := startNATS(t)
	createStream(t, ns.url())
	st := openBlobStore(t, "", "js")
	tc := fastTarget("js", "nats")
	tc.NATS.URL = ns.url()
	m, _ := startManager(t, st, tc)
	bi := putBlob(t, st, "n.jpg", "image/jpeg", []byte("jpeg"))
	waitFor(t, 10*time.Second, "acknowledged", func() bool { return statusOf(m, "js").BlobsDelivered == 1 })
	got := streamRecords(t, ns.url())
	if len(got) != 1 || got[0].ID != st.IDPrefix()+"blob-1" || got[0].Stream != store.BlobStream || !strings.Contains(string(got[0].Data), bi.SHA256) {
		t.Fatalf("stream holds %+v", got)
	}
}

// patternBody yields n deterministic bytes without holding them.
type patternBody struct{ n, off int64 }

func (p *patternBody) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	m := min(int64(len(b)), p.n-p.off)
	for i := range m {
		x := p.off + i
		b[i] = byte(x*7 + x>>10)
	}
	p.off += m
	return int(m), nil
}

// TestHTTPBlobMemoryBounded: a 32 MiB blob is sent from its file in
// chunks: the live heap while it is sent grows by far less than its size.
// bandwidth_limit (64 MiB/s) paces it, which also gives the sampler time.
func TestHTTPBlobMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("memory measurement")
	}
	st := openBlobStore(t, "", "cloud")
	const size = 32 << 20
	h := sha256.New()
	bi, _, err := st.PutBlob(context.Background(), store.BlobPut{Bucket: "photos", Name: "big.bin", Body: io.TeeReader(&patternBody{n: size}, h)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hh := sha256.New()
		n, err := io.Copy(hh, r.Body)
		if err == nil && n == size {
			got.Store(hex.EncodeToString(hh.Sum(nil)))
		}
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(srv.Close)
	base := liveHeap()
	tc := fastTarget("cloud", "http")
	tc.HTTP.URL = srv.URL
	tc.BandwidthLimit = 64 << 20
	start := time.Now()
	m, _ := startManager(t, st, tc)
	var peak uint64
	for statusOf(m, "cloud").BlobsDelivered == 0 {
		if time.Since(start) > 30*time.Second {
			t.Fatal("not delivered in 30s")
		}
		peak = max(peak, liveHeap())
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	if got.Load() != bi.SHA256 || bi.SHA256 != hex.EncodeToString(h.Sum(nil)) {
		t.Fatalf("upstream hash %v, blob %s", got.Load(), bi.SHA256)
	}
	growth := int64(peak) - int64(base)
	t.Logf("32 MiB blob sent in %s (%.0f MiB/s, limit 64); live heap before %d KiB, peak %d KiB (growth %d KiB)",
		took.Round(time.Millisecond), float64(size>>20)/took.Seconds(), base>>10, peak>>10, growth>>10)
	if growth > 8<<20 {
		t.Fatalf("heap grew by %d bytes while sending a %d-byte blob", growth, size)
	}
	if took < 400*time.Millisecond {
		t.Fatalf("sent in %s: bandwidth_limit 64 MiB/s not applied to 32 MiB", took)
	}
}

// TestDailyBudgetWithBlobs: the http target sends one blob per delivery,
// so the budget is checked against that blob, not against every blob
// behind it in the batch: with a 50 KiB budget, six blobs of 8 KiB go out
// before the target pauses for the day (before, it paused after one).
func TestDailyBudgetWithBlobs(t *testing.T) {
	st := openBlobStore(t, "", "cloud")
	up := newBlobUpstream(t)
	for i := 0; i < 10; i++ {
		putBlob(t, st, "b"+string(rune('a'+i)), "application/octet-stream", randomBytes(8<<10, uint64(i+1)))
	}
	tc := blobTarget(up)
	tc.DailyBudget = 50 << 10
	m, _ := startManager(t, st, tc)
	waitFor(t, 10*time.Second, "paused", func() bool { return statusOf(m, "cloud").State == StatePaused })
	s := statusOf(m, "cloud")
	if n := len(up.received()); n != 6 || s.BudgetUsed != 6*8<<10 {
		t.Fatalf("paused after %d blobs with %d of %d budget bytes used, want 6 and %d", n, s.BudgetUsed, tc.DailyBudget, 6*8<<10)
	}
}

// TestBlobContentTypeHeader: a blob send queued with a content type that is
// not a valid header value (stored before the store checked them) goes out
// as application/octet-stream: net/http refused the request, and the target
// retried it for ever with everything behind it waiting.
func TestBlobContentTypeHeader(t *testing.T) {
	for ct, want := range map[string]string{
		"":                           "application/octet-stream",
		"image/jpeg":                 "image/jpeg",
		"text/plain;\tcharset=utf-8": "text/plain;\tcharset=utf-8",
		"text/plain\nX-Injected: 1":  "application/octet-stream",
		"a\x00":                      "application/octet-stream",
	} {
		if got := blobContentType(ct); got != want {
			t.Errorf("blobContentType(%q) = %q, want %q", ct, got, want)
		}
	}
}

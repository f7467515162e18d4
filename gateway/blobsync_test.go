package gateway

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
)

// Blobs routed to sync targets (blobs.buckets.*.sync), through a daemon,
// and the upload read timeout.

// blobSink is an http sync upstream on loopback that stores the blobs PUT
// to it (by path: the sha256 of each complete body, in arrival order) and
// counts record batches. mode "503" refuses everything.
type blobSink struct {
	srv   *httptest.Server
	mode  atomic.Value // ok | 503
	delay atomic.Int64 // ns to wait before reading a PUT's body
	mu    sync.Mutex
	puts  map[string][]string // path -> sha256 of each complete body
	hdrs  map[string]http.Header
	keys  map[string][]string // path -> Idempotency-Key of each complete body
	tries atomic.Int64
}

func newBlobSink(t *testing.T) *blobSink {
	s := &blobSink{puts: map[string][]string{}, hdrs: map[string]http.Header{}, keys: map[string][]string{}}
	s.mode.Store("ok")
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		s.tries.Add(1)
		if s.mode.Load() == "503" {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		if d := s.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil || n != r.ContentLength || r.Method != http.MethodPut {
			return
		}
		s.mu.Lock()
		s.puts[r.URL.Path] = append(s.puts[r.URL.Path], hex.EncodeToString(h.Sum(nil)))
		s.hdrs[r.URL.Path] = r.Header.Clone()
		s.keys[r.URL.Path] = append(s.keys[r.URL.Path], r.Header.Get("Idempotency-Key"))
		s.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *blobSink) got(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.puts[path]...)
}

func (s *blobSink) header(path string) http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hdrs[path]
}

func (s *blobSink) paths() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.puts)
}

// blobSyncConfig is blobConfig with photos and derived routed to the http
// target cloud at url, and extra appended.
func blobSyncConfig(dataDir, fnDir, url, extra string) string {
	return blobConfigHead(dataDir, fnDir) + fmt.Sprintf(`sync:
  targets:
    - {name: cloud, type: http, http: {url: %q}, backoff: {initial: 20ms, max: 200ms}, ack_timeout: 5s}
blobs:
  buckets:
    photos: {max_size: 24MiB, sync: [cloud]}
    derived: {max_size: 1MiB, sync: [cloud]}
%s`, url, extra)
}

// syncStatus reads GET /v1/sync and returns the target cloud.
func syncStatus(t *testing.T, c blobClient) map[string]any {
	t.Helper()
	r, b := c.do("GET", "/v1/sync", blobReadToken, "", nil)
	var st struct {
		Targets []map[string]any `json:"targets"`
	}
	if r.StatusCode != http.StatusOK || json.Unmarshal(b, &st) != nil {
		t.Fatalf("GET /v1/sync: %d %s", r.StatusCode, b)
	}
	for _, tg := range st.Targets {
		if tg["name"] == "cloud" {
			return tg
		}
	}
	t.Fatalf("no target cloud in %s", b)
	return nil
}

// num reads an int64 field of a protojson answer ("12" or absent = 0).
func num(m map[string]any, k string) string {
	if v, ok := m[k]; ok {
		return fmt.Sprint(v)
	}
	return "0"
}

func objectPath(dataDir, sha string) string {
	return filepath.Join(dataDir, "blobs", "objects", sha[:2], sha)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestBlobSyncEndToEnd: an upload over REST, and the blob a function
// writes from it, reach the http upstream as PUTs with their bytes and
// headers; the API shows the sends. A blob deleted over REST while its
// send waits for an upstream that answers 503 is still delivered once the
// upstream is back, then its object file is removed.
func TestBlobSyncEndToEnd(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "digest", digestLua, digestManifest)
	sink := newBlobSink(t)
	p := startInProcess(t, blobSyncConfig(dataDir, fnDir, sink.srv.URL+"/up", ""))
	c := blobClient{t: t, base: "http://" + p.d.HTTPAddr().String()}

	const size = 3 << 20
	h := sha256.New()
	resp, b := c.do("PUT", "/v1/blobs/photos/cam1/snap.bin", blobAdminToken, "image/x-test", io.TeeReader(&patternReader{n: size}, h))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	sum := h.Sum(nil)
	want := hex.EncodeToString(sum)
	waitFor(t, 30*time.Second, "the upload and the derived blob upstream", func() bool {
		return len(sink.got("/up/blobs/photos/cam1/snap.bin")) > 0 && len(sink.got("/up/blobs/derived/cam1/snap.bin.json")) > 0
	})
	if got := sink.got("/up/blobs/photos/cam1/snap.bin"); len(got) != 1 || got[0] != want {
		t.Fatalf("upstream got %v, want [%s]", got, want)
	}
	hd := sink.header("/up/blobs/photos/cam1/snap.bin")
	if hd.Get("Content-Type") != "image/x-test" || hd.Get("X-Moongate-Sha256") != want ||
		hd.Get("Content-Digest") != "sha-256=:"+base64.StdEncoding.EncodeToString(sum)+":" || hd.Get("Idempotency-Key") == "" ||
		hd.Get("X-Moongate-Gateway") != "test" {
		t.Fatalf("headers %v", hd)
	}
	_, derived := c.do("GET", "/v1/blobs/derived/cam1/snap.bin.json", blobReadToken, "", nil)
	ds := sha256.Sum256(derived)
	if got := sink.got("/up/blobs/derived/cam1/snap.bin.json"); len(got) != 1 || got[0] != hex.EncodeToString(ds[:]) {
		t.Fatalf("derived blob upstream %v", got)
	}
	waitFor(t, 5*time.Second, "two blob sends acknowledged in the status", func() bool {
		st := syncStatus(t, c)
		return num(st, "blobs_delivered") == "2" && num(st, "blobs_pending") == "0"
	})

	// Delete while the send is pending.
	sink.mode.Store("503")
	data := bytes.Repeat([]byte("pending "), 64<<10)
	ps := sha256.Sum256(data)
	pending := hex.EncodeToString(ps[:])
	if r, b := c.do("PUT", "/v1/blobs/photos/later.bin", blobAdminToken, "", bytes.NewReader(data)); r.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.StatusCode, b)
	}
	if r, b := c.do("DELETE", "/v1/blobs/photos/later.bin", blobAdminToken, "", nil); r.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.StatusCode, b)
	}
	waitFor(t, 10*time.Second, "the refused send in the status", func() bool {
		st := syncStatus(t, c)
		return num(st, "blobs_pending") == "1" && num(st, "blob_bytes_pending") == fmt.Sprint(len(data)) &&
			strings.Contains(fmt.Sprint(st["last_error"]), "503") && sink.tries.Load() >= 4
	})
	if !exists(objectPath(dataDir, pending)) {
		t.Fatal("the object of a pending send was removed with its blob")
	}
	if r, _ := c.do("GET", "/v1/blobs/photos/later.bin", blobReadToken, "", nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("deleted blob still readable: %d", r.StatusCode)
	}
	sink.mode.Store("ok")
	waitFor(t, 10*time.Second, "the deleted blob delivered", func() bool { return len(sink.got("/up/blobs/photos/later.bin")) == 1 })
	if got := sink.got("/up/blobs/photos/later.bin"); got[0] != pending {
		t.Fatalf("delivered %s, want %s", got[0], pending)
	}
	waitFor(t, 5*time.Second, "its object removed after the ack", func() bool { return !exists(objectPath(dataDir, pending)) })
	if !exists(objectPath(dataDir, want)) {
		t.Fatal("the object of a live blob was removed")
	}
	// The delivered count goes up after the acknowledgement that removed
	// the object.
	var st map[string]any
	waitFor(t, 5*time.Second, "sync status: 3 blobs delivered", func() bool {
		st = syncStatus(t, c)
		return num(st, "blobs_delivered") == "3" && num(st, "blobs_pending") == "0"
	})
	if num(st, "blobs_failed") != "0" {
		t.Fatalf("status %v", st)
	}
}

// TestBlobSyncSIGKILL: blobs uploaded (some deleted) while the upstream
// refuses them; the daemon is SIGKILLed, restarted, and SIGKILLed again
// while it drains to a slow upstream. Every acknowledged upload reaches the
// upstream with its bytes, and at the end the objects on disk are exactly
// those of the stored blobs: nothing leaked, nothing removed early.
func TestBlobSyncSIGKILL(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	sink := newBlobSink(t)
	sink.mode.Store("503")
	cfgPath := filepath.Join(t.TempDir(), "moongate.yaml")
	if err := os.WriteFile(cfgPath, []byte(blobSyncConfig(dataDir, fnDir, sink.srv.URL, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	ch := startChild(t, cfgPath)
	c := blobClient{t: t, base: "http://" + ch.httpAddr}
	want := map[string]string{} // path upstream -> sha256
	kept := map[string]string{} // blob name -> sha256 (not deleted)
	for i := range 12 {
		name := fmt.Sprintf("b%02d.bin", i)
		data := bytes.Repeat([]byte(name), 20000+i*1000)
		s := sha256.Sum256(data)
		if r, b := c.do("PUT", "/v1/blobs/photos/"+name, blobAdminToken, "", bytes.NewReader(data)); r.StatusCode != http.StatusCreated {
			t.Fatalf("upload %s: %d %s", name, r.StatusCode, b)
		}
		want["/blobs/photos/"+name] = hex.EncodeToString(s[:])
		kept[name] = hex.EncodeToString(s[:])
		if i%3 == 0 {
			if r, _ := c.do("DELETE", "/v1/blobs/photos/"+name, blobAdminToken, "", nil); r.StatusCode != http.StatusNoContent {
				t.Fatalf("delete %s: %d", name, r.StatusCode)
			}
			delete(kept, name)
		}
	}
	waitFor(t, 10*time.Second, "the upstream refusing", func() bool { return sink.tries.Load() >= 2 })
	ch.kill()

	// Restarted while the upstream is still down: nothing is lost, the
	// objects of the deleted blobs are still there for their sends.
	ch = startChild(t, cfgPath)
	c.base = "http://" + ch.httpAddr
	for _, sha := range want {
		if !exists(objectPath(dataDir, sha)) {
			t.Fatalf("object %s of a pending send removed across the restart", sha)
		}
	}
	if st := syncStatus(t, c); num(st, "blobs_pending") != "12" {
		t.Fatalf("after restart: %v", st)
	}
	// The upstream comes back, slowly: kill the daemon while it drains.
	sink.delay.Store(int64(30 * time.Millisecond))
	sink.mode.Store("ok")
	waitFor(t, 20*time.Second, "a few deliveries", func() bool { return sink.paths() >= 3 })
	ch.kill()
	if n := sink.paths(); n == len(want) {
		t.Fatalf("the second kill came after every send (%d) was delivered: nothing left to drain", n)
	}
	sink.delay.Store(0)
	ch = startChild(t, cfgPath)
	c.base = "http://" + ch.httpAddr
	waitFor(t, 30*time.Second, "every send delivered", func() bool {
		return sink.paths() == len(want) && num(syncStatus(t, c), "blobs_pending") == "0"
	})
	dups := 0
	for path, sha := range want {
		got := sink.got(path)
		for _, g := range got {
			if g != sha {
				t.Errorf("%s arrived as %s, want %s", path, g, sha)
			}
		}
		sink.mu.Lock()
		keys := sink.keys[path]
		sink.mu.Unlock()
		for _, k := range keys {
			if k != keys[0] || k == "" {
				t.Errorf("%s arrived with keys %v", path, keys)
			}
		}
		dups += len(got) - 1
	}
	ch.term(t)

	// The objects on disk are exactly those of the blobs still stored.
	var onDisk []string
	_ = filepath.WalkDir(filepath.Join(dataDir, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			onDisk = append(onDisk, filepath.Base(p))
		}
		return nil
	})
	var expect []string
	for _, sha := range kept {
		expect = append(expect, sha)
	}
	sort.Strings(onDisk)
	sort.Strings(expect)
	if fmt.Sprint(onDisk) != fmt.Sprint(expect) {
		t.Fatalf("files under blobs/: %v\nwant the objects of the stored blobs: %v", onDisk, expect)
	}
	st := openStore(t, dataDir)
	for name, sha := range kept {
		if n, err := st.BlobRefs(t.Context(), sha); err != nil || n != 1 {
			t.Errorf("blob %s: %d references (%v), want 1", name, n, err)
		}
	}
	t.Logf("%d blobs delivered across two SIGKILLs (%d duplicate PUTs, same bytes and key)", len(want), dups)
}

// rawUpload opens a connection to addr and sends a PUT of a blob with the
// given Content-Length, without the body.
func rawUpload(t *testing.T, addr, name string, length int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "PUT /v1/blobs/photos/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", name, blobAdminToken, length)
	return conn
}

func tmpFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dataDir, "blobs", "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestBlobUploadReadTimeout: a client that stalls in the middle of an
// upload's body (HTTP/1.1, and an HTTP/2 stream) is cut off with 408 after
// blobs.upload_read_timeout; its temporary file is removed and nothing is
// stored. A slow client that keeps sending 64 KiB within the timeout is
// not cut off.
func TestBlobUploadReadTimeout(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	cfg := strings.Replace(blobConfig(dataDir, fnDir), "blobs:\n", "blobs:\n  upload_read_timeout: 1s\n", 1)
	p := startInProcess(t, cfg)
	addr := p.d.HTTPAddr().String()
	c := blobClient{t: t, base: "http://" + addr}

	// HTTP/1.1: headers, 100 KiB of a 1 MiB body, then nothing.
	conn := rawUpload(t, addr, "stalled.bin", 1<<20)
	if _, err := conn.Write(make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the partial upload in blobs/tmp", func() bool { return len(tmpFiles(t, dataDir)) == 1 })
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to the stalled upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	waited := time.Since(start)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "upload stalled") {
		t.Fatalf("stalled upload answered %d %s", resp.StatusCode, body)
	}
	if waited > 8*time.Second {
		t.Fatalf("answered after %s for a 1s timeout", waited)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection stays open after the timeout")
	}
	waitFor(t, 5*time.Second, "blobs/tmp empty", func() bool { return len(tmpFiles(t, dataDir)) == 0 })
	if r, _ := c.do("GET", "/v1/blobs/photos/stalled.bin", blobReadToken, "", nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("stalled upload stored: %d", r.StatusCode)
	}

	// HTTP/2 without TLS (prior knowledge): the stream stalls.
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: &protos}}
	defer h2.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write(make([]byte, 100<<10)) }() // then blocks: the body never ends
	req, _ := http.NewRequest("PUT", c.base+"/v1/blobs/photos/stalled2.bin", pr)
	req.ContentLength = 1 << 20
	req.Header.Set("Authorization", "Bearer "+blobAdminToken)
	start = time.Now()
	resp, err = h2.Do(req)
	if err != nil {
		t.Fatalf("h2 upload: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout || time.Since(start) > 8*time.Second {
		t.Fatalf("h2 stalled upload: HTTP/%d %d after %s: %s", resp.ProtoMajor, resp.StatusCode, time.Since(start), body)
	}
	waitFor(t, 5*time.Second, "blobs/tmp empty", func() bool { return len(tmpFiles(t, dataDir)) == 0 })

	// Slow but steady: 64 KiB every 400ms, 8 times (3.2 s in all), under a
	// 1s timeout, which applies to each read, not to the whole body. (The
	// timeout was 400ms with a 150ms pace; a loaded machine overran that.)
	conn = rawUpload(t, addr, "slow.bin", 8*apiserver.UploadChunk)
	for range 8 {
		time.Sleep(400 * time.Millisecond) // the client's pace, not a wait for the server
		if _, err := conn.Write(make([]byte, apiserver.UploadChunk)); err != nil {
			t.Fatal(err)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("slow upload: %v %v", resp, err)
	}
}

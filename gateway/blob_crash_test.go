package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// TestBlobUploadSIGKILL kills the daemon (SIGKILL, a child process) in the
// middle of a streamed upload, and again while uploads and the functions
// they trigger are being processed. After each restart no half-written blob
// is visible, the temporary directory is clean, and every stored blob ran
// its upload function, and the function chained to it, exactly once.
func TestBlobUploadSIGKILL(t *testing.T) {
	dataDir, fnDir := t.TempDir(), t.TempDir()
	// up is slowed down (a busy loop) so that uploads outrun it and the
	// kill finds upload-triggered and chained work queued.
	writeFunction(t, fnDir, "up", `function handle(e) local u = json.decode(e.payload) for i = 1, 100000 do end emit("uploaded", {name = u.name, size = u.size}) end`,
		"triggers:\n  - upload: {bucket: photos}\nmax_concurrency: 1\nlimits: {timeout: 60s}\n")
	writeFunction(t, fnDir, "seen", `function handle(e) state.incr("seen/" .. json.decode(e.payload).name, 1) end`,
		"triggers:\n  - stream: uploaded\n")
	cfgPath := filepath.Join(t.TempDir(), "moongate.yaml")
	if err := os.WriteFile(cfgPath, []byte(blobConfig(dataDir, fnDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpDir := filepath.Join(dataDir, "blobs", "tmp")
	files := func(dir string) []string {
		var out []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				out = append(out, p)
			}
			return nil
		})
		return out
	}

	// 1. SIGKILL during a streamed upload.
	c := startChild(t, cfgPath)
	cl := blobClient{t: t, base: "http://" + c.httpAddr}
	release := make(chan struct{})
	uploadDone := make(chan error, 1)
	go func() {
		body := &patternReader{n: 20 << 20, block: func(off int64) {
			if off >= 4<<20 {
				<-release
			}
		}}
		req, _ := http.NewRequest("PUT", cl.base+"/v1/blobs/photos/half.bin", body)
		req.Header.Set("Authorization", "Bearer "+blobAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("upload answered %d", resp.StatusCode)
		}
		uploadDone <- err
	}()
	waitFor(t, 30*time.Second, "a partial upload in blobs/tmp", func() bool {
		for _, f := range files(tmpDir) {
			if st, err := os.Stat(f); err == nil && st.Size() >= 1<<20 {
				return true
			}
		}
		return false
	})
	c.kill()
	close(release)
	if err := <-uploadDone; err == nil || strings.Contains(err.Error(), "answered") {
		t.Fatalf("the killed upload: %v", err)
	}
	if len(files(tmpDir)) == 0 {
		t.Fatal("the kill left no partial file: the test did not kill mid-upload")
	}
	c = startChild(t, cfgPath)
	cl.base = "http://" + c.httpAddr
	if left := files(filepath.Join(dataDir, "blobs")); len(left) != 0 {
		t.Fatalf("after restart, blob files left: %v", left)
	}
	if r, b := cl.do("GET", "/v1/blobs/photos/half.bin", blobReadToken, "", nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("half-written blob visible: %d %s", r.StatusCode, b)
	}

	// 2. SIGKILL while uploads and their chained functions run.
	var mu sync.Mutex
	acked := map[string]bool{}
	upload := func(from, to int, stop <-chan struct{}) {
		for i := from; i < to; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("p%03d.jpg", i)
			req, _ := http.NewRequest("PUT", cl.base+"/v1/blobs/photos/"+name, strings.NewReader(strings.Repeat(name, 1000)))
			req.Header.Set("Authorization", "Bearer "+blobAdminToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return // the daemon was killed
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated {
				mu.Lock()
				acked[name] = true
				mu.Unlock()
			}
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); upload(0, 60, stop) }()
	waitFor(t, 30*time.Second, "20 acknowledged uploads", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 20 })
	_, m := cl.do("GET", "/metrics", "", "", nil)
	backlog := "?"
	for _, l := range strings.Split(string(m), "\n") {
		if v, ok := strings.CutPrefix(l, "moongate_backlog "); ok {
			backlog = v
		}
	}
	c.kill()
	t.Logf("SIGKILL with %s events queued or running", backlog)
	close(stop)
	<-done
	c = startChild(t, cfgPath)
	cl.base = "http://" + c.httpAddr
	upload(60, 80, nil)
	if left := files(tmpDir); len(left) != 0 {
		t.Fatalf("tmp not clean after restart: %v", left)
	}
	// Every stored blob (acknowledged ones at least) ran up and seen once.
	r, b := cl.do("GET", "/v1/blobs/photos?limit=1000", blobReadToken, "", nil)
	var list struct {
		Blobs []struct {
			Name string `json:"name"`
		} `json:"blobs"`
	}
	if r.StatusCode != 200 || json.Unmarshal(b, &list) != nil {
		t.Fatalf("list: %d %s", r.StatusCode, b)
	}
	stored := map[string]bool{}
	for _, bl := range list.Blobs {
		stored[bl.Name] = true
	}
	for name := range acked {
		if !stored[name] {
			t.Fatalf("acknowledged upload %s is missing", name)
		}
	}
	if stored["half.bin"] {
		t.Fatal("half.bin stored")
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		r, b := cl.do("GET", "/v1/functions/seen/state?limit=1000", blobReadToken, "", nil)
		if r.StatusCode == 200 && strings.Count(string(b), `"key"`) >= len(stored) {
			break
		}
		if time.Now().After(deadline) {
			_, dl := cl.do("GET", "/v1/deadletters", blobReadToken, "", nil)
			t.Fatalf("not every stored blob counted: %s\ndead letters: %s", b, dl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.term(t)
	st := openStore(t, dataDir)
	for name := range stored {
		v, ok, err := st.GetState(t.Context(), "seen", "seen/"+name)
		if err != nil || !ok || string(v) != "1" {
			t.Errorf("blob %s counted %s (found %v, %v), want exactly once", name, v, ok, err)
		}
	}
	kvs, _, err := st.ListState(t.Context(), "seen", "seen/", 1000, "")
	if err != nil || len(kvs) != len(stored) {
		t.Fatalf("%d counters for %d stored blobs (%v)", len(kvs), len(stored), err)
	}
	t.Logf("%d blobs stored (%d acknowledged) across two SIGKILLs, each counted once", len(stored), len(acked))
}

// openStore opens the store of a stopped daemon's data directory.
func openStore(t *testing.T, dataDir string) *store.Store {
	t.Helper()
	st, err := store.Open(t.Context(), store.Options{Dir: dataDir, Buckets: map[string]store.Bucket{"photos": {}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

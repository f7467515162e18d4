package gateway

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// TestEndToEndSyncHTTP: device event -> function -> record -> the daemon's
// sync manager -> an HTTP upstream, with the alert stream as a priority
// stream; the status names the target.
func TestEndToEndSyncHTTP(t *testing.T) {
	var mu gosync.Mutex
	var got []map[string]any
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		sc := bufio.NewScanner(zr)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
		}
		w.WriteHeader(204)
	}))
	defer up.Close()
	fnDir := t.TempDir()
	writeFunction(t, fnDir, "reference", referenceLua, referenceManifest+"sync: [cloud]\n")
	writeFunction(t, fnDir, "alarm", `function handle(e) emit("alerts", {device=e.device}) return nil end`,
		referenceManifest+"sync: [cloud, missing]\n")
	extra := fmt.Sprintf("sync:\n  targets:\n    - {name: cloud, type: http, http: {url: %q}, priority_streams: [alerts], batch: {max_delay: 0}}\n", up.URL)
	p := startInProcess(t, testConfig(t.TempDir(), fnDir, extra))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d9", true)
	publish(t, dev, "devices/d9/telemetry", 1, []byte(`{"temp":21}`))
	waitFor(t, 20*time.Second, "two records upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	streams := map[string]bool{}
	for _, m := range got {
		streams[m["stream"].(string)] = true
		if m["gateway"] != "test" || m["device"] != "d9" || m["id"] == "" {
			t.Errorf("record %v", m)
		}
	}
	mu.Unlock()
	if !streams["alerts"] || !streams["reference"] {
		t.Errorf("streams %v", streams)
	}
	waitFor(t, 10*time.Second, "status: cloud delivered both, missing holds one", func() bool {
		var cloud, missing bool
		for _, s := range p.d.Sync().Status() {
			switch s.Name {
			case "cloud":
				cloud = s.Delivered == 2 && s.Backlog == 0
			case "missing":
				missing = s.State == "unconfigured" && s.Backlog == 1
			}
		}
		return cloud && missing
	})
	// The management API reports the same.
	api, err := daemonSync{p.d}.SyncStatus(context.Background())
	if err != nil || len(api) != 2 || api[0].Name != "cloud" || api[0].Kind != "http" || api[0].DeliveredTotal != 2 || api[1].Kind != "unconfigured" {
		t.Errorf("API sync status %+v, %v", api, err)
	}
}

// TestSyncForwardRawEvents: a sync.forward entry sends raw events upstream
// without any Lua file, through the inbox and the commit like a function.
func TestSyncForwardRawEvents(t *testing.T) {
	var mu gosync.Mutex
	var got []map[string]any
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		sc := bufio.NewScanner(zr)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
		}
		w.WriteHeader(204)
	}))
	defer up.Close()
	extra := fmt.Sprintf("sync:\n  targets:\n    - {name: cloud, type: http, http: {url: %q}, batch: {max_delay: 0}}\n"+
		"  forward:\n    - {name: raw, trigger: 'devices/{device}/telemetry', targets: [cloud]}\n", up.URL)
	p := startInProcess(t, testConfig(t.TempDir(), t.TempDir(), extra))
	dev := connect(t, "tcp://"+p.d.MQTTAddr().String(), "d3", true)
	publish(t, dev, "devices/d3/telemetry", 1, []byte("not json \x01"))
	waitFor(t, 20*time.Second, "the raw event upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	data, _ := got[0]["data"].(map[string]any)
	if got[0]["stream"] != "raw" || got[0]["function"] != "raw" || got[0]["device"] != "d3" ||
		data["topic"] != "devices/d3/telemetry" || data["payload"] != "not json \x01" {
		t.Fatalf("record %v", got[0])
	}
}

func TestSyncForwardBadTrigger(t *testing.T) {
	extra := "sync:\n  targets:\n    - {name: cloud, type: http, http: {url: 'http://127.0.0.1:1'}}\n" +
		"  forward:\n    - {name: raw, trigger: 'devices/#/x', targets: [cloud]}\n"
	cfg, err := config.Parse("t.yaml", []byte(testConfig(t.TempDir(), "", extra)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewDaemon(context.Background(), cfg, nil); err == nil || !strings.Contains(err.Error(), "sync.forward[0]") {
		t.Fatalf("NewDaemon: %v", err)
	}
}

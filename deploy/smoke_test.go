package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/deploy/internal/gwproc"
	"github.com/moongate-edge/moongate/store"
)

// TestARMSmoke runs the armv7 (32-bit) and arm64 release binaries under
// qemu-user through the install-day scenario: serve on the defaults with
// the reference function, publish events over MQTT, see the function's
// commands come back, SIGTERM, check the records, restart, publish more,
// stop, and find every record still there: asked over the REST API while
// the daemon runs, and read from the store directory after it stopped.
func TestARMSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("qemu smoke scenario skipped in -short mode")
	}
	for _, tc := range []struct{ name, goarch, goarm, qemu, pkg string }{
		{"armv7", "arm", "7", "qemu-arm", "qemu-user"},
		{"arm64", "arm64", "", "qemu-aarch64", "qemu-user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qemu := needTool(t, tc.qemu, tc.pkg)
			bin := moongateBinary(t, tc.goarch, tc.goarm)
			smoke(t, []string{qemu, bin})
		})
	}
}

// smoke is the scenario for one command line (binary, maybe behind qemu).
func smoke(t *testing.T, command []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	fdir := filepath.Join(dir, "functions")
	if err := os.Mkdir(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"reference.lua", "reference.yaml"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "examples", "functions", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(fdir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A read token for GET /v1/records: the configuration holds its hash.
	token := "mgt_smoke-test-read-token"
	sum := sha256.Sum256([]byte(token))
	opts := gwproc.Options{
		Command:      command,
		DataDir:      filepath.Join(dir, "data"),
		FunctionsDir: fdir,
		ConfigPath:   filepath.Join(dir, "config.yaml"),
		APIConfig:    fmt.Sprintf("  tokens:\n    - {name: smoke, scope: read, hash: \"sha256:%s\"}\n", hex.EncodeToString(sum[:])),
	}
	// Temperatures 0, 10, ... 190: the reference function stores every
	// reading and sends {"fan":"on"} for those above 80. The last one is
	// hot, so its command arriving means the device's whole lane (events
	// run in order per device) is committed.
	const first = 20
	temps := make([]int, first)
	hot := 0
	for i := range temps {
		temps[i] = i * 10
		if temps[i] > 80 {
			hot++
		}
	}

	p := startDaemon(ctx, t, opts)
	t.Logf("%s ready after %v", filepath.Base(command[len(command)-1]), p.ReadyAfter())
	cmds := runDevice(ctx, t, p, "pi-1", temps, hot)
	if cmds != hot {
		t.Fatalf("%d fan commands, want %d", cmds, hot)
	}
	live := apiRecords(ctx, t, p, token)
	checkRecords(t, live, temps)
	stopDaemon(ctx, t, p)
	recs := storeRecords(ctx, t, opts.DataDir)
	checkRecords(t, recs, temps)
	for i := range recs {
		if recs[i].ID != live[i].ID {
			t.Fatalf("record %d: the API said %s, the store has %s", i, live[i].ID, recs[i].ID)
		}
	}

	// Restart on the same data: the records are there, new events add to them.
	p = startDaemon(ctx, t, opts)
	if n := runDevice(ctx, t, p, "pi-1", []int{95}, 1); n != 1 {
		t.Fatalf("%d fan commands after restart, want 1", n)
	}
	checkRecords(t, apiRecords(ctx, t, p, token), append(temps, 95))
	stopDaemon(ctx, t, p)
	after := storeRecords(ctx, t, opts.DataDir)
	checkRecords(t, after, append(temps, 95))
	for i, r := range recs {
		if after[i].ID != r.ID || string(after[i].Data) != string(r.Data) {
			t.Fatalf("record %d changed across the restart: %s %s, was %s %s", i, after[i].ID, after[i].Data, r.ID, r.Data)
		}
	}
}

func startDaemon(ctx context.Context, t *testing.T, o gwproc.Options) *gwproc.Proc {
	t.Helper()
	p, err := gwproc.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func stopDaemon(ctx context.Context, t *testing.T, p *gwproc.Proc) {
	t.Helper()
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("%v\n%s", err, p.Output())
	}
}

// runDevice connects as a device, subscribes to its command topic,
// publishes one telemetry event per temperature (QoS 1: each PUBACK means
// the event is durable) and waits for want commands. It returns how many
// arrived.
func runDevice(ctx context.Context, t *testing.T, p *gwproc.Proc, device string, temps []int, want int) int {
	t.Helper()
	var mu sync.Mutex
	got := 0
	done := make(chan struct{})
	o := paho.NewClientOptions().AddBroker("tcp://" + p.MQTTAddr()).SetClientID("smoke-" + device).
		SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(false).SetKeepAlive(30 * time.Second)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	tok := c.Subscribe("devices/"+device+"/cmd", 1, func(_ paho.Client, m paho.Message) {
		var cmd struct {
			Fan string `json:"fan"`
		}
		if err := json.Unmarshal(m.Payload(), &cmd); err != nil || cmd.Fan != "on" {
			t.Errorf("unexpected command %q", m.Payload())
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got++
		if got == want {
			close(done)
		}
	})
	if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for _, temp := range temps {
		tok := c.Publish("devices/"+device+"/telemetry", 1, false, fmt.Sprintf(`{"temp": %d}`, temp))
		if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Errorf("waiting for %d commands: %v\n%s", want, ctx.Err(), p.Output())
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}

// apiRecords asks the running daemon for the records of the reference
// stream (GET /v1/records), oldest first.
func apiRecords(ctx context.Context, t *testing.T, p *gwproc.Proc, token string) []store.Record {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.APIAddr()+"/v1/records?stream=reference&limit=1000", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/records: %d %v: %s", resp.StatusCode, err, body)
	}
	var page struct {
		Records []struct {
			ID       string          `json:"id"`
			Function string          `json:"function"`
			Device   string          `json:"device"`
			Data     json.RawMessage `json:"data"`
		} `json:"records"`
		Next string `json:"next_cursor"`
	}
	if err := json.Unmarshal(body, &page); err != nil || page.Next != "" {
		t.Fatalf("GET /v1/records: %v (next %q): %s", err, page.Next, body)
	}
	out := make([]store.Record, len(page.Records))
	for i, r := range page.Records {
		out[i] = store.Record{ID: r.ID, Function: r.Function, Device: r.Device, Data: r.Data}
	}
	return out
}

// storeRecords returns the records of the reference stream in order.
// It opens the store directory itself, so the daemon must be stopped;
// Badger's files are the same on arm, arm64 and amd64.
func storeRecords(ctx context.Context, t *testing.T, dir string) []store.Record {
	t.Helper()
	s, err := store.Open(ctx, store.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("open the daemon's store: %v", err)
	}
	defer s.Close()
	recs, next, err := s.QueryRecords(ctx, store.Query{Stream: "reference", Limit: store.MaxQueryLimit})
	if err != nil || next != "" {
		t.Fatalf("query records: %v (next %q)", err, next)
	}
	return recs
}

// checkRecords: one record per reading, in order, with the conversion.
func checkRecords(t *testing.T, recs []store.Record, temps []int) {
	t.Helper()
	if len(recs) != len(temps) {
		t.Fatalf("%d records, want %d", len(recs), len(temps))
	}
	for i, r := range recs {
		var v struct {
			Temp  float64 `json:"temp"`
			TempF float64 `json:"temp_f"`
		}
		if err := json.Unmarshal(r.Data, &v); err != nil {
			t.Fatalf("record %d: %v: %s", i, err, r.Data)
		}
		if v.Temp != float64(temps[i]) || v.TempF != float64(temps[i])*1.8+32 || r.Device != "pi-1" || r.Function != "reference" {
			t.Fatalf("record %d: %+v %s, want temp %d", i, r, r.Data, temps[i])
		}
	}
}

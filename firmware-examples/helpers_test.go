package firmwareexamples

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/store"
)

// daemon is a moongate daemon running in this process on random loopback
// ports, with the embedded broker.
type daemon struct {
	d      *gateway.Daemon
	cancel context.CancelFunc
	done   chan error
	url    string // tcp://127.0.0.1:PORT of the embedded broker
}

// startDaemon runs a daemon on functionsDir until the test ends. extraMQTT
// is appended under mqtt.embedded (indented two levels, e.g. users), extra
// at the top level.
func startDaemon(t testing.TB, functionsDir, extraEmbedded, extra string) *daemon {
	t.Helper()
	return startDaemonListen(t, "127.0.0.1:0", functionsDir, extraEmbedded, extra)
}

// startDaemonOnPort runs a daemon with the linux-c function whose broker
// listens on the given loopback port.
func startDaemonOnPort(t testing.TB, port int) *daemon {
	t.Helper()
	return startDaemonListen(t, fmt.Sprintf("127.0.0.1:%d", port), "linux-c", "", "")
}

func startDaemonListen(t testing.TB, listen, functionsDir, extraEmbedded, extra string) *daemon {
	t.Helper()
	return startDaemonData(t, t.TempDir(), listen, functionsDir, extraEmbedded, extra)
}

// startDaemonData is startDaemonListen with the store in dataDir. The
// daemon stops at the end of the test, or earlier with stop.
func startDaemonData(t testing.TB, dataDir, listen, functionsDir, extraEmbedded, extra string) *daemon {
	t.Helper()
	yaml := fmt.Sprintf(`gateway_id: fw
data_dir: %q
functions_dir: %q
log: {level: warn}
mqtt:
  embedded:
    listen: %q
%sapi: {listen: "127.0.0.1:0"}
store: {durability: always}
%s`, dataDir, functionsDir, listen, extraEmbedded, extra)
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := gateway.NewDaemon(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("daemon: %v", err)
	}
	p := &daemon{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- d.Run(ctx) }()
	t.Cleanup(func() { p.stop(t) })
	waitFor(t, 30*time.Second, "daemon ready", func() bool {
		select {
		case err := <-p.done:
			t.Fatalf("daemon stopped early: %v", err)
		default:
		}
		return d.Gateway().Ready()
	})
	p.url = "tcp://" + d.MQTTAddr().String()
	return p
}

// stop stops the daemon (once) and waits for it.
func (p *daemon) stop(t testing.TB) {
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("daemon run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("daemon did not stop")
	}
}

// records reads every record of a function, oldest first.
func (p *daemon) records(t testing.TB, function string) []store.Record {
	t.Helper()
	var out []store.Record
	cursor := ""
	for {
		recs, next, err := p.d.Store().QueryRecords(context.Background(), store.Query{Function: function, Limit: store.MaxQueryLimit, Cursor: cursor})
		if err != nil {
			t.Fatalf("query records: %v", err)
		}
		out = append(out, recs...)
		if next == "" || len(recs) == 0 {
			return out
		}
		cursor = next
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// copyFunction copies NAME.lua and NAME.yaml from dir into a new temporary
// directory, applying replacements (old, new pairs) to the manifest.
func copyFunction(t testing.TB, dir, name string, manifestEdits ...string) string {
	t.Helper()
	out := t.TempDir()
	src, err := os.ReadFile(filepath.Join(dir, name+".lua"))
	if err != nil {
		t.Fatal(err)
	}
	man, err := os.ReadFile(filepath.Join(dir, name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := string(man)
	for i := 0; i+1 < len(manifestEdits); i += 2 {
		if !strings.Contains(m, manifestEdits[i]) {
			t.Fatalf("%s.yaml has no %q", name, manifestEdits[i])
		}
		m = strings.ReplaceAll(m, manifestEdits[i], manifestEdits[i+1])
	}
	if err := os.WriteFile(filepath.Join(out, name+".lua"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, name+".yaml"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

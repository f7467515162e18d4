package gateway

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// TestFunctionsDirFIFODoesNotHangStart: a FIFO named bad.yaml in
// functions_dir is a broken file like any other: the others load and the
// gateway becomes ready, and it stops when asked. Opening it blocked the
// start (never ready) and then the stop (exit 1 at the 45 s deadline).
func TestFunctionsDirFIFODoesNotHangStart(t *testing.T) {
	dir := t.TempDir()
	fnDir := filepath.Join(dir, "functions")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFunction(t, fnDir, "good", "function handle(e) end", "triggers:\n  - mqtt: t/{device}\n")
	fifo := filepath.Join(fnDir, "bad.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	// Unblocks whatever is stuck opening the FIFO when the test ends.
	defer func() {
		go func() {
			for i := 0; i < 50; i++ {
				if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}()
	cfg, err := config.Parse("test.yaml", []byte(testConfig(filepath.Join(dir, "data"), fnDir, "")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := NewDaemon(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	ready := poll(10*time.Second, d.Gateway().Ready)
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Errorf("daemon did not stop within 15s of its context ending")
	}
	if !ready {
		t.Fatalf("daemon not ready after 10s: a FIFO named bad.yaml in functions_dir blocks the start")
	}
}

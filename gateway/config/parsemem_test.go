package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// peakHeapGrowth runs f and returns how much the heap grew over what it
// was before, at its peak (sampled every millisecond).
func peakHeapGrowth(f func()) int64 {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return int64(peak.Load()) - int64(base.HeapAlloc)
}

// TestParseMemoryBounded: decoding takes about 90 times a file's size (a
// node per two bytes of a flow list), before the strict checks refuse an
// unknown key: the 4 MiB files once allowed took 368 MiB, more than the
// unit's MemoryMax. At the 256 KiB limit it stays a few tens of MiB.
func TestParseMemoryBounded(t *testing.T) {
	body := "x: [" + strings.Repeat("0,", (MaxFileSize-16)/2) + "0]\n"
	if len(body) > MaxFileSize {
		t.Fatal("test body over the limit")
	}
	var err error
	grew := peakHeapGrowth(func() { _, err = Parse("big.yaml", []byte(body)) })
	if err == nil {
		t.Fatal("unknown key accepted")
	}
	t.Logf("file of %d bytes: heap grew by %d MiB while parsing", len(body), grew>>20)
	if grew > 48<<20 {
		t.Fatalf("parsing a %d-byte configuration took %d MiB of heap", len(body), grew>>20)
	}
	if _, err := Parse("big.yaml", []byte(strings.Repeat("#", MaxFileSize+1))); err == nil || !strings.Contains(err.Error(), "larger than the limit") {
		t.Fatalf("a file over the limit: %v", err)
	}
}

// TestLoadFIFODoesNotHang: a configuration path that is a FIFO is refused.
// Opening it blocked until a writer came, before serve had its signal
// handling and stop deadline: only SIGKILL ended it.
func TestLoadFIFODoesNotHang(t *testing.T) {
	p := filepath.Join(t.TempDir(), "moongate.yaml")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	res := make(chan error, 1)
	go func() { _, err := Load(p); res <- err }()
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("a FIFO loaded as a configuration")
		}
	case <-time.After(5 * time.Second):
		// Unblock the goroutine before failing.
		if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("Load of a FIFO configuration path still blocked after 5s")
	}
}

package config

import (
	"fmt"
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

// TestParseMemoryBounded: decoding builds every YAML node (~150 bytes)
// before the strict checks refuse an unknown key: a 4 MiB flow list of
// one-digit numbers took 368 MiB, more than the unit's MemoryMax. The
// element bound (MaxElements) keeps the worst case to a few tens of MiB,
// and a real configuration of 3,000 device accounts (600 KB) still loads.
func TestParseMemoryBounded(t *testing.T) {
	body := "x: [" + strings.Repeat("0,", (MaxElements-16)/2) + "0]\n"
	var err error
	grew := peakHeapGrowth(func() { _, err = Parse("big.yaml", []byte(body)) })
	if err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("unknown key: %v", err)
	}
	t.Logf("file of %d bytes: heap grew by %d MiB while parsing", len(body), grew>>20)
	if grew > 48<<20 {
		t.Fatalf("parsing a %d-byte configuration took %d MiB of heap", len(body), grew>>20)
	}
	over := "x: [" + strings.Repeat("0,", MaxFileSize/2-8) + "0]\n"
	grew = peakHeapGrowth(func() { _, err = Parse("big.yaml", []byte(over)) })
	if err == nil || !strings.Contains(err.Error(), "YAML elements") || grew > 16<<20 {
		t.Fatalf("a 4 MiB flow list: %v (heap grew by %d MiB)", err, grew>>20)
	}
	if _, err := Parse("big.yaml", []byte(strings.Repeat("#", MaxFileSize+1))); err == nil || !strings.Contains(err.Error(), "larger than the limit") {
		t.Fatalf("a file over the limit: %v", err)
	}
	var b strings.Builder
	b.WriteString("gateway_id: gw\nmqtt:\n  embedded:\n    listen: 0.0.0.0:1883\n    max_clients: 5000\n    max_sessions: 5000\n    users:\n")
	hash := "$2a$10$" + strings.Repeat("N", 53)
	for i := range 3000 {
		fmt.Fprintf(&b, "      - username: sensor-%05d\n        password_hash: %q\n        publish: [\"devices/{username}/#\"]\n        subscribe: [\"devices/{username}/#\"]\n", i, hash)
	}
	c, err := Parse("users.yaml", []byte(b.String()))
	if err != nil || len(c.MQTT.Embedded.Users) != 3000 {
		t.Fatalf("a configuration of %d bytes with 3,000 device accounts: %v", b.Len(), err)
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

// TestElementBoundCarriageReturns: YAML breaks lines at a lone carriage
// return too, and "? 0\r" repeated counted no element at all: 4 MiB of it
// took 469 MiB of heap to decode.
func TestElementBoundCarriageReturns(t *testing.T) {
	body := strings.Repeat("? 0\r", MaxFileSize/4-1)
	var err error
	grew := peakHeapGrowth(func() { _, err = Parse("cr.yaml", []byte(body)) })
	t.Logf("file of %d bytes, %d counted elements: %v; heap grew by %d MiB", len(body), countElements([]byte(body)), err, grew>>20)
	if grew > 48<<20 {
		t.Fatalf("parsing a %d-byte configuration took %d MiB of heap (the bound is meant to keep it to a few tens)", len(body), grew>>20)
	}
}

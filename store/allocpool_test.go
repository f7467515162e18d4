package store

import (
	"context"
	"errors"
	"math"
	"runtime"
	"testing"

	"github.com/dgraph-io/ristretto/v2/z"
)

// Badger's table builders take their buffers from a z.AllocatorPool that
// would keep up to 8 returned allocators, each as large as the biggest
// table it built: megabytes of live heap at every flush and compaction.
// moongate's copy of ristretto (store/third_party/ristretto, wired by the
// replace in go.mod) releases them instead when the buffers are Go memory.
// This fails with the upstream module.
func TestAllocatorPoolKeepsNoAllocator(t *testing.T) {
	p := z.NewAllocatorPool(8)
	defer p.Release()
	a := p.Get(1<<20, "test")
	a.Allocate(4 << 20) // grows past its first buffer, as a flush does
	p.Return(a)
	b := p.Get(1<<20, "test")
	defer p.Return(b)
	if a == b {
		t.Fatal("the pool handed out the returned allocator again: it kept it (and its buffers) live")
	}
}

// Table builders' buffers (z.Allocator) are mapped outside the Go heap on
// Linux (store/third_party/ristretto/README.moongate.md, section 3): they
// neither grow the heap the soft memory limit follows nor pace the
// collector, and Release unmaps them.
func TestAllocatorBuffersOutsideGoHeap(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("buffers are mapped on Linux only")
	}
	base := z.MappedAllocatorBytes()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := z.NewAllocator(1<<20, "test")
	buf := a.Allocate(1 << 20)
	grown := a.Allocate(6 << 20) // a second, larger buffer
	for i := range buf {
		buf[i] = 1
	}
	grown[len(grown)-1] = 2
	runtime.ReadMemStats(&after)
	if got := z.MappedAllocatorBytes() - base; got < 7<<20 {
		t.Fatalf("%d bytes mapped for 7 MiB of allocations, want at least 7 MiB", got)
	}
	if d := int64(after.HeapAlloc) - int64(before.HeapAlloc); d > 1<<20 {
		t.Fatalf("the Go heap grew by %d bytes for 7 MiB of allocator buffers", d)
	}
	a.Release()
	if got := z.MappedAllocatorBytes(); got != base {
		t.Fatalf("%d bytes still mapped after Release, want %d", got, base)
	}
	a.Release() // a second Release frees nothing twice
	if got := z.MappedAllocatorBytes(); got != base {
		t.Fatalf("%d bytes mapped after a second Release, want %d", got, base)
	}
	// Small allocators stay in Go memory.
	s := z.NewAllocator(1<<10, "small")
	s.Allocate(512)
	if got := z.MappedAllocatorBytes(); got != base {
		t.Fatalf("a 1 KiB allocator mapped %d bytes", got-base)
	}
	s.Release()
}

// store.Options.CompactionShare reaches Badger: 0.5 by default, none when
// negative; above 1, between 0 and 0.1, or NaN is refused.
func TestCompactionShareOption(t *testing.T) {
	for _, c := range []struct {
		set, want float64
	}{{0, 0.5}, {0.25, 0.25}, {1, 1}, {-1, 0}} {
		s, err := Open(context.Background(), Options{Dir: t.TempDir(), CompactionShare: c.set})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.db.Opts().BuildShare; got != c.want {
			t.Errorf("CompactionShare %v: Badger's BuildShare %v, want %v", c.set, got, c.want)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []float64{1.5, 0.05, math.NaN()} {
		s, err := Open(context.Background(), Options{Dir: t.TempDir(), CompactionShare: bad})
		if !errors.Is(err, ErrInvalid) {
			if err == nil {
				s.Close()
			}
			t.Errorf("CompactionShare %v: %v, want ErrInvalid", bad, err)
		}
	}
}

package store

import (
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

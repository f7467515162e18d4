//go:build linux && (!jemalloc || !cgo)

package z

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// moongate: the buffers of an Allocator (Badger's table builders) are
// anonymous memory mappings outside the Go heap, as jemalloc's would be
// (README.moongate.md, section 3). A table builder holds a table's worth
// of blocks (several MiB) until the table is written; in the Go heap that
// raised the live heap by tens of MiB during every compaction, which a
// soft memory limit set from the live heap answered with garbage
// collection running without pause. Mapped memory is not scanned, does not
// pace the collector, and goes back to the kernel at Release.

// allocBufMin is the smallest buffer mapped; smaller ones are Go memory.
const allocBufMin = 64 << 10

var (
	mappedMu sync.Mutex
	mapped   = map[uintptr]int{} // first byte -> length, of the live mappings
)

// allocBuf returns n zeroed bytes for an Allocator buffer.
func allocBuf(n int, tag string) []byte {
	if n < allocBufMin {
		return Calloc(n, tag)
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return Calloc(n, tag)
	}
	mappedMu.Lock()
	mapped[uintptr(unsafe.Pointer(&b[0]))] = len(b)
	mappedMu.Unlock()
	return b
}

// freeBuf releases a buffer from allocBuf.
func freeBuf(b []byte) {
	if cap(b) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(&b[:1][0]))
	mappedMu.Lock()
	n, ok := mapped[p]
	if ok {
		delete(mapped, p)
	}
	mappedMu.Unlock()
	if !ok {
		Free(b)
		return
	}
	if err := unix.Munmap(unsafe.Slice((*byte)(unsafe.Pointer(p)), n)); err != nil {
		panic("z: munmap of an allocator buffer: " + err.Error())
	}
}

// MappedAllocatorBytes is the memory of live mapped allocator buffers.
func MappedAllocatorBytes() int64 {
	mappedMu.Lock()
	defer mappedMu.Unlock()
	var n int64
	for _, l := range mapped {
		n += int64(l)
	}
	return n
}

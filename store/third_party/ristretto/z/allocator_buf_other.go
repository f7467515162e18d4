//go:build !linux || (jemalloc && cgo)

package z

// allocBuf returns n zeroed bytes for an Allocator buffer (Calloc here; on
// Linux without jemalloc, an anonymous mapping: allocator_buf_linux.go).
func allocBuf(n int, tag string) []byte { return Calloc(n, tag) }

// freeBuf releases a buffer from allocBuf.
func freeBuf(b []byte) { Free(b) }

// MappedAllocatorBytes is the memory of live mapped allocator buffers: none
// here.
func MappedAllocatorBytes() int64 { return 0 }

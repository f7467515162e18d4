package luavm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"unsafe"
	"weak"

	lua "github.com/yuin/gopher-lua"
)

// Blob host API: blob.read(bucket, name, offset, length) returns a chunk of
// a blob (at most MaxBlobChunk bytes per call) and the blob's size;
// blob.write(bucket, name, data[, content_type]) and blob.delete(bucket,
// name) are effects, committed with the invocation's other outputs.
//
// Memory: a chunk counts against the memory cap for as long as it is alive.
// Other strings are accounted cumulatively (a conservative model), which
// would make a 20 MiB blob unreadable under an 8 MiB cap however it is
// processed; chunks are instead tracked with weak pointers, so a chunk the
// function has dropped stops counting once the Go collector has freed it.
// When a read would cross the cap, a collection is forced first, at most
// once per MaxMemory/4 bytes read (so a function cannot make the gateway
// collect continuously), and the read is refused with ErrMemory if the
// chunks still alive leave no room.

// MaxBlobChunk bounds the length of one blob.read.
const MaxBlobChunk = 1 << 20

// blobReadSteps is charged per blob.read call, on top of a step per 64
// bytes read.
const blobReadSteps = 64

// smallChunk: chunks up to this size are accounted cumulatively like other
// strings (tiny allocations may share a slot and never be seen as freed).
const smallChunk = 256

type blobChunk struct {
	p weak.Pointer[byte]
	n int64
}

// blobChunks tracks the live chunks of one invocation.
type blobChunks struct {
	chunks  []blobChunk
	live    int64 // bytes of the chunks not yet seen freed
	sinceGC int64 // bytes read since the last forced collection
}

// prune drops the chunks the collector has freed.
func (b *blobChunks) prune() {
	keep := b.chunks[:0]
	var live int64
	for _, c := range b.chunks {
		if c.p.Value() != nil {
			keep = append(keep, c)
			live += c.n
		}
	}
	clear(b.chunks[len(keep):])
	b.chunks, b.live = keep, live
}

// maxOpenVersions bounds the blob versions one invocation keeps open
// (file descriptors); past it one is closed, and a later read of that blob
// opens its version then current.
const maxOpenVersions = 8

// readVersion reads up to n bytes from off of the version of bucket/name
// this invocation opened first (opening it now on the first read).
func (iv *invocation) readVersion(bv BlobVersionReader, bucket, name string, off, n int64) ([]byte, int64, error) {
	key := [2]string{bucket, name}
	v := iv.versions[key]
	if v == nil {
		if iv.versions == nil {
			iv.versions = make(map[[2]string]BlobVersion)
		}
		if len(iv.versions) >= maxOpenVersions {
			for k, old := range iv.versions {
				_ = old.Close()
				delete(iv.versions, k)
				break
			}
		}
		var err error
		if v, err = bv.OpenBlobVersion(iv.stateCtx, bucket, name); err != nil {
			return nil, 0, err
		}
		iv.versions[key] = v
	}
	size := v.Size()
	if off >= size {
		return []byte{}, size, nil
	}
	buf := make([]byte, min(n, size-off))
	m, err := v.ReadAt(buf, off)
	if err != nil && !(errors.Is(err, io.EOF) && m == len(buf)) {
		return nil, size, fmt.Errorf("read blob: %w", err)
	}
	return buf[:m], size, nil
}

func checkBlobArgs(L *lua.LState) (string, string) {
	bucket, name := L.CheckString(1), L.CheckString(2)
	if bucket == "" || len(bucket) > 63 {
		L.ArgError(1, "bucket must be 1..63 bytes")
	}
	if name == "" || len(name) > 1024 {
		L.ArgError(2, "name must be 1..1024 bytes")
	}
	return bucket, name
}

func (in *instance) blobRead(L *lua.LState) int {
	bucket, name := checkBlobArgs(L)
	off := L.CheckNumber(3)
	length := L.OptNumber(4, MaxBlobChunk)
	if off < 0 || off != lua.LNumber(int64(off)) || off > 1<<53 {
		L.ArgError(3, "offset must be a non-negative integer")
	}
	if length < 0 || length != lua.LNumber(int64(length)) {
		L.ArgError(4, "length must be a non-negative integer")
	}
	n := int64(min(length, MaxBlobChunk))
	// A read is a store lookup and a file read: it costs more than a step.
	in.charge(L, blobReadSteps)
	br, ok := in.inv.state.(BlobReader)
	bv, versioned := in.inv.state.(BlobVersionReader)
	if !ok && !versioned {
		L.RaiseError("blob.read(%s, %s): blobs are not available here", quoteCut(bucket), quoteCut(name))
	}
	iv := &in.inv
	// Make room: the chunk counts before it is read.
	if n > smallChunk {
		if iv.strBytes+iv.tableBytes+iv.blobs.live+n > iv.limits.MaxMemory {
			iv.blobs.prune()
			if iv.strBytes+iv.tableBytes+iv.blobs.live+n > iv.limits.MaxMemory && iv.blobs.sinceGC >= iv.limits.MaxMemory/4 {
				runtime.GC()
				iv.blobs.sinceGC = 0
				iv.blobs.prune()
			}
		}
		if iv.strBytes+iv.tableBytes+iv.blobs.live+n > iv.limits.MaxMemory {
			in.raise(L, fmt.Errorf("%w (blob.read of %d bytes with %d bytes of chunks alive, cap %d)", ErrMemory, n, iv.blobs.live, iv.limits.MaxMemory))
		}
	}
	in.checkTime(L)
	if iv.stateCtx == nil {
		iv.stateCtx, iv.stateStop = context.WithDeadline(iv.ctx, iv.deadline)
	}
	var data []byte
	var size int64
	var err error
	if versioned {
		data, size, err = iv.readVersion(bv, bucket, name, int64(off), n)
	} else {
		data, size, err = br.ReadBlob(iv.stateCtx, bucket, name, int64(off), int(n))
	}
	if err != nil {
		if iv.stateCtx.Err() != nil {
			in.raise(L, fmt.Errorf("%w: blob.read(%s, %s): %w", ErrTimeout, quoteCut(bucket), quoteCut(name), err))
		}
		L.RaiseError("blob.read(%s, %s): %s", quoteCut(bucket), quoteCut(name), err.Error())
	}
	if int64(len(data)) > n {
		data = data[:n]
	}
	m := int64(len(data))
	iv.res.Cost.BytesIn += m
	if m <= smallChunk {
		in.alloc(L, m)
		L.Push(lua.LString(string(data)))
	} else {
		// The string shares the chunk's memory (never written again), so
		// the weak pointer sees exactly when the string is gone.
		iv.blobs.chunks = append(iv.blobs.chunks, blobChunk{p: weak.Make(&data[0]), n: m})
		iv.blobs.live += m
		iv.blobs.sinceGC += m
		in.checkMem(L)
		in.charge(L, 1+m/64)
		L.Push(lua.LString(unsafe.String(&data[0], len(data))))
	}
	L.Push(lua.LNumber(size))
	return 2
}

func (in *instance) blobWrite(L *lua.LState) int {
	bucket, name := checkBlobArgs(L)
	data := L.CheckString(3)
	ctype := L.OptString(4, "application/octet-stream")
	if len(ctype) > 256 {
		L.ArgError(4, "content type longer than 256 bytes")
	}
	if i := strings.IndexFunc(ctype, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }); i >= 0 {
		// It becomes an HTTP header when the blob is read or synced.
		L.ArgError(4, fmt.Sprintf("content type contains a control character (byte %d)", i))
	}
	size := len(bucket) + len(name) + len(data)
	if size > in.inv.limits.MaxEffectBytes {
		in.raise(L, fmt.Errorf("%w (blob.write of %d bytes, max %d)", ErrEffectTooLarge, len(data), in.inv.limits.MaxEffectBytes))
	}
	// Accounted as an effect's bytes (bounded by max_effect_bytes).
	in.addEffect(L, Effect{Kind: EffectBlobWrite, Bucket: bucket, Name: name, ContentType: ctype, Payload: []byte(data)}, size)
	return 0
}

func (in *instance) blobDelete(L *lua.LState) int {
	bucket, name := checkBlobArgs(L)
	in.addEffect(L, Effect{Kind: EffectBlobDelete, Bucket: bucket, Name: name}, len(bucket)+len(name))
	return 0
}

package luavm

import (
	"bytes"
	"context"
	"sync"
	"testing"
)

// versionedBlobs is a BlobVersionReader over in-memory blobs whose
// content the test replaces; it counts the versions opened and closed.
type versionedBlobs struct {
	*MemState
	mu             sync.Mutex
	data           map[string][]byte
	opened, closed int
	afterOpen      func() // called after each open (the test replaces the blob)
}

type memVersion struct {
	b *versionedBlobs
	r *bytes.Reader
}

func (v *memVersion) ReadAt(p []byte, off int64) (int, error) { return v.r.ReadAt(p, off) }
func (v *memVersion) Size() int64                             { return v.r.Size() }
func (v *memVersion) Close() error {
	v.b.mu.Lock()
	v.b.closed++
	v.b.mu.Unlock()
	return nil
}

func (b *versionedBlobs) OpenBlobVersion(_ context.Context, bucket, name string) (BlobVersion, error) {
	b.mu.Lock()
	v := &memVersion{b: b, r: bytes.NewReader(b.data[bucket+"/"+name])}
	b.opened++
	after := b.afterOpen
	b.mu.Unlock()
	if after != nil {
		after()
	}
	return v, nil
}

// ReadBlob looks the name up on every read (what blob.read did before).
func (b *versionedBlobs) ReadBlob(_ context.Context, bucket, name string, off int64, n int) ([]byte, int64, error) {
	b.mu.Lock()
	d := b.data[bucket+"/"+name]
	first := b.opened == 0
	b.opened++
	after := b.afterOpen
	b.mu.Unlock()
	if first && after != nil {
		defer after()
	}
	if off >= int64(len(d)) {
		return []byte{}, int64(len(d)), nil
	}
	return append([]byte(nil), d[off:min(int64(len(d)), off+int64(n))]...), int64(len(d)), nil
}

func (b *versionedBlobs) set(key string, data []byte) {
	b.mu.Lock()
	b.data[key] = data
	b.mu.Unlock()
}

// Every blob.read of one invocation reads the version current at its
// first read, even when the blob is replaced between two chunks; the next
// invocation reads the new version; versions are closed when the
// invocation ends. Before, each chunk looked the name up again and a
// function hashing a blob in chunks could mix two versions.
func TestBlobReadKeepsOneVersionPerInvocation(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "chunked", `
function handle(event, ctx)
  local parts, off = {}, 0
  while true do
    local chunk = blob.read("photos", "a.bin", off, 4)
    if #chunk == 0 then break end
    parts[#parts + 1] = chunk
    off = off + #chunk
  end
  return {content = table.concat(parts)}
end`)
	st := &versionedBlobs{MemState: MemoryState(), data: map[string][]byte{"photos/a.bin": []byte("AAAAAAAAAAAA")}}
	st.afterOpen = func() { st.set("photos/a.bin", []byte("BBBBBBBBBBBBBBBB")) } // replaced right after the first read
	res, err := rt.Invoke(context.Background(), "chunked", &Event{ID: "e1"}, st)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Value) != `{"content":"AAAAAAAAAAAA"}` {
		t.Fatalf("first invocation read %s, want the version of its first read only", res.Value)
	}
	st.afterOpen = nil
	res, err = rt.Invoke(context.Background(), "chunked", &Event{ID: "e2"}, st)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Value) != `{"content":"BBBBBBBBBBBBBBBB"}` {
		t.Fatalf("second invocation read %s, want the new version", res.Value)
	}
	if st.opened != 2 || st.closed != 2 {
		t.Fatalf("versions opened %d, closed %d; want one per invocation, all closed", st.opened, st.closed)
	}
}

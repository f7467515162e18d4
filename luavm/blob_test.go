package luavm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

// chunkedSrc reads a whole blob in 1 MiB chunks, hashing each, dropping
// each before the next read.
const chunkedSrc = `
function handle(event, ctx)
  local off, n, hashes = 0, 0, {}
  while true do
    local chunk, size = blob.read("photos", "big.bin", off, 1048576)
    if #chunk == 0 then break end
    hashes[#hashes + 1] = crypto.sha256(chunk)
    off = off + #chunk
    n = n + 1
  end
  return {bytes = off, chunks = n, digest = crypto.sha256(table.concat(hashes))}
end`

// hoardSrc keeps every chunk: the memory cap must stop it.
const hoardSrc = `
function handle(event, ctx)
  local keep, off = {}, 0
  while true do
    local chunk = blob.read("photos", "big.bin", off)
    if #chunk == 0 then break end
    keep[#keep + 1] = chunk
    off = off + #chunk
  end
  return {kept = #keep}
end`

func bigBlob(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + i>>10)
	}
	return b
}

func TestBlobReadInChunksUnderMemoryCap(t *testing.T) {
	rt := newTestRuntime(t)
	limits := Limits{MaxMemory: 8 << 20, Timeout: 20 * time.Second, MaxSteps: 50_000_000}
	deploy(t, rt, "chunked", chunkedSrc, func(s *Spec) { s.Limits = limits })
	deploy(t, rt, "hoard", hoardSrc, func(s *Spec) { s.Limits = limits })
	st := MemoryState()
	data := bigBlob(20 << 20)
	st.SetBlob("photos", "big.bin", data)
	res, err := rt.Invoke(context.Background(), "chunked", &Event{ID: "e"}, st)
	if err != nil {
		t.Fatalf("chunked read of 20 MiB under an 8 MiB cap: %v", err)
	}
	var hashes strings.Builder
	for off := 0; off < len(data); off += 1 << 20 {
		s := sha256.Sum256(data[off:min(off+1<<20, len(data))])
		hashes.WriteString(hex.EncodeToString(s[:]))
	}
	d := sha256.Sum256([]byte(hashes.String()))
	want := `{"bytes":20971520,"chunks":20,"digest":"` + hex.EncodeToString(d[:]) + `"}`
	if string(res.Value) != want {
		t.Fatalf("result %s, want %s", res.Value, want)
	}
	if res.Cost.PeakMemory > limits.MaxMemory {
		t.Fatalf("peak %d over the cap", res.Cost.PeakMemory)
	}
	if res.Cost.BytesIn < 20<<20 {
		t.Fatalf("bytes in %d", res.Cost.BytesIn)
	}
	// Keeping the chunks breaches the cap.
	_, err = rt.Invoke(context.Background(), "hoard", &Event{ID: "e"}, st)
	if !errors.Is(err, ErrMemory) {
		t.Fatalf("hoarding chunks: %v, want ErrMemory", err)
	}
}

func TestBlobHostile(t *testing.T) {
	rt := newTestRuntime(t)
	st := MemoryState()
	st.SetBlob("photos", "a.txt", []byte("hello blob"))
	for _, tc := range []struct {
		name, src string
		want      string // substring of the error, or the result when ok
		ok        bool
	}{
		{"huge length is capped", `function handle() local s, n = blob.read("photos", "a.txt", 0, 1e15) return {len = #s, size = n} end`, `{"len":10,"size":10}`, true},
		{"past the end", `function handle() local s = blob.read("photos", "a.txt", 1e9) return tostring(#s) end`, `0`, true},
		{"negative offset", `function handle() return blob.read("photos", "a.txt", -1, 4) end`, "offset must be a non-negative integer", false},
		{"fractional offset", `function handle() return blob.read("photos", "a.txt", 0.5, 4) end`, "offset must be a non-negative integer", false},
		{"negative length", `function handle() return blob.read("photos", "a.txt", 0, -4) end`, "length must be a non-negative integer", false},
		{"missing blob", `function handle() return blob.read("photos", "nope", 0, 4) end`, "not found", false},
		{"missing blob under pcall", `function handle() local ok, err = pcall(blob.read, "photos", "nope", 0, 4) return tostring(ok) end`, `false`, true},
		{"empty bucket", `function handle() return blob.read("", "a", 0, 4) end`, "bucket must be", false},
		{"write too large", `function handle() blob.write("photos", "x", string.rep("x", 300 * 1024)) end`, "effect", false},
		// The content type is sent back as an HTTP header (downloads, sync):
		// a control character in it made the blob unsendable to an http target.
		{"content type with a newline", `function handle() blob.write("photos", "x", "d", "text/plain\nX-Injected: 1") end`, "content type contains a control character (byte 10)", false},
		{"content type with DEL", `function handle() blob.write("photos", "x", "d", "a\127") end`, "control character", false},
		{"content type with a tab", `function handle() blob.write("photos", "x", "d", "text/plain;\tcharset=utf-8") return "1" end`, `1`, true},
		{"write and delete are effects", `function handle() blob.write("photos", "x.txt", "data", "text/plain") blob.delete("photos", "y") return "1" end`, `1`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.NewReplacer(" ", "_").Replace(tc.name)
			deploy(t, rt, name, tc.src)
			res, err := rt.Invoke(context.Background(), name, &Event{ID: "e"}, st)
			if tc.ok {
				if err != nil || string(res.Value) != tc.want {
					t.Fatalf("got %s, %v; want %s", res.Value, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// Effects carry the blob.
	deploy(t, rt, "writer", `function handle() blob.write("photos", "x.txt", "data", "text/plain") blob.delete("photos", "y") end`)
	res, err := rt.Invoke(context.Background(), "writer", &Event{ID: "e"}, st)
	if err != nil || len(res.Effects) != 2 {
		t.Fatalf("%v %+v", err, res)
	}
	w, d := res.Effects[0], res.Effects[1]
	if w.Kind != EffectBlobWrite || w.Bucket != "photos" || w.Name != "x.txt" || string(w.Payload) != "data" || w.ContentType != "text/plain" ||
		d.Kind != EffectBlobDelete || d.Name != "y" {
		t.Fatalf("effects %+v", res.Effects)
	}
	// Without a BlobReader, blob.read says so.
	deploy(t, rt, "noblobs", `function handle() return blob.read("photos", "a.txt", 0, 4) end`)
	if _, err := rt.Invoke(context.Background(), "noblobs", &Event{ID: "e"}, nil); err == nil || !strings.Contains(err.Error(), "blobs are not available") {
		t.Fatalf("without a blob reader: %v", err)
	}
}

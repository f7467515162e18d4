package apiserver_test

import (
	"bytes"
	"net"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Stalled opens an HTTP/2 connection (prior knowledge) to addr whose
// stream windows are 0 and never opened: the server can send no byte of a
// response body.
func h2Stalled(t *testing.T, addr string) *http2.Framer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	return fr
}

// h2Headers is a header block of fields.
func h2Headers(fields ...[2]string) []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return hb.Bytes()
}

// h2AwaitHeaders reads fr until the response headers of n streams arrived
// (each handler ran and is writing its response), answering the server's
// settings and failing on a reset or GOAWAY before; then it keeps the
// connection serviced without ever granting a window, counting the streams
// the server resets in resets (nil: not counted).
func h2AwaitHeaders(t *testing.T, fr *http2.Framer, n int, resets *atomic.Int32) {
	t.Helper()
	for headers := 0; headers < n; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			headers++
		case *http2.RSTStreamFrame:
			t.Fatalf("stream %d reset before its headers: %v", f.StreamID, f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("goaway: %v", f.ErrCode)
		}
	}
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.RSTStreamFrame); ok && resets != nil {
				resets.Add(1)
			}
		}
	}()
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

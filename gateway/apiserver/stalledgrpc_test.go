package apiserver_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// stalledGRPC opens an HTTP/2 connection whose stream windows are 0 and
// never opened, makes n gRPC calls of method with req, and returns once
// the response headers of all arrived (each handler is writing its
// response). resets counts the streams the server resets afterwards.
func stalledGRPC(t *testing.T, addr, method string, req proto.Message, n int, resets *atomic.Int32) {
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
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	frame := append([]byte{0}, binary.BigEndian.AppendUint32(nil, uint32(len(msg)))...)
	frame = append(frame, msg...)
	for i := 0; i < n; i++ {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", method},
			{"content-type", "application/grpc"}, {"te", "trailers"}, {"authorization", "Bearer " + readToken}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, true, frame); err != nil {
			t.Fatal(err)
		}
	}
	headers := 0
	for headers < n {
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
			if _, ok := f.(*http2.RSTStreamFrame); ok {
				resets.Add(1)
			}
		}
	}()
}

// docs/api.md: "every response ... must be written within a minute of its
// first byte (its stream or connection is cut otherwise): a client that
// never reads its answers cannot keep the budget, the handler or the
// response in memory". A gRPC call on the same port (read scope) gets no
// deadline: a client that never opens its window keeps each handler and
// its whole response (here GetFunction's 100 KB source; a records page
// is up to 1 MiB) for ever.
func TestStalledGRPCResponseIsCutOff(t *testing.T) {
	apiserver.SetResponseWriteTimeout(t, 500*time.Millisecond)
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	src := "-- " + strings.Repeat("p", 100_000) + "\nfunction handle(event, ctx) return 1 end\n"
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big", "source": src,
		"triggers": []obj{{"http": obj{"methods": []string{"GET"}}}}}, nil)
	addr := strings.TrimPrefix(e.base, "http://")
	before := heapInUse()
	var resets atomic.Int32
	const conns, streams = 2, 16
	for i := 0; i < conns; i++ {
		stalledGRPC(t, addr, v1.FunctionService_GetFunction_FullMethodName, &v1.GetFunctionRequest{Name: "big"}, streams, &resets)
	}
	t.Logf("heap held by %d stalled gRPC responses: %d MB", conns*streams, (int64(heapInUse())-int64(before))>>20)
	deadline := time.Now().Add(5 * time.Second)
	for resets.Load() < conns*streams && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := resets.Load(); got < conns*streams {
		t.Fatalf("%d of %d stalled gRPC responses reset 5 s after the write deadline (500 ms); heap still held: %d MB",
			got, conns*streams, (int64(heapInUse())-int64(before))>>20)
	}
}

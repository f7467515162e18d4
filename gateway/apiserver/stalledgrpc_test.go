package apiserver_test

import (
	"encoding/binary"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/proto"
)

// stalledGRPC opens an HTTP/2 connection whose stream windows are 0 and
// never opened, makes n gRPC calls of method with req, and returns once
// the response headers of all arrived (each handler is writing its
// response). resets counts the streams the server resets afterwards.
func stalledGRPC(t *testing.T, addr, method string, req proto.Message, n int, resets *atomic.Int32) {
	t.Helper()
	fr := h2Stalled(t, addr)
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	frame := append([]byte{0}, binary.BigEndian.AppendUint32(nil, uint32(len(msg)))...)
	frame = append(frame, msg...)
	for i := 0; i < n; i++ {
		block := h2Headers([2]string{":method", "POST"}, [2]string{":scheme", "http"}, [2]string{":authority", "x"}, [2]string{":path", method},
			[2]string{"content-type", "application/grpc"}, [2]string{"te", "trailers"}, [2]string{"authorization", "Bearer " + readToken})
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, true, frame); err != nil {
			t.Fatal(err)
		}
	}
	h2AwaitHeaders(t, fr, n, resets)
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

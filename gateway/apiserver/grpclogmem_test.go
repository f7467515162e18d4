package apiserver_test

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/emptypb"
)

// A function's log fields are at most 8 KiB of JSON and a log page at most
// 1 MiB of stored lines, but a gRPC ListLogs turned the fields into
// google.protobuf.Struct messages: an empty object ("{}", 3 bytes with
// its comma) became a Value, a Struct and a map. A read-token client with
// one HTTP/2 connection and 16 concurrent ListLogs calls (the per-connection
// stream bound) made the gateway hold many times the 512 MB of a Pi Zero.
func TestGRPCListLogsMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "noisy",
		"source": `function handle(event, ctx)
  local t = {}
  for i = 1, 2700 do t[i] = {} end
  for j = 1, 100 do log.info("", {f = t}) end
  return nil
end`}, nil)
	for i := 0; i < 2; i++ {
		e.mustCall(200, "POST", "/v1/functions/noisy:invoke", adminToken, obj{"dry_run": false}, nil)
	}
	code, out := e.call("GET", "/v1/logs?function=noisy&limit=1", readToken, nil)
	t.Logf("one line over REST: %d, %d bytes: %.200s", code, len(out), out)
	conn, _ := grpcConn(t, e)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+readToken)
	var lines atomic.Int64
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The answer is read as unknown bytes (an Empty): only
				// the server's messages count.
				var r emptypb.Empty
				if err := conn.Invoke(ctx, v1.LogService_ListLogs_FullMethodName, &v1.ListLogsRequest{Function: "noisy", Limit: 10000}, &r); err != nil {
					t.Error(err)
					return
				}
				lines.Add(int64(countField(r.ProtoReflect().GetUnknown(), 1)))
			}()
		}
		wg.Wait()
	})
	t.Logf("16 concurrent gRPC ListLogs (%d lines in all): heap in use grew by up to %d MiB", lines.Load(), grown>>20)
	if grown > 256<<20 {
		t.Fatalf("16 gRPC ListLogs calls of one read-token connection took %d MiB of heap (pages of 1 MiB of stored lines)", grown>>20)
	}
}

// peakHeapGrowth runs f and returns how far the heap in use rose above
// where it was before, at its highest while f ran (sampled every 2 ms).
func peakHeapGrowth(f func()) int64 {
	before := heapInUse()
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-sampled
	return int64(peak.Load()) - int64(before)
}

// countField counts the fields numbered num in the wire bytes b.
func countField(b []byte, num protowire.Number) int {
	n := 0
	for len(b) > 0 {
		f, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return -1
		}
		b = b[l:]
		if f == num {
			n++
		}
		if l = protowire.ConsumeFieldValue(f, typ, b); l < 0 {
			return -1
		}
		b = b[l:]
	}
	return n
}

// A page of records (1 MiB of stored JSON at most) was up to ~90 MB of
// Struct and Value messages for a gRPC QueryRecords, bounded only by two
// native answers built at once; their protobuf encoding is at most 5.5
// times the JSON. 16 concurrent calls of one read-token connection, on
// records of small objects.
func TestGRPCQueryRecordsMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	bigRecords(t, e)
	conn, _ := grpcConn(t, e)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+readToken)
	var recs, bytes atomic.Int64
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r emptypb.Empty // only the server's messages count
				if err := conn.Invoke(ctx, v1.RecordService_QueryRecords_FullMethodName, &v1.QueryRecordsRequest{Stream: "objs", Limit: 1000}, &r); err != nil {
					t.Error(err)
					return
				}
				recs.Add(int64(countField(r.ProtoReflect().GetUnknown(), 1)))
				bytes.Add(int64(len(r.ProtoReflect().GetUnknown())))
			}()
		}
		wg.Wait()
	})
	t.Logf("16 concurrent gRPC QueryRecords (%d records, %d MiB of answers): heap in use grew by up to %d MiB", recs.Load(), bytes.Load()>>20, grown>>20)
	if recs.Load() != 16*16 {
		t.Fatalf("%d records read, want 16 pages of 16", recs.Load())
	}
	if grown > 128<<20 {
		t.Fatalf("16 gRPC QueryRecords of one read-token connection took %d MiB of heap (pages of ~1 MiB of stored records)", grown>>20)
	}
}

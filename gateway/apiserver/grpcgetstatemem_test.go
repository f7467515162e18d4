package apiserver_test

import (
	"strings"
	"sync"
	"testing"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// A state value of small objects (~210 KB, under the 1 MiB value limit)
// becomes tens of MB of Value and Struct messages for a gRPC GetState. Two
// native answers at once is the documented bound (docs/api.md: "the gateway
// answers at most two unary calls of native gRPC clients at once"); since
// the slot is taken only in ListLogs, QueryRecords and ListState, 32
// concurrent GetState calls of two read-token connections (16 streams
// each) build all their answers at once. Before 770cc53 the same calls
// grew the heap by 66-82 MiB.
func TestGRPCGetStateMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle(event, ctx) return nil end"}, nil)
	body := "[" + strings.Repeat("{},", 70000) + "{}]"
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/big", body); code != 200 {
		t.Fatalf("PUT state: %d %.300s", code, out)
	}
	conn, _ := grpcConn(t, e)
	conn2, _ := grpcConn(t, e)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+readToken)
	// The answers are read as unknown bytes (an Empty): only the server's
	// messages count.
	get := func() error {
		return conn.Invoke(ctx, v1.StateService_GetState_FullMethodName, &v1.GetStateRequest{Function: "a", Key: "big"}, &emptypb.Empty{})
	}
	get2 := func() error {
		return conn2.Invoke(ctx, v1.StateService_GetState_FullMethodName, &v1.GetStateRequest{Function: "a", Key: "big"}, &emptypb.Empty{})
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := 0; i < 32; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				call := get
				if i%2 == 1 {
					call = get2
				}
				if err := call(); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	})
	t.Logf("32 concurrent gRPC GetState of a %d-byte value: heap in use grew by up to %d MiB", len(body), grown>>20)
	if grown > 160<<20 {
		t.Fatalf("32 gRPC GetState calls of two read-token connections took %d MiB of heap (one %d KB state value)", grown>>20, len(body)>>10)
	}
}

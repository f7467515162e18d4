package apiserver_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

// benchDaemon starts a daemon with one function and 100 records.
func benchDaemon(b *testing.B) *env {
	e := startDaemon(b, daemonConfig(b.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f", "source": telemetrySource(1), "manifest": telemetryManifest}, nil)
	for i := 0; i < 100; i++ {
		e.mustCall(200, "POST", "/v1/functions/f:invoke", adminToken, obj{"event": obj{"payload_text": `{"temp": 1}`}, "dry_run": false}, nil)
	}
	return e
}

// BenchmarkRESTQueryRecords is one REST page of 10 records over loopback
// (token check, gateway, in-memory gRPC hop, store query, JSON).
func BenchmarkRESTQueryRecords(b *testing.B) {
	e := benchDaemon(b)
	client := &http.Client{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, _ := http.NewRequest("GET", e.base+"/v1/records?function=f&limit=10", nil)
		req.Header.Set("Authorization", "Bearer "+readToken)
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("%v %v", resp, err)
		}
		resp.Body.Close()
	}
}

// BenchmarkGRPCQueryRecords is the same page over gRPC (h2c) on the same port.
func BenchmarkGRPCQueryRecords(b *testing.B) {
	e := benchDaemon(b)
	conn, err := grpc.NewClient(strings.TrimPrefix(e.base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewRecordServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+readToken)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.QueryRecords(ctx, &v1.QueryRecordsRequest{Function: "f", Limit: 10}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRESTInvoke is a dry-run invoke over REST.
func BenchmarkRESTInvoke(b *testing.B) {
	e := benchDaemon(b)
	client := &http.Client{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, _ := http.NewRequest("POST", e.base+"/v1/functions/f:invoke", strings.NewReader(`{"event": {"payload_text": "{\"temp\": 1}"}}`))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("%v %v", resp, err)
		}
		resp.Body.Close()
	}
}

// BenchmarkRESTGetStateValue is a REST GET of a 100 KB state value of
// small objects ({"a":1} 12,500 times): B/op is what the daemon and the
// client allocate for it.
func BenchmarkRESTGetStateValue(b *testing.B) {
	e := startDaemon(b, daemonConfig(b.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle(event, ctx) return nil end"}, nil)
	val := "[" + strings.Repeat(`{"a":1},`, 12_499) + `{"a":1}]`
	e.mustCall(200, "PUT", "/v1/functions/a/state/v", adminToken, val, nil)
	client := &http.Client{}
	b.SetBytes(int64(len(val)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, _ := http.NewRequest("GET", e.base+"/v1/functions/a/state/v", nil)
		req.Header.Set("Authorization", "Bearer "+readToken)
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("%v %v", resp, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

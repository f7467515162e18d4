package apiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

// rawCall is a REST call without the OpenAPI check (which parses the whole
// response): status and body.
func (e *env) rawCall(method, path, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// stateText is the value of a state key as the REST API writes it.
func (e *env) stateText(fn, key string) string {
	e.t.Helper()
	code, out := e.rawCall("GET", "/v1/functions/"+fn+"/state/"+key, "")
	if code != 200 {
		e.t.Fatalf("GET state %s: %d %s", key, code, out)
	}
	var entry struct{ Value json.RawMessage }
	if err := json.Unmarshal(out, &entry); err != nil {
		e.t.Fatalf("%s: %v", out, err)
	}
	return string(entry.Value)
}

func grpcConn(t *testing.T, e *env) (*grpc.ClientConn, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(e.base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+adminToken)
}

// TestStateValuesPassThrough: a state value written over REST is stored
// and read back as sent (white space aside): numbers keep their digits
// (they were rounded through a double), a large array of numbers is
// accepted (its protobuf form was 5.5 times the body: refused as a gRPC
// message over the limit), and gRPC clients still get and send the same
// values as google.protobuf.Value.
func TestStateValuesPassThrough(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle(event, ctx) return nil end"}, nil)

	const sent = `{"n": 12345678901234567890, "f": 1.50, "s": "\u00e9<&>", "l": [1, 2e3]}`
	const stored = `{"n":12345678901234567890,"f":1.50,"s":"\u00e9<&>","l":[1,2e3]}`
	code, out := e.rawCall("PUT", "/v1/functions/a/state/exact", sent)
	if code != 200 || !bytes.Contains(out, []byte(stored)) {
		t.Fatalf("PUT: %d %s", code, out)
	}
	if got := e.stateText("a", "exact"); got != stored {
		t.Errorf("GET: %s, want %s", got, stored)
	}

	big := "[" + strings.Repeat("7,", 400_000) + "7]"
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/big", big); code != 200 {
		t.Fatalf("PUT of %d bytes of numbers: %d %.200s", len(big), code, out)
	}
	if got := e.stateText("a", "big"); got != big {
		t.Errorf("GET big: %d bytes, want %d", len(got), len(big))
	}
	code, out = e.rawCall("GET", "/v1/functions/a/state", "")
	var list struct {
		Entries []struct {
			Key   string
			Value json.RawMessage
		}
	}
	if err := json.Unmarshal(out, &list); code != 200 || err != nil || len(list.Entries) != 2 ||
		string(list.Entries[0].Value) != big || string(list.Entries[1].Value) != stored {
		t.Fatalf("list: %d %v %.300s", code, err, out)
	}

	// gRPC: the same values as structpb, and structpb values written.
	conn, ctx := grpcConn(t, e)
	st := v1.NewStateServiceClient(conn)
	got, err := st.GetState(ctx, &v1.GetStateRequest{Function: "a", Key: "exact"})
	if err != nil {
		t.Fatal(err)
	}
	want := &structpb.Value{}
	if err := protojson.Unmarshal([]byte(stored), want); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.Value, want) || len(got.Value.ProtoReflect().GetUnknown()) != 0 {
		t.Errorf("gRPC value %v, want %v", got.Value, want)
	}
	if got, err := st.GetState(ctx, &v1.GetStateRequest{Function: "a", Key: "big"}); err != nil || len(got.Value.GetListValue().GetValues()) != 400_001 {
		t.Errorf("gRPC big value: %v", err)
	}
	if _, err := st.PutState(ctx, &v1.PutStateRequest{Function: "a", Key: "g", Value: structpb.NewListValue(&structpb.ListValue{
		Values: []*structpb.Value{structpb.NewNumberValue(1.5), structpb.NewStringValue("x")}})}); err != nil {
		t.Fatal(err)
	}
	if got := e.stateText("a", "g"); got != `[1.5,"x"]` {
		t.Errorf("value put over gRPC: %s", got)
	}
	// A gRPC client sending the gateway's field gets no say.
	smuggled := &structpb.Value{}
	smuggled.ProtoReflect().SetUnknown(protoRaw(`{"a":1,"a":2}`))
	if _, err := st.PutState(ctx, &v1.PutStateRequest{Function: "a", Key: "g", Value: smuggled}); err == nil || !strings.Contains(err.Error(), "a value is required") {
		t.Errorf("raw value from a gRPC client: %v", err)
	}
}

// protoRaw is the unknown field the REST gateway uses for JSON text
// (field 536870911, length-delimited).
func protoRaw(s string) []byte {
	b := []byte{0xfa, 0xff, 0xff, 0xff, 0x0f, byte(len(s))}
	return append(b, s...)
}

// TestStateValueBadInput: a body that is not one JSON value as a
// google.protobuf.Value takes it is refused with 400 and a message saying
// where, and the stored value stays.
func TestStateValueBadInput(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle(event, ctx) return nil end"}, nil)
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/k", `{"keep":true}`); code != 200 {
		t.Fatalf("PUT: %d %s", code, out)
	}
	for _, c := range []struct{ body, want string }{
		{`{"a":1,"a":2}`, `the name \"a\" is repeated`},
		{`{"a":1,"\u0061":2}`, `repeated`},
		{`"\ud800"`, "lone high surrogate"},
		{`1e400`, "out of range"},
		{`[1,]`, "invalid JSON at byte 3"},
		{`{"a":1} x`, "after the value"},
		{`NaN`, "invalid JSON at byte 0"},
		{"\"\xff\"", "UTF-8"},
		{`"unterminated`, "unterminated string"},
		{strings.Repeat(`{"a":`, 3001) + "1" + strings.Repeat("}", 3001), "nested deeper than 3000 levels"},
		{`   `, "a value is required"},
	} {
		code, out := e.rawCall("PUT", "/v1/functions/a/state/k", c.body)
		if code != 400 || !strings.Contains(string(out), c.want) {
			t.Errorf("PUT %.40q: %d %s, want 400 with %q", c.body, code, out, c.want)
		}
	}
	if got := e.stateText("a", "k"); got != `{"keep":true}` {
		t.Errorf("after the refusals: %s", got)
	}

	// What is accepted, gRPC clients with default settings can read: 3,000
	// levels of objects are 9,000 nested messages (10,000 is grpc-go's
	// limit; 3,333 levels were accepted over REST, and then GetState and
	// every ListState page holding the key failed with Internal).
	deep := strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000)
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/deep", deep); code != 200 {
		t.Fatalf("PUT 3,000 levels: %d %.200s", code, out)
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(e.base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+readToken)
	if _, err := v1.NewStateServiceClient(conn).GetState(ctx, &v1.GetStateRequest{Function: "a", Key: "deep"}); err != nil {
		t.Errorf("gRPC GetState of 3,000 levels: %v", err)
	}
	if _, err := v1.NewStateServiceClient(conn).ListState(ctx, &v1.ListStateRequest{Function: "a"}); err != nil {
		t.Errorf("gRPC ListState: %v", err)
	}

	// null is a value (GET leaves it out, as before).
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/n", " null "); code != 200 || !strings.Contains(string(out), `"value":null`) {
		t.Errorf("PUT null: %d %s", code, out)
	}
}

// TestRepeatedNamesReadAlike: stored text with a name twice in an object
// is not a google.protobuf.Value (function JSON encoders before 2026-11-29
// wrote one for a table with the keys 5 and "5"): both faces give it as a
// string (REST passed the object through while gRPC got a string).
func TestRepeatedNamesReadAlike(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f", "source": "function handle(event, ctx) return nil end"}, nil)
	const text = `{"5":2,"5":2}`
	if err := e.d.Store().PutState(context.Background(), "f", "k", []byte(text)); err != nil {
		t.Fatal(err)
	}
	conn, ctx := grpcConn(t, e)
	got, err := v1.NewStateServiceClient(conn).GetState(ctx, &v1.GetStateRequest{Function: "f", Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if rest := e.stateText("f", "k"); got.Value.GetStringValue() != text || rest != strconvQuote(text) {
		t.Errorf("state over gRPC %v, over REST %s, want the string %q", got.Value, rest, text)
	}
	// A function cannot write one any more.
	src := `function handle(event, ctx) return {[5] = 1, ["5"] = 2} end`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "g", "source": src}, nil)
	code, out := e.rawCall("POST", "/v1/functions/g:invoke", `{}`)
	if code != 200 || !strings.Contains(string(out), "both the name") {
		t.Errorf("invoke: %d %s", code, out)
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestStoredJSONMemoryPerCall bounds what one REST read of a large stored
// value allocates: a GET of a 320 KB value of small objects allocated 60
// MiB (about 200 times its size) when stored JSON went through
// google.protobuf.Value twice (and a value of 880 KB could not be written
// over REST at all); it passes through as text now, about 10 times its
// size with the test's HTTP client.
func TestStoredJSONMemoryPerCall(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle(event, ctx) return nil end"}, nil)
	val := "[" + strings.Repeat(`{"a":1},`, 110_000) + `{"a":1}]`
	if code, out := e.rawCall("PUT", "/v1/functions/a/state/objs", val); code != 200 {
		t.Fatalf("PUT: %d %.200s", code, out)
	}
	for _, path := range []string{"/v1/functions/a/state/objs", "/v1/functions/a/state"} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		code, out := e.rawCall("GET", path, "")
		runtime.ReadMemStats(&after)
		if code != 200 || len(out) < len(val) {
			t.Fatalf("GET %s: %d, %d bytes", path, code, len(out))
		}
		// The daemon's other goroutines allocate a little meanwhile.
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("GET %s: %d bytes stored, %d allocated (%.1f x)", path, len(val), alloc, float64(alloc)/float64(len(val)))
		if alloc > 16*uint64(len(val)) {
			t.Errorf("GET %s of a %d-byte value allocated %d bytes (%.0f x)", path, len(val), alloc, float64(alloc)/float64(len(val)))
		}
	}
}

// TestFunctionJSONOverRESTAndGRPC: what a function returns, emits, sets
// and logs reads the same over REST (stored text passed through) as over
// gRPC (google.protobuf.Value and Struct), in the invoke response, the
// records and the logs.
func TestFunctionJSONOverRESTAndGRPC(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	src := `
function handle(event, ctx)
  local d = json.decode(event.payload)
  log.info("seen", {n = d.n, tags = {"a", "b"}, nested = {x = 1.5, s = "<é>"}})
  emit("out", {n = d.n, list = {1, 2, 3}, s = "é<&>"})
  state.set("k", {n = d.n})
  return {ok = true, n = d.n, empty = {}}
end`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "f", "source": src}, nil)
	code, out := e.rawCall("POST", "/v1/functions/f:invoke", `{"event": {"payload_text": "{\"n\": 42.25}"}, "dry_run": false}`)
	if code != 200 {
		t.Fatalf("invoke: %d %s", code, out)
	}
	var inv v1.InvokeFunctionResponse
	if err := protojson.Unmarshal(out, &inv); err != nil {
		t.Fatalf("invoke response %s: %v", out, err)
	}
	if inv.Result.GetStructValue().GetFields()["n"].GetNumberValue() != 42.25 || len(inv.Effects) != 1 || len(inv.State) != 1 || len(inv.Logs) != 1 ||
		inv.Effects[0].GetEmit().GetRecord().GetStructValue().GetFields()["s"].GetStringValue() != "é<&>" ||
		inv.State[0].GetValue().GetStructValue().GetFields()["n"].GetNumberValue() != 42.25 ||
		inv.Logs[0].GetFields().GetFields()["nested"].GetStructValue().GetFields()["s"].GetStringValue() != "<é>" {
		t.Fatalf("invoke response: %s", out)
	}

	conn, ctx := grpcConn(t, e)
	var restRecs v1.QueryRecordsResponse
	code, out = e.rawCall("GET", "/v1/records?function=f", "")
	if err := protojson.Unmarshal(out, &restRecs); code != 200 || err != nil {
		t.Fatalf("records: %d %v %s", code, err, out)
	}
	grpcRecs, err := v1.NewRecordServiceClient(conn).QueryRecords(ctx, &v1.QueryRecordsRequest{Function: "f"})
	if err != nil {
		t.Fatal(err)
	}
	if len(restRecs.Records) != 2 || !proto.Equal(&restRecs, grpcRecs) { // the result and the emitted record
		t.Errorf("records over REST %v, over gRPC %v", &restRecs, grpcRecs)
	}
	var restLogs v1.ListLogsResponse
	code, out = e.rawCall("GET", "/v1/logs?function=f", "")
	if err := protojson.Unmarshal(out, &restLogs); code != 200 || err != nil {
		t.Fatalf("logs: %d %v %s", code, err, out)
	}
	grpcLogs, err := v1.NewLogServiceClient(conn).ListLogs(ctx, &v1.ListLogsRequest{Function: "f"})
	if err != nil {
		t.Fatal(err)
	}
	if len(restLogs.Lines) != 1 || !proto.Equal(&restLogs, grpcLogs) || restLogs.Lines[0].Fields.GetFields()["tags"].GetListValue() == nil {
		t.Errorf("logs over REST %v, over gRPC %v", &restLogs, grpcLogs)
	}
}

package apiserver

import (
	"bufio"
	"bytes"
	"math"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

func TestTokens(t *testing.T) {
	a, ah, _ := NewToken()
	r, rh, _ := NewToken()
	if a == r || !strings.HasPrefix(a, TokenPrefix) || ah != HashToken(a) || !strings.HasPrefix(ah, "sha256:") || len(ah) != 7+64 {
		t.Fatalf("tokens %q %q", a, ah)
	}
	ts, err := newTokenSet([]Token{{Name: "a", Scope: ScopeAdmin, Hash: ah}, {Name: "r", Scope: ScopeRead, Hash: rh}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		authz string
		need  Scope
		code  codes.Code
		name  string
	}{
		{"Bearer " + a, ScopeAdmin, codes.OK, "a"},
		{"bearer " + a, ScopeRead, codes.OK, "a"},
		{"Bearer " + r, ScopeRead, codes.OK, "r"},
		{"Bearer " + r, ScopeAdmin, codes.PermissionDenied, ""},
		{"", ScopeRead, codes.Unauthenticated, ""},
		{"", ScopeNone, codes.OK, ""},
		{a, ScopeRead, codes.Unauthenticated, ""},
		{"Basic " + a, ScopeRead, codes.Unauthenticated, ""},
		{"Bearer ", ScopeRead, codes.Unauthenticated, ""},
		{"Bearer " + a + "x", ScopeRead, codes.Unauthenticated, ""},
		{"Bearer " + strings.Repeat("x", 10000), ScopeRead, codes.Unauthenticated, ""},
		{"Bearer " + ah, ScopeRead, codes.Unauthenticated, ""}, // the hash is not the token
	} {
		tok, err := ts.authenticate(c.authz, c.need)
		if status.Code(err) != c.code || tok.Name != c.name {
			t.Errorf("%.20q need %v: %v %q, want %v %q", c.authz, c.need, err, tok.Name, c.code, c.name)
		}
	}
	for _, bad := range []Token{{Name: "x", Scope: ScopeRead, Hash: "sha256:00"}, {Name: "x", Scope: ScopeRead, Hash: strings.Repeat("0", 64)},
		{Name: "x", Scope: ScopeNone, Hash: ah}} {
		if _, err := newTokenSet([]Token{bad}); err == nil {
			t.Errorf("token set accepted %+v", bad)
		}
	}
}

func TestHTTPResponse(t *testing.T) {
	for _, c := range []struct {
		kind   luavm.ResultKind
		value  string
		status int
		ctype  string
		body   string
		err    string
	}{
		{luavm.ResultNone, "", 204, "", "", ""},
		{luavm.ResultString, "hi", 200, "text/plain; charset=utf-8", "hi", ""},
		{luavm.ResultJSON, `{"a":1}`, 200, "application/json", `{"a":1}`, ""},
		{luavm.ResultJSON, `[1]`, 200, "application/json", `[1]`, ""},
		{luavm.ResultJSON, `{"status":302,"headers":{"location":"/x"}}`, 302, "", "", ""},
		{luavm.ResultJSON, `{"body":"raw"}`, 200, "text/plain; charset=utf-8", "raw", ""},
		{luavm.ResultJSON, `{"body":{"k":[1,2]},"headers":{"Content-Type":"application/x"}}`, 200, "application/x", `{"k":[1,2]}`, ""},
		{luavm.ResultJSON, `{"status":99}`, 0, "", "", "status must be"},
		{luavm.ResultJSON, `{"status":"200"}`, 0, "", "", "status must be"},
		{luavm.ResultJSON, `{"status":200.5}`, 0, "", "", "status must be"},
		{luavm.ResultJSON, `{"status":200,"extra":1}`, 0, "", "", "unknown response field"},
		{luavm.ResultJSON, `{"headers":{"a b":"x"}}`, 0, "", "", "invalid header"},
		{luavm.ResultJSON, `{"headers":{"x":"a\nb"}}`, 0, "", "", "invalid header"},
		{luavm.ResultJSON, `{"headers":{"x":1}}`, 0, "", "", "headers must map"},
		{luavm.ResultJSON, `{"headers":{}}`, 200, "", "", ""},
		{luavm.ResultJSON, `{"headers":{"content-length":"2"},"body":"hello"}`, 0, "", "", "set by the gateway"},
		{luavm.ResultJSON, `{"headers":{"Transfer-Encoding":"chunked"}}`, 0, "", "", "set by the gateway"},
		{luavm.ResultJSON, `{"status":204,"body":"x"}`, 0, "", "", "status 204 has no body"},
		{luavm.ResultJSON, `{"status":304,"body":{"a":1}}`, 0, "", "", "status 304 has no body"},
		{luavm.ResultJSON, `{"status":204}`, 204, "", "", ""},
		// Names differing in case only: which value went out depended on
		// the map's order.
		{luavm.ResultJSON, `{"headers":{"x-a":"1","X-A":"2"}}`, 0, "", "", `header "X-A" given twice`},
	} {
		r, err := httpResponse(&luavm.Result{Kind: c.kind, Value: []byte(c.value)})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.value, err, c.err)
			}
			continue
		}
		if err != nil || r.status != c.status || r.headers["Content-Type"] != c.ctype || string(r.body) != c.body {
			t.Errorf("%s: %+v %v", c.value, r, err)
		}
	}
}

func TestKnownField(t *testing.T) {
	md := (&v1.QueryRecordsRequest{}).ProtoReflect().Descriptor()
	for key, want := range map[string]bool{"stream": true, "from": true, "from.seconds": true, "nextCursor": false, "cursor": true,
		"from.nope": false, "stream.x": false, "x": false, "": false, "limit[0]": true} {
		if got := knownField(md, key); got != want {
			t.Errorf("knownField(%q) = %v", key, got)
		}
	}
	if !knownField((&v1.InvokeFunctionRequest{}).ProtoReflect().Descriptor(), "event.captures[device]") {
		t.Error("map key path refused")
	}
}

// The structured deploy fields render into a manifest that parses to the
// same triggers, limits and config.
func TestDeployManifest(t *testing.T) {
	cfg, _ := structpb.NewStruct(map[string]any{"unit": "C", "n": 3, "list": []any{"a", true}})
	req := &v1.DeployFunctionRequest{Name: "f", Description: "d: with colon", Stream: "s.x", Sync: []string{"cloud"},
		Triggers: []*v1.Trigger{{Kind: &v1.Trigger_Mqtt{Mqtt: "devices/{device}/t"}}, {Kind: &v1.Trigger_Timer{Timer: "@every 1m"}},
			{Kind: &v1.Trigger_Cron{Cron: "*/5 * * * *"}}, {Kind: &v1.Trigger_Http{Http: &v1.HttpTrigger{Methods: []string{"GET"}}}}},
		Limits: &v1.Limits{Timeout: durationpb.New(1500e6), MaxSteps: 1000, MaxMemoryBytes: 1 << 20, MaxEffects: 5}, Config: cfg}
	y, err := deployManifest(req)
	if err != nil {
		t.Fatal(err)
	}
	m, err := trigger.ParseManifest("f.yaml", y)
	if err != nil {
		t.Fatalf("%s\n%v", y, err)
	}
	if m.Description != "d: with colon" || m.Stream != "s.x" || len(m.Sync) != 1 || len(m.Triggers) != 4 || m.Triggers[3].HTTP.Methods[0] != "GET" ||
		m.Limits.Timeout.Std() != 1500e6 || m.Limits.MaxSteps != 1000 || m.Limits.MaxMemory != 1<<20 || m.Limits.MaxEffects != 5 ||
		m.Config["unit"] != "C" || m.OrderBy != "device" {
		t.Fatalf("manifest %s parsed to %+v", y, m)
	}
	// The chain triggers round-trip too: structured -> manifest -> the
	// function message the API returns.
	chain := &v1.DeployFunctionRequest{Name: "g", Triggers: []*v1.Trigger{{Kind: &v1.Trigger_Stream{Stream: "readings"}},
		{Kind: &v1.Trigger_State{State: &v1.StateTrigger{Function: "counter", Prefix: "temp/"}}},
		{Kind: &v1.Trigger_Upload{Upload: &v1.UploadTrigger{Bucket: "photos", Name: "cam*/*.jpg"}}},
		{Kind: &v1.Trigger_Upload{Upload: &v1.UploadTrigger{Bucket: "docs"}}}}}
	y, err = deployManifest(chain)
	if err != nil {
		t.Fatal(err)
	}
	fm := (&Server{cfg: Config{Functions: noRunning{}}}).functionMessage(store.FunctionRecord{Name: "g", Version: 1, Manifest: y}, false)
	if !proto.Equal(&v1.Function{Triggers: fm.Triggers}, &v1.Function{Triggers: chain.Triggers}) {
		t.Fatalf("manifest %s gave triggers %v, want %v", y, fm.Triggers, chain.Triggers)
	}
	if y, err := deployManifest(&v1.DeployFunctionRequest{Name: "f"}); err != nil || string(y) != "{}\n" {
		t.Fatalf("empty: %q %v", y, err)
	}
	if _, err := deployManifest(&v1.DeployFunctionRequest{Limits: &v1.Limits{Timeout: durationpb.New(-1)}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative timeout: %v", err)
	}
}

var sampleLine = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$`)

func TestWriteMetrics(t *testing.T) {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	WriteMetrics(w, []Metric{
		{Name: "a_total", Help: "A\nhelp \\", Type: "counter", Value: 3},
		{Name: "b", Help: "B", Type: "gauge", Value: 1.5, Labels: [][2]string{{"x", `q"u\o` + "\n"}}},
		{Name: "b", Help: "B", Type: "gauge", Value: math.Inf(1), Labels: [][2]string{{"x", "y"}, {"z", "w"}}},
	})
	w.Flush()
	want := "# HELP a_total A\\nhelp \\\\\n# TYPE a_total counter\na_total 3\n# HELP b B\n# TYPE b gauge\nb{x=\"q\\\"u\\\\o\\n\"} 1.5\nb{x=\"y\",z=\"w\"} +Inf\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if !strings.HasPrefix(l, "# ") && !sampleLine.MatchString(l) {
			t.Errorf("not a sample line: %q", l)
		}
	}
}

// noRunning is a Functions that runs nothing (only Running is called).
type noRunning struct{ Functions }

func (noRunning) Running(string) (RunningFunction, bool) { return RunningFunction{}, false }

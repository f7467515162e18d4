package apiserver_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/apiserver"
)

// route is one REST route of the API.
type route struct {
	method, path, body string
	template           string // path template of the proto ("" for /fn)
	grpcMethod         string // full gRPC method ("" for /fn)
	scope              apiserver.Scope
}

var pathVar = regexp.MustCompile(`\{[^}]*\}`)

// allRoutes lists every REST route from the proto definitions themselves
// (every method of every service of api/moongate/v1) plus /fn: a new
// method cannot be left out of the auth tests.
func allRoutes(t testing.TB) []route {
	t.Helper()
	var out []route
	// Every file of the package, from the registry: a new .proto file is
	// covered without editing this test.
	var files []protoreflect.FileDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("moongate.v1", func(f protoreflect.FileDescriptor) bool {
		files = append(files, f)
		return true
	})
	if len(files) < 8 {
		t.Fatalf("only %d files of moongate.v1 registered", len(files))
	}
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			sd := f.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				full := fmt.Sprintf("/%s/%s", sd.FullName(), md.Name())
				scope, ok := apiserver.MethodScope(full)
				if !ok {
					t.Errorf("method %s has no scope", full)
					continue
				}
				rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					t.Errorf("method %s has no REST route", full)
					continue
				}
				r := route{grpcMethod: full, scope: scope, body: rule.Body}
				switch p := rule.Pattern.(type) {
				case *annotations.HttpRule_Get:
					r.method, r.path = "GET", p.Get
				case *annotations.HttpRule_Post:
					r.method, r.path = "POST", p.Post
				case *annotations.HttpRule_Put:
					r.method, r.path = "PUT", p.Put
				case *annotations.HttpRule_Delete:
					r.method, r.path = "DELETE", p.Delete
				case *annotations.HttpRule_Patch:
					r.method, r.path = "PATCH", p.Patch
				default:
					t.Fatalf("method %s: unexpected rule %v", full, rule)
				}
				r.template = r.path
				r.path = pathVar.ReplaceAllString(r.path, "t")
				switch r.body {
				case "":
				case "*":
					r.body = "{}"
				default:
					r.body = "1" // a body field: a JSON value
				}
				out = append(out, r)
			}
		}
	}
	out = append(out, route{method: "POST", path: "/fn/t/x", body: "{}", scope: apiserver.HTTPFunctionScope})
	return out
}

func TestEveryMethodHasAScope(t *testing.T) {
	routes := allRoutes(t)
	if len(routes) < 22 {
		t.Fatalf("only %d routes", len(routes))
	}
	seen := map[string]bool{}
	for _, r := range routes {
		seen[r.grpcMethod] = true
	}
	for _, m := range apiserver.ScopedMethods() {
		if !seen[m] {
			t.Errorf("scope listed for unknown method %s", m)
		}
	}
}

func (e *env) callRoute(r route, token string) (int, []byte) {
	e.t.Helper()
	if strings.HasSuffix(r.path, ":follow") {
		// A stream that started never ends: take the status, then hang up.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, r.method, e.base+r.path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			e.t.Fatalf("%s: %v", r.path, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == 200 {
			return 200, nil
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	var body any
	if r.body != "" {
		body = r.body
	}
	return e.call(r.method, r.path, token, body)
}

// TestAuthEveryRoute checks every route without a token, with an unknown
// token, with a revoked token (valid before the restart, removed from the
// configuration since), with a read token (403 on admin routes) and with
// the admin token.
func TestAuthEveryRoute(t *testing.T) {
	dataDir := t.TempDir()
	revoked, revokedHash := mustToken()
	a := startDaemon(t, daemonConfigTokens(dataDir, fmt.Sprintf("    - {name: old, scope: admin, hash: %q}\n", revokedHash), ""))
	a.mustCall(200, "GET", "/v1/functions", revoked, nil, nil)
	a.stop()

	e := startDaemon(t, daemonConfig(dataDir, ""))
	for _, r := range allRoutes(t) {
		name := r.method + " " + r.path
		for _, c := range []struct {
			what, token string
			want        int
		}{
			{"no token", "", 401},
			{"unknown token", otherToken, 401},
			{"revoked token", revoked, 401},
			{"malformed token", "x y", 401},
		} {
			code, b := e.callRoute(r, c.token)
			if code != c.want || !strings.Contains(string(b), `"code":16`) {
				t.Errorf("%s with %s: %d %s, want %d UNAUTHENTICATED", name, c.what, code, b, c.want)
			}
		}
		code, b := e.callRoute(r, readToken)
		switch {
		case r.scope == apiserver.ScopeAdmin && (code != 403 || !strings.Contains(string(b), `"code":7`)):
			t.Errorf("%s with a read token: %d %s, want 403 PERMISSION_DENIED", name, code, b)
		case r.scope == apiserver.ScopeRead && (code == 401 || code == 403):
			t.Errorf("%s with a read token: %d %s", name, code, b)
		}
		if code, b := e.callRoute(r, adminToken); code == 401 || code == 403 {
			t.Errorf("%s with the admin token: %d %s", name, code, b)
		}
	}
	// A bare token without "Bearer" is refused too.
	req, _ := http.NewRequest("GET", e.base+"/v1/functions", nil)
	req.Header.Set("Authorization", adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("token without Bearer: %d", resp.StatusCode)
	}
	// Health and metrics stay open.
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/v1/openapi.json"} {
		if code, _ := e.call("GET", p, "", nil); code != 200 {
			t.Errorf("GET %s without a token: %d", p, code)
		}
	}
}

// TestGRPC calls the API over gRPC on the same port (h2c): the same
// interceptor checks tokens, and log follow streams.
func TestGRPC(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	conn, err := grpc.NewClient(strings.TrimPrefix(e.base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fns := v1.NewFunctionServiceClient(conn)
	ctx := context.Background()
	with := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	if _, err := fns.ListFunctions(ctx, &v1.ListFunctionsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := fns.DeployFunction(with(readToken), &v1.DeployFunctionRequest{Name: "g"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("read token deploys: %v", err)
	}
	if _, err := fns.DeployFunction(with(adminToken), &v1.DeployFunctionRequest{Name: "g", Source: "function handle(e, c) log.info('hi') return nil end", Manifest: "{}"}); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	big := &v1.DeployFunctionRequest{Name: "g", Source: strings.Repeat("-", 2<<20), Manifest: "{}"}
	if _, err := fns.DeployFunction(with(adminToken), big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized gRPC deploy: %v", err)
	}
	got, err := fns.GetFunction(with(readToken), &v1.GetFunctionRequest{Name: "g"})
	if err != nil || got.Version != 1 || !got.Running {
		t.Fatalf("get: %v %v", got, err)
	}
	if _, err := fns.GetFunction(with(readToken), &v1.GetFunctionRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get unknown: %v", err)
	}
	// Follow over gRPC while an invocation commits a log line. (The
	// deadline fails the test instead of hanging it: a line committed just
	// after the headers used to be skipped.)
	sctx, cancel := context.WithTimeout(with(readToken), 30*time.Second)
	defer cancel()
	stream, err := v1.NewLogServiceClient(conn).FollowLogs(sctx, &v1.FollowLogsRequest{Function: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	f := false
	if _, err := fns.InvokeFunction(with(adminToken), &v1.InvokeFunctionRequest{Name: "g", DryRun: &f}); err != nil {
		t.Fatal(err)
	}
	line, err := stream.Recv()
	if err != nil || line.Msg != "hi" || line.Seq == 0 {
		t.Fatalf("followed: %v %v", line, err)
	}
}

// allRoutesTemplates returns method and path template of every proto route.
func allRoutesTemplates(t testing.TB) [][2]string {
	var out [][2]string
	for _, r := range allRoutes(t) {
		if r.template != "" {
			out = append(out, [2]string{r.method, r.template})
		}
	}
	return out
}

// TestGRPCAnonymousAnsweredBeforeBody: a gRPC call without a valid token
// is answered Unauthenticated at once, before its message is read.
// grpc-go read the whole message (up to the receive limit, 4 MiB) before
// the interceptor saw the token: 32 anonymous streams each holding 4 MiB
// less a byte grew the heap by 139 MiB (the REST body budget is 16 MiB).
func TestGRPCAnonymousAnsweredBeforeBody(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	cl := &http.Client{Transport: &http.Transport{Protocols: &p}}
	for _, auth := range []string{"", "Bearer not-a-token"} {
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() {
			// A message announced at 1 MiB (within the receive limit
			// of api.max_body_bytes + 64 KiB), of which only the header
			// comes: the call must not wait for the rest.
			_, _ = pw.Write([]byte{0, 0, 0x10, 0, 0})
		}()
		req, err := http.NewRequest("POST", e.base+"/moongate.v1.FunctionService/DeployFunction", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("TE", "trailers")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := cl.Do(req.WithContext(ctx))
		if err != nil {
			cancel()
			t.Fatalf("auth %q: no answer before the body: %v", auth, err)
		}
		_, err = io.Copy(io.Discard, resp.Body) // the status comes after the body, if any
		resp.Body.Close()
		cancel()
		if err != nil {
			t.Fatalf("auth %q: the call waited for the message: %v", auth, err)
		}
		got := resp.Header.Get("Grpc-Status")
		if got == "" {
			got = resp.Trailer.Get("Grpc-Status")
		}
		if got != strconv.Itoa(int(codes.Unauthenticated)) {
			t.Fatalf("auth %q: grpc-status %q, want %d", auth, got, codes.Unauthenticated)
		}
	}
}

package apiserver_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
)

// Tokens of the test daemons (random per test binary run).
var (
	adminToken, adminHash = mustToken()
	readToken, readHash   = mustToken()
	otherToken, _         = mustToken() // never configured
)

func mustToken() (string, string) {
	t, h, err := apiserver.NewToken()
	if err != nil {
		panic(err)
	}
	return t, h
}

// daemonConfig is a test configuration: embedded broker and API on random
// loopback ports, fast retries, both test tokens unless tokens is given.
func daemonConfig(dataDir, extra string) string {
	return daemonConfigTokens(dataDir, "", extra)
}

// daemonConfigTokens is daemonConfig with more api.tokens entries (YAML
// list items, each line indented by 4 spaces).
func daemonConfigTokens(dataDir, moreTokens, extra string) string {
	return fmt.Sprintf(`gateway_id: apitest
data_dir: %q
log: {level: warn}
mqtt:
  embedded: {listen: "127.0.0.1:0"}
api:
  listen: "127.0.0.1:0"
  max_body_bytes: 1MiB
  tokens:
    - {name: admin1, scope: admin, hash: %q}
    - {name: reader, scope: read, hash: %q}
%sstore: {durability: interval}
pipeline:
  retry: {max_attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}
%s`, dataDir, adminHash, readHash, moreTokens, extra)
}

// env is a running daemon and an HTTP client that checks every /v1 call
// against the served OpenAPI document.
type env struct {
	t      testing.TB
	d      *gateway.Daemon
	base   string
	mqtt   string
	client *http.Client
	cancel context.CancelFunc
	done   chan error
}

func startDaemon(t testing.TB, cfgYAML string) *env {
	t.Helper()
	return startDaemonWith(t, cfgYAML, nil, nil)
}

// startDaemonWith is startDaemon with the client's TLS settings (for an
// HTTPS API); nil for plain HTTP.
func startDaemonWith(t testing.TB, cfgYAML string, tc *tls.Config, logw io.Writer) *env {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if logw != nil {
		log = slog.New(slog.NewTextHandler(logw, nil))
	} else if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	d, err := gateway.NewDaemon(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("daemon: %v", err)
	}
	scheme := "http://"
	if tc != nil {
		scheme = "https://"
	}
	e := &env{t: t, d: d, base: scheme + d.HTTPAddr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- d.Run(ctx) }()
	t.Cleanup(e.stop)
	waitFor(t, 20*time.Second, "daemon ready", d.Gateway().Ready)
	if a := d.MQTTAddr(); a != nil {
		e.mqtt = "tcp://" + a.String()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	e.client = &http.Client{Transport: newValidator(t, e.base, tr), Timeout: 30 * time.Second}
	return e
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("daemon: %v", err)
		}
	case <-time.After(30 * time.Second):
		e.t.Errorf("daemon did not stop")
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// call makes one REST call; body is JSON-encoded unless it is a string or
// []byte (sent as is). It returns the status and the body.
func (e *env) call(method, path, token string, body any) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// mustCall is call that fails the test unless the status is want, and
// decodes the JSON response into out (when not nil).
func (e *env) mustCall(want int, method, path, token string, body, out any) {
	e.t.Helper()
	code, b := e.call(method, path, token, body)
	if code != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// rpcStatus is a decoded google.rpc.Status.
type rpcStatus struct {
	Code    int               `json:"code"`
	Message string            `json:"message"`
	Details []json.RawMessage `json:"details"`
}

// expectStatus checks an error response: HTTP status and a JSON
// google.rpc.Status whose message contains substr.
func (e *env) expectStatus(httpCode int, substr, method, path, token string, body any) rpcStatus {
	e.t.Helper()
	code, b := e.call(method, path, token, body)
	var st rpcStatus
	if err := json.Unmarshal(b, &st); err != nil || st.Code == 0 {
		e.t.Fatalf("%s %s: status %d, body not a google.rpc.Status: %s", method, path, code, b)
	}
	if code != httpCode || !strings.Contains(st.Message, substr) {
		e.t.Fatalf("%s %s: got %d %q, want %d with %q", method, path, code, st.Message, httpCode, substr)
	}
	return st
}

// openAPIDoc loads the served OpenAPI 2 document as OpenAPI 3 and validates it.
func openAPIDoc(t testing.TB, served []byte, base string) *openapi3.T {
	t.Helper()
	var d2 openapi2.T
	if err := json.Unmarshal(served, &d2); err != nil {
		t.Fatalf("openapi: %v", err)
	}
	d3, err := openapi2conv.ToV3(&d2)
	if err != nil {
		t.Fatalf("openapi2 -> 3: %v", err)
	}
	if err := d3.Validate(context.Background()); err != nil {
		t.Fatalf("openapi document invalid: %v", err)
	}
	d3.Servers = openapi3.Servers{{URL: base}}
	return d3
}

// validator is an http.RoundTripper that checks every /v1 request and
// response against the served OpenAPI document (so every REST call of the
// tests matches it). Streamed responses are checked line by line.
type validator struct {
	t      testing.TB
	next   http.RoundTripper
	router routers.Router
	mu     sync.Mutex
	seen   map[string]bool // operation ids called
}

// calledOps is shared by every validator of the test binary, for the
// coverage check.
var (
	calledMu  sync.Mutex
	calledOps = map[string]bool{}
)

func newValidator(t testing.TB, base string, next http.RoundTripper) *validator {
	t.Helper()
	resp, err := next.RoundTrip(mustRequest(t, "GET", base+"/v1/openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(served, v1.OpenAPI) {
		t.Fatalf("GET /v1/openapi.json: %d, %d bytes", resp.StatusCode, len(served))
	}
	doc := openAPIDoc(t, served, base)
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return &validator{t: t, next: next, router: r, seen: map[string]bool{}}
}

func mustRequest(t testing.TB, method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasPrefix(req.URL.Path, "/v1/") || req.URL.Path == "/v1/openapi.json" {
		return v.next.RoundTrip(req)
	}
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		// Only a path the server does not serve either may be missing.
		resp, rerr := v.next.RoundTrip(req)
		if rerr == nil && resp.StatusCode != http.StatusNotFound {
			v.t.Errorf("OpenAPI: %s %s: no route in the document, but the server answered %d: %v", req.Method, req.URL.Path, resp.StatusCode, err)
		}
		return resp, rerr
	}
	calledMu.Lock()
	calledOps[route.Operation.OperationID] = true
	calledMu.Unlock()
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	// A request the test makes invalid on purpose must fail the check too;
	// only well-formed requests are checked.
	reqErr := openapi3filter.ValidateRequest(req.Context(), in)
	req.Body = io.NopCloser(bytes.NewReader(reqBody))
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if reqErr != nil && resp.StatusCode < 400 {
		v.t.Errorf("OpenAPI: %s %s: request does not match the document but got %d: %v", req.Method, req.URL, resp.StatusCode, reqErr)
	}
	if strings.HasSuffix(req.URL.Path, ":follow") && resp.StatusCode == 200 {
		resp.Body = v.streamChecker(route, resp.Body)
		return resp, nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
	rin.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(req.Context(), rin); err != nil {
		v.t.Errorf("OpenAPI: %s %s: response %d does not match the document: %v\n%s", req.Method, req.URL, resp.StatusCode, err, clipBytes(body))
	}
	return resp, nil
}

// streamChecker checks each NDJSON line of a streamed response against the
// operation's 200 schema.
func (v *validator) streamChecker(route *routers.Route, body io.ReadCloser) io.ReadCloser {
	schema := route.Operation.Responses.Status(200).Value.Content.Get("application/json").Schema.Value
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var x any
			if err := json.Unmarshal(line, &x); err != nil {
				v.t.Errorf("OpenAPI: stream line is not JSON: %s", clipBytes(line))
			} else if err := schema.VisitJSON(x); err != nil {
				v.t.Errorf("OpenAPI: stream line does not match the document: %v\n%s", err, clipBytes(line))
			}
			if _, err := pw.Write(append(append([]byte{}, line...), '\n')); err != nil {
				break
			}
		}
		body.Close()
		pw.CloseWithError(sc.Err())
	}()
	return struct {
		io.Reader
		io.Closer
	}{pr, closerFunc(func() error { body.Close(); return pr.Close() })}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func clipBytes(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "..."
	}
	return string(b)
}

// MQTT helpers.

func connect(t testing.TB, url, id string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
		SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).SetOrderMatters(false)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func publish(t testing.TB, c paho.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, []byte(payload))
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

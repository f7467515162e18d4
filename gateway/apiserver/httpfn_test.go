package apiserver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

const hookSource = `
function handle(event, ctx)
  if event.path == "/fail" then error("bad request path") end
  emit("hooks", {path = event.path, body = event.body})
  if event.path == "/text" then return "plain" end
  if event.path == "/none" then return nil end
  if event.path == "/bad" then return {status = 99} end
  if event.path == "/json" then return {1, 2, 3} end
  return {status = 201, headers = {["X-Fn"] = "yes"}, body = {path = event.path, method = event.method, body = event.body,
    q = event.query.q, auth = event.headers.authorization, ua = event.headers["user-agent"]}}
end
`

// fnCall calls an HTTP-triggered function.
func (e *env) fnCall(method, path, token, body string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("User-Agent", "moongate-test")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestHTTPFunction(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "hook", "source": hookSource,
		"triggers": []obj{{"http": obj{"methods": []string{"GET", "POST"}}}}}, nil)
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "mqttonly", "source": hookSource, "manifest": "triggers:\n  - mqtt: a/b\n"}, nil)

	resp, body := e.fnCall("POST", "/fn/hook/a/b?q=1", readToken, "hello")
	var got obj
	if resp.StatusCode != 201 || resp.Header.Get("X-Fn") != "yes" || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &got) != nil {
		t.Fatalf("POST: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if got["path"] != "/a/b" || got["method"] != "POST" || got["body"] != "hello" || got["q"] != "1" || got["ua"] != "moongate-test" {
		t.Fatalf("the function saw: %v", got)
	}
	if _, ok := got["auth"]; ok {
		t.Fatalf("the caller's token reached the function: %v", got)
	}
	// The effects were committed before the response.
	if recs := e.records("stream=hooks"); len(recs) != 1 || field(recs[0], "data.body") != "hello" {
		t.Fatalf("records after the response: %v", recs)
	}
	// The return value is the response, not a record of the function's stream.
	if recs := e.records("stream=hook"); len(recs) != 0 {
		t.Fatalf("response stored as a record: %v", recs)
	}

	for _, c := range []struct {
		method, path, token, body string
		code                      int
		ctype, want               string
	}{
		{"GET", "/fn/hook/text", adminToken, "", 200, "text/plain; charset=utf-8", "plain"},
		{"GET", "/fn/hook/none", readToken, "", 204, "", ""},
		{"GET", "/fn/hook/json", readToken, "", 200, "application/json", "[1,2,3]"},
		{"GET", "/fn/hook", readToken, "", 201, "application/json", `"path":"/"`},
		{"PUT", "/fn/hook/x", readToken, "", 405, "application/json", "does not take PUT"},
		{"GET", "/fn/hook/fail", readToken, "", 502, "application/json", "bad request path"},
		{"GET", "/fn/hook/bad", readToken, "", 502, "application/json", "status must be"},
		{"GET", "/fn/nope/x", readToken, "", 404, "application/json", "no function"},
		{"GET", "/fn/mqttonly/x", readToken, "", 404, "application/json", "http trigger"},
		{"GET", "/fn/hook/x", "", "", 401, "application/json", "missing bearer token"},
		{"GET", "/fn/hook/x", otherToken, "", 401, "application/json", "unknown or revoked"},
		{"POST", "/fn/hook/x", readToken, strings.Repeat("x", 2<<20), 413, "application/json", "larger than the limit"},
	} {
		resp, body := e.fnCall(c.method, c.path, c.token, c.body)
		if resp.StatusCode != c.code || resp.Header.Get("Content-Type") != c.ctype || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s: %d %q %s, want %d %q %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), body, c.code, c.ctype, c.want)
		}
	}
	if resp, _ := e.fnCall("PUT", "/fn/hook/x", readToken, ""); resp.Header.Get("Allow") != "GET, POST" {
		t.Errorf("405 Allow: %q", resp.Header.Get("Allow"))
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and returns
// its files and a client TLS configuration that trusts it.
func writeCert(t testing.TB, dir string) (certFile, keyFile string, tc *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "moongate-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// TestTLS serves the API over HTTPS with the configured certificate pair:
// REST (HTTP/2 by ALPN) and gRPC on the same port.
func TestTLS(t *testing.T) {
	certFile, keyFile, tc := writeCert(t, t.TempDir())
	e := startDaemonWith(t, daemonConfigTokens(t.TempDir(), fmt.Sprintf("  tls: {cert: %q, key: %q}\n", certFile, keyFile), ""), tc, nil)
	var list obj
	e.mustCall(200, "GET", "/v1/functions", readToken, nil, &list)
	e.expectStatus(401, "missing bearer token", "GET", "/v1/functions", "", nil)
	// Plain HTTP on the TLS port is refused.
	resp, err := http.Get(strings.Replace(e.base, "https://", "http://", 1) + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served on the TLS port")
		}
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(e.base, "https://"), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+readToken)
	if _, err := v1.NewStatusServiceClient(conn).GetSystemStatus(ctx, &v1.GetSystemStatusRequest{}); err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
}

// TestHTTPFunctionBinaryBody: a string body is sent as is (docs/api.md),
// bytes that are not UTF-8 included: the result went through JSON, whose
// encoder put U+FFFD in their place, so an image or a blob chunk came out
// corrupted.
func TestHTTPFunctionBinaryBody(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	src := `
function handle(event, ctx)
  return {status = 200, headers = {["Content-Type"] = "image/jpeg"}, body = event.body}
end`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "img", "source": src,
		"triggers": []obj{{"http": obj{"methods": []string{"POST"}}}}}, nil)
	jpeg := "\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x80\x90"
	resp, body := e.fnCall("POST", "/fn/img/x", readToken, jpeg)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
	if !bytes.Equal(body, []byte(jpeg)) {
		t.Fatalf("body not sent as is:\n got %q\nwant %q", body, jpeg)
	}
	// Text bodies are unchanged.
	resp, body = e.fnCall("POST", "/fn/img/x", readToken, "héllo")
	if string(body) != "héllo" {
		t.Fatalf("text body %q", body)
	}
}

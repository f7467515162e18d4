package main

// The remote commands (fn deploy, data query, dlq ls, ...) talk to a
// gateway's management API over REST, through the grpc-gateway paths under
// /v1/ (see docs/api.md), decoding the JSON with protojson into the
// generated moongatev1 types. REST rather than the gRPC clients, on
// purpose: it is the same code path curl users and the OpenAPI document
// describe (one set of paths, errors and limits to keep right), it passes
// through ordinary HTTP proxies and TLS terminators, and --json can print
// the server's own response bytes. Log following uses the newline-delimited
// JSON stream of /v1/logs:follow.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/moongate-edge/moongate/gateway/config"
)

// Exit codes of the remote commands, beyond exitOK, exitFailure and
// exitUsage (main.go). Documented in docs/cli.md and in every command's
// --help.
const (
	exitNotFound    = 3 // the function, version, key or dead letter does not exist
	exitAuth        = 4 // no token, or the token is unknown, revoked or lacks the scope
	exitUnavailable = 5 // the server cannot be reached or is unavailable (retry later)
)

// exitCodesHelp ends the usage text of every remote command.
const exitCodesHelp = `
Connection (flags, then MOONGATE_SERVER / MOONGATE_TOKEN, then the file
$MOONGATE_CLI_CONFIG or $XDG_CONFIG_HOME/moongate/cli.yaml):
  --server URL              API address (default http://127.0.0.1:8080)
  --token-file FILE         read the bearer token (from 'moongate token
                            create') from FILE, - for standard input
  --token TOKEN             the token itself: visible in ps and the shell
                            history; prefer MOONGATE_TOKEN or --token-file
  --ca FILE                 PEM CA certificate(s) to trust for https://
  --insecure-skip-verify    do not check the server certificate (testing only)
  --request-timeout D       per-call time limit (default 30s)
  --json                    print the API's JSON response instead of a table

Exit status: 0 ok; 1 the call or the function failed; 2 bad arguments or
input files; 3 not found; 4 no token, or the token was refused (401/403);
5 the server could not be reached or is unavailable.
`

// Defaults of the connection settings.
const (
	defaultServer         = "http://127.0.0.1:8080"
	defaultRequestTimeout = 30 * time.Second
	// maxResponseBytes bounds what the CLI reads of one response: a
	// misbehaving server cannot exhaust the client's memory (on the
	// gateway itself, a Pi Zero: reading and decoding a response takes a
	// few times its size). The largest answer moongate gives is a page of
	// records (about 1 MiB stored, plus its last entry of up to about
	// 1.2 MiB) as JSON: well under this even with every byte escaped.
	maxResponseBytes = 32 << 20
)

// cliFileConfig is the optional CLI configuration file. Unknown keys are
// errors, as in the daemon's configuration.
type cliFileConfig struct {
	Server             string          `yaml:"server"`
	Token              string          `yaml:"token"`
	CA                 string          `yaml:"ca"`
	InsecureSkipVerify bool            `yaml:"insecure_skip_verify"`
	RequestTimeout     config.Duration `yaml:"request_timeout"`
}

// connFlags are the connection and output flags every remote command takes.
type connFlags struct {
	server, token, ca string
	tokenFile         string
	insecure          bool
	timeout           time.Duration
	json              bool
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "", "API address, e.g. https://gw.example:8080")
	fs.StringVar(&c.token, "token", "", "bearer token (prefer MOONGATE_TOKEN or --token-file)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token, - for standard input")
	fs.StringVar(&c.ca, "ca", "", "PEM file of CA certificates to trust")
	fs.BoolVar(&c.insecure, "insecure-skip-verify", false, "do not verify the server certificate")
	fs.DurationVar(&c.timeout, "request-timeout", 0, "time limit per call")
	fs.BoolVar(&c.json, "json", false, "print JSON")
}

// getenv is os.Getenv, replaceable in tests.
var getenv = os.Getenv

// cliConfigPath returns the CLI configuration file to read: the
// MOONGATE_CLI_CONFIG variable, else cli.yaml in the user's configuration
// directory. explicit reports whether the variable named it (a missing
// file is then an error).
func cliConfigPath() (path string, explicit bool) {
	if p := getenv("MOONGATE_CLI_CONFIG"); p != "" {
		return p, true
	}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", false
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "moongate", "cli.yaml"), false
}

// loadCLIConfig reads the CLI configuration file, if any.
func loadCLIConfig(stderr io.Writer) (cliFileConfig, string, error) {
	var fc cliFileConfig
	path, explicit := cliConfigPath()
	if path == "" {
		return fc, "", nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return fc, "", nil
		}
		return fc, path, fmt.Errorf("CLI configuration: %w", err)
	}
	if _, err := config.Unmarshal(path, data, &fc); err != nil {
		return fc, path, fmt.Errorf("CLI configuration: %w", err)
	}
	if fc.Token != "" && runtime.GOOS != "windows" {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(stderr, "moongate: warning: %s holds a token and is readable by others (chmod 600 it)\n", path)
		}
	}
	return fc, path, nil
}

// apiClient calls one gateway's REST API. It is safe for concurrent use.
type apiClient struct {
	base    *url.URL // scheme, host and optional path prefix
	token   string
	http    *http.Client
	timeout time.Duration // per unary call
	json    bool          // --json output
}

// usageError is a problem with the command line or settings: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// newClient resolves the connection settings (flags, then environment,
// then the CLI configuration file, then defaults) and builds the client.
func newClient(cf *connFlags, stderr io.Writer) (*apiClient, error) {
	fc, path, err := loadCLIConfig(stderr)
	if err != nil {
		return nil, &usageError{err.Error()}
	}
	pick := func(flagV, env, fileV, def string) string {
		for _, v := range []string{flagV, getenv(env), fileV} {
			if v != "" {
				return v
			}
		}
		return def
	}
	server := pick(cf.server, "MOONGATE_SERVER", fc.Server, defaultServer)
	flagToken := cf.token
	switch {
	case cf.token != "" && cf.tokenFile != "":
		return nil, usagef("--token and --token-file: give one")
	case cf.token != "":
		fmt.Fprintln(stderr, "moongate: warning: --token puts the token in the process list and the shell history: set MOONGATE_TOKEN or use --token-file FILE")
	case cf.tokenFile != "":
		t, err := readTokenFile(cf.tokenFile, stderr)
		if err != nil {
			return nil, err
		}
		flagToken = t
	}
	token := strings.TrimSpace(pick(flagToken, "MOONGATE_TOKEN", fc.Token, ""))
	caFile := pick(cf.ca, "", fc.CA, "")
	if caFile != "" && path != "" && cf.ca == "" && !filepath.IsAbs(caFile) {
		caFile = filepath.Join(filepath.Dir(path), caFile) // relative to the file that names it
	}
	insecure := cf.insecure || fc.InsecureSkipVerify
	timeout := cf.timeout
	if timeout == 0 {
		timeout = time.Duration(fc.RequestTimeout)
	}
	if timeout == 0 {
		timeout = defaultRequestTimeout
	}
	if timeout < 0 {
		return nil, usagef("--request-timeout must be positive")
	}
	base, err := parseServer(server)
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, &authError{msg: "no API token: set MOONGATE_TOKEN, pass --token-file FILE, or put token: in " + displayPath(path) +
			" (create one on the gateway with 'moongate token create NAME')"}
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return nil, &authError{msg: "the API token contains white space: check MOONGATE_TOKEN / --token-file / --token"}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if base.Scheme == "https" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, usagef("--ca: %v", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, usagef("--ca %s: no PEM certificate in the file", caFile)
			}
			tc.RootCAs = pool
		}
		if insecure {
			fmt.Fprintln(stderr, "moongate: warning: not verifying the server certificate (--insecure-skip-verify): the token can be stolen")
			tc.InsecureSkipVerify = true
		}
		tr.TLSClientConfig = tc
	} else if !isLoopbackHost(base.Hostname()) {
		fmt.Fprintf(stderr, "moongate: warning: sending the token in clear text to %s: use https://\n", base.Host)
	}
	return &apiClient{base: base, token: token, timeout: timeout, json: cf.json,
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// maxTokenFileBytes bounds what --token-file reads: a token is short.
const maxTokenFileBytes = 64 << 10

// readTokenFile reads the token of --token-file: the file's content
// without surrounding white space; "-" is standard input. A regular file
// that others can read draws a warning on stderr, as the CLI configuration
// file does.
func readTokenFile(name string, stderr io.Writer) (string, error) {
	var r io.Reader = stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return "", usagef("--token-file: %v", err)
		}
		defer f.Close()
		r = f
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o077 != 0 && runtime.GOOS != "windows" {
			fmt.Fprintf(stderr, "moongate: warning: %s holds a token and is readable by others (chmod 600 it)\n", name)
		}
	}
	b, err := io.ReadAll(io.LimitReader(r, maxTokenFileBytes+1))
	if name == "-" {
		// Whatever else wants standard input in this command (--data -,
		// a VALUE or FILE of -) would read nothing: it is told so.
		stdin = readStdinError{"standard input was read for --token-file -: give the other input as a file"}
	}
	if err != nil {
		return "", usagef("--token-file %s: %v", name, err)
	}
	if len(b) > maxTokenFileBytes {
		return "", usagef("--token-file %s: larger than %d bytes: not a token", name, maxTokenFileBytes)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", usagef("--token-file %s: empty", name)
	}
	return t, nil
}

// readStdinError is standard input once --token-file - has read it.
type readStdinError struct{ msg string }

func (e readStdinError) Read([]byte) (int, error) { return 0, errors.New(e.msg) }

func displayPath(p string) string {
	if p == "" {
		return "~/.config/moongate/cli.yaml"
	}
	return p
}

// parseServer checks a server address: http(s)://host[:port][/prefix], or
// host:port (taken as http://).
func parseServer(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, usagef("invalid server address %q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, usagef("invalid server address %q: the scheme must be http or https", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("invalid server address %q: want http(s)://HOST[:PORT][/PREFIX]", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if strings.HasSuffix(u.Path, "/v1") {
		return nil, usagef("invalid server address %q: leave /v1 out (the commands add it)", s)
	}
	return u, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// apiError is an error answer of the API: a google.rpc.Status.
type apiError struct {
	httpStatus int
	code       codes.Code
	msg        string
}

func (e *apiError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("server answered %d %s (%s)", e.httpStatus, http.StatusText(e.httpStatus), e.code)
	}
	return e.msg
}

// authError is a missing or refused token.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// connError is a failure to talk to the server at all.
type connError struct {
	server string
	err    error
}

func (e *connError) Error() string {
	return fmt.Sprintf("cannot reach the server at %s: %v", e.server, e.err)
}

func (e *connError) Unwrap() error { return e.err }

// exitCode maps an error of a remote command to the exit status.
func exitCode(err error) int {
	var ue *usageError
	var ae *authError
	var ce *connError
	var pe *apiError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ae):
		return exitAuth
	case errors.As(err, &ce):
		return exitUnavailable
	case errors.As(err, &pe):
		switch pe.code {
		case codes.NotFound:
			return exitNotFound
		case codes.Unauthenticated, codes.PermissionDenied:
			return exitAuth
		case codes.Unavailable:
			return exitUnavailable
		}
	}
	return exitFailure
}

// request is one REST call.
type request struct {
	method string
	path   string     // under the base, e.g. /v1/functions
	query  url.Values // may be nil
	body   []byte     // JSON, or nil
}

// newRequest builds an HTTP request to the API with the token.
func (c *apiClient) newRequest(ctx context.Context, r request) (*http.Request, error) {
	u := *c.base
	u.Path = c.base.Path + r.path
	u.RawPath = ""
	if strings.Contains(r.path, "%") {
		// The path holds escaped segments (a state key with "/"): keep them.
		u.RawPath = c.base.EscapedPath() + r.path
		p, err := url.PathUnescape(u.RawPath)
		if err != nil {
			return nil, fmt.Errorf("bad path %q: %w", r.path, err)
		}
		u.Path = p
	}
	u.RawQuery = r.query.Encode()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "moongate-cli/"+version)
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// send makes the request and returns the response when its status is 200;
// any other answer becomes an *apiError, a transport failure a *connError.
// The caller closes the body.
func (c *apiClient) send(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil && errors.Is(ctxErr, context.DeadlineExceeded) {
			return nil, &connError{server: c.base.Redacted(), err: fmt.Errorf("no answer within --request-timeout %v", c.timeout)}
		} else if ctxErr != nil {
			return nil, ctxErr
		}
		return nil, &connError{server: c.base.Redacted(), err: unwrapURLError(err)}
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return nil, decodeStatus(resp.StatusCode, b)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// decodeStatus turns an error response into an *apiError: the
// google.rpc.Status the API sends, or, for a body that is not one (a
// proxy's page), the HTTP status alone.
func decodeStatus(httpStatus int, body []byte) error {
	var st struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &st); err == nil && st.Code != nil && *st.Code > 0 && *st.Code <= 16 {
		return &apiError{httpStatus: httpStatus, code: codes.Code(*st.Code), msg: st.Message}
	}
	e := &apiError{httpStatus: httpStatus, code: codes.Unknown}
	switch httpStatus {
	case http.StatusUnauthorized:
		e.code = codes.Unauthenticated
	case http.StatusForbidden:
		e.code = codes.PermissionDenied
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		e.code = codes.Unavailable
	}
	e.msg = fmt.Sprintf("server answered %d %s, not a moongate API response", httpStatus, http.StatusText(httpStatus))
	if t := strings.TrimSpace(string(body)); t != "" {
		e.msg += ": " + clipText(t, 200)
	}
	return e
}

// call makes a unary call: in (a request message, nil for none) is sent as
// the JSON body, the response is decoded into out. It returns the raw
// response body (for --json).
func (c *apiClient) call(ctx context.Context, method, path string, query url.Values, in, out proto.Message) ([]byte, error) {
	var body []byte
	if in != nil {
		var err error
		body, err = protojson.MarshalOptions{UseProtoNames: true}.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
	}
	return c.callRaw(ctx, request{method: method, path: path, query: query, body: body}, out)
}

// callRaw is call with a ready body.
func (c *apiClient) callRaw(ctx context.Context, r request, out proto.Message) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := c.newRequest(ctx, r)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, &connError{server: c.base.Redacted(), err: fmt.Errorf("reading the response: %w", err)}
	}
	if len(b) > maxResponseBytes {
		return nil, fmt.Errorf("the response is larger than %d bytes", maxResponseBytes)
	}
	if out != nil {
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, out); err != nil {
			return nil, fmt.Errorf("the server's answer is not a moongate API response (%v): %s", err, clipText(string(b), 200))
		}
	}
	return b, nil
}

// printJSON writes one API response as compact JSON on one line (the
// server's own bytes, so fields this CLI does not know are kept).
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return fmt.Errorf("the server's answer is not JSON: %w", err)
	}
	out := jsonControls(buf.Bytes()) + "\n" // the same JSON, safe for a terminal
	_, err := io.WriteString(w, out)
	return err
}

// clipText is s for one table cell or line: control characters (a
// newline, a tab that would start a column) escaped as \n, \t, \xNN,
// invalid UTF-8 shown as U+FFFD, then cut to at most n bytes on a
// character boundary.
func clipText(s string, n int) string {
	s = oneLine(s)
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		return s[:n] + "..."
	}
	return s
}

// oneLine is s with control characters escaped (\n, \t, \r, \xNN, and
// the C1 controls U+0080-U+009F as \u0085: terminals act on NEL and CSI
// in UTF-8 too) and invalid UTF-8 replaced by U+FFFD: text from functions
// and devices printed in a line of its own, so that it cannot fake lines
// or columns or drive the terminal.
func oneLine(s string) string {
	clean := utf8.ValidString(s)
	for i := 0; clean && i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == 0xc2 && i+1 < len(s) && s[i+1] <= 0x9f {
			clean = false
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r <= 0x9f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// jsonControls escapes DEL and the C1 controls (U+0080-U+009F) in JSON
// text as \u escapes, which encoding/json leaves as they are: the text
// stays the same JSON (they can only be inside strings) and cannot drive
// the terminal it is printed on.
func jsonControls(b []byte) string {
	s := string(b)
	if !strings.ContainsRune(s, 0x7f) && !strings.ContainsFunc(s, func(r rune) bool { return r >= 0x80 && r <= 0x9f }) {
		return s
	}
	var out strings.Builder
	for _, r := range s {
		if r == 0x7f || r >= 0x80 && r <= 0x9f {
			fmt.Fprintf(&out, `\u%04x`, r)
			continue
		}
		out.WriteRune(r)
	}
	return out.String()
}

// marshalText is json.Marshal without HTML escaping: the CLI prints
// "a<b>&c" as such, not as "a\u003cb\u003e\u0026c".
func marshalText(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

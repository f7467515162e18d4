package main

import (
	"bufio"
	"bytes"
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
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// The end-to-end flow through the moongate binary: the test builds it,
// starts `moongate serve` on random loopback ports with tokens made by
// `moongate token create`, and drives it with the CLI commands only
// (MQTT events come from a paho client).

// telemetrySrc is the test function: a reading in, a record with the
// version out, a log line and a counter; {"fail": true} fails in versions
// below 3.
func telemetrySrc(version int) string {
	return fmt.Sprintf(`function handle(event, ctx)
  local r = json.decode(event.payload)
  log.info("reading", {temp = r.temp})
  state.incr("count")
  if r.fail and %d < 3 then error("cannot handle this reading") end
  return {temp = r.temp, v = %d}
end
`, version, version)
}

// buildBinary builds cmd/moongate into dir and returns its path.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "moongate")
	// The test's own build settings (not CGO_ENABLED=0 as in make build),
	// so the packages come from the build cache the test run filled.
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cliEnv runs the binary with a server and token in the environment and
// an empty configuration directory.
type cliEnv struct {
	t            *testing.T
	bin          string
	server       string
	token        string
	configHome   string
	extraEnv     []string
	lastStdout   string
	lastStderr   string
	lastExitCode int
}

func (c *cliEnv) env(token string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.configHome, "XDG_CONFIG_HOME=" + c.configHome}
	if c.server != "" {
		env = append(env, "MOONGATE_SERVER="+c.server)
	}
	if token != "" {
		env = append(env, "MOONGATE_TOKEN="+token)
	}
	return append(env, c.extraEnv...)
}

// runAs runs the CLI with token and returns stdout, stderr and exit code.
func (c *cliEnv) runAs(token string, args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env(token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run %v: %v", args, err)
	}
	c.lastStdout, c.lastStderr, c.lastExitCode = out.String(), errb.String(), code
	return out.String(), errb.String(), code
}

// ok runs the CLI with the admin token and fails the test unless it exits 0.
func (c *cliEnv) ok(args ...string) string {
	c.t.Helper()
	out, errs, code := c.runAs(c.token, args...)
	if code != 0 {
		c.t.Fatalf("moongate %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// fails runs the CLI with token and checks the exit code and that stderr
// holds substr.
func (c *cliEnv) fails(token string, code int, substr string, args ...string) {
	c.t.Helper()
	out, errs, got := c.runAs(token, args...)
	if got != code || !strings.Contains(errs, substr) {
		c.t.Fatalf("moongate %s: exit %d, want %d with %q\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, substr, out, errs)
	}
}

// okJSON runs the CLI with --json and decodes the one-line output.
func (c *cliEnv) okJSON(args ...string) map[string]any {
	c.t.Helper()
	out := c.ok(append(args, "--json")...)
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		c.t.Fatalf("moongate %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m
}

// waitCLI reruns a CLI query until cond holds on its JSON output.
func (c *cliEnv) waitCLI(what string, cond func(map[string]any) bool, args ...string) map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := c.okJSON(args...)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s; last: %v", what, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jfield(v any, path string) any {
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			var i int
			if _, err := fmt.Sscan(p, &i); err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func jlen(v any) int {
	a, _ := v.([]any)
	return len(a)
}

// daemon is a running `moongate serve`.
type daemon struct {
	cmd  *exec.Cmd
	api  string // host:port
	mqtt string // tcp://host:port
	logs *bytes.Buffer
}

// startServe starts the daemon with cfg and waits until /readyz (over
// HTTPS, trusting roots) says ready.
func startServe(t *testing.T, bin, cfgPath string, roots *x509.CertPool) *daemon {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, logs: &bytes.Buffer{}}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("moongate serve did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	addrs := make(chan [2]string, 2)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.logs.Write(append(sc.Bytes(), '\n'))
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Addr != "" {
				addrs <- [2]string{l.Msg, l.Addr}
			}
		}
	}()
	go func() {
		<-logsDone
		exited <- cmd.Wait()
	}()
	deadline := time.After(30 * time.Second)
	for d.api == "" || d.mqtt == "" {
		select {
		case a := <-addrs:
			switch a[0] {
			case "api listening":
				d.api = a[1]
			case "embedded MQTT broker listening":
				d.mqtt = "tcp://" + a[1]
			}
		case err := <-exited:
			t.Fatalf("moongate serve exited: %v\n%s", err, d.logs.String())
		case <-deadline:
			t.Fatalf("moongate serve did not report its addresses\n%s", d.logs.String())
		}
	}
	// Ready when /readyz answers 200.
	end := time.Now().Add(30 * time.Second)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer client.CloseIdleConnections()
	for {
		resp, err := client.Get("https://" + d.api + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d
			}
		}
		if time.Now().After(end) {
			t.Fatalf("moongate serve not ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newToken runs `moongate token create` and returns the token and its
// configuration line.
func newToken(t *testing.T, bin, name, scope string) (string, string) {
	t.Helper()
	out, err := exec.Command(bin, "token", "create", name, "--scope", scope).Output()
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("token create printed %q", out)
	}
	return lines[0], lines[1]
}

func mqttConnect(t *testing.T, url string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID("cli-e2e").SetCleanSession(true).SetOrderMatters(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func mqttPublish(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, []byte(payload)); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files
// and returns a pool that trusts it.
func selfSigned(t *testing.T, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "moongate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCLIEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts a daemon")
	}
	tmp := t.TempDir()
	bin := buildBinary(t, tmp)
	adminTok, adminLine := newToken(t, bin, "ops", "admin")
	readTok, readLine := newToken(t, bin, "viewer", "read")
	cfg := fmt.Sprintf(`gateway_id: clitest
data_dir: %q
log: {level: info, format: json}
mqtt:
  embedded: {listen: "127.0.0.1:0"}
api:
  listen: "127.0.0.1:0"
  tls: {cert: %q, key: %q}
  tokens:
%s
%s
store: {durability: interval}
pipeline:
  retry: {max_attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}
`, filepath.Join(tmp, "data"), filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem"), adminLine, readLine)
	roots := selfSigned(t, filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem"))
	writeFile(t, filepath.Join(tmp, "moongate-config.yaml"), cfg)
	d := startServe(t, bin, filepath.Join(tmp, "moongate-config.yaml"), roots)
	// The CLI finds the server and its CA in its configuration file (the
	// CA path relative to the file), the token in MOONGATE_TOKEN.
	home := filepath.Join(tmp, "home")
	cert, err := os.ReadFile(filepath.Join(tmp, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, "moongate", "gw-ca.pem"), string(cert))
	writeFile(t, filepath.Join(home, "moongate", "cli.yaml"), "server: https://"+d.api+"\nca: gw-ca.pem\n")
	cli := &cliEnv{t: t, bin: bin, token: adminTok, configHome: home}
	// Without the CA (another, empty configuration file) the certificate
	// is refused: exit 5.
	writeFile(t, filepath.Join(tmp, "empty.yaml"), "")
	cli.server = "https://" + d.api
	cli.extraEnv = []string{"MOONGATE_CLI_CONFIG=" + filepath.Join(tmp, "empty.yaml")}
	cli.fails(adminTok, exitUnavailable, "certificate", "system")
	cli.extraEnv = nil
	cli.server = ""
	dev := mqttConnect(t, d.mqtt)
	proj := filepath.Join(tmp, "project")

	// Version 1: one file described by flags.
	writeFile(t, filepath.Join(proj, "v1", "telemetry.lua"), telemetrySrc(1))
	out := cli.ok("fn", "deploy", filepath.Join(proj, "v1", "telemetry.lua"), "--trigger", "mqtt:devices/{device}/telemetry",
		"--description", "test telemetry", "--timeout", "2s", "--max-memory", "8MiB")
	if !strings.Contains(out, "telemetry  1        deployed, running") {
		t.Fatalf("deploy v1:\n%s", out)
	}
	mqttPublish(t, dev, "devices/d1/telemetry", `{"temp": 20}`)
	recs := cli.waitCLI("the first record", func(m map[string]any) bool { return jlen(m["records"]) == 1 }, "data", "query", "--function", "telemetry")
	if jfield(recs, "records.0.data.v") != 1.0 || jfield(recs, "records.0.device") != "d1" {
		t.Fatalf("record of v1: %v", recs)
	}

	// A project: telemetry v2 from NAME.lua + NAME.yaml, and a second
	// function with its manifest inline. An invalid one first: nothing of
	// the project is deployed.
	writeFile(t, filepath.Join(proj, "functions", "telemetry.lua"), telemetrySrc(2))
	writeFile(t, filepath.Join(proj, "functions", "telemetry.yaml"), "description: test telemetry\ntriggers:\n  - mqtt: devices/{device}/telemetry\n")
	writeFile(t, filepath.Join(proj, "alarm.lua"), "function handle(event)\n  local r = json.decode(event.payload)\n  if r.fail then error(\"alarm failed\") end\n  return r\nend\n")
	writeFile(t, filepath.Join(proj, "broken.lua"), "function handle(event)\n  return {\nend\n")
	project := `functions:
  - source: functions/telemetry.lua
  - name: alarm
    source: alarm.lua
    spec:
      triggers:
        - mqtt: "alarms/{device}"
`
	writeFile(t, filepath.Join(proj, "moongate.yaml"), project+"  - source: broken.lua\n    spec: {triggers: [{timer: \"@every 1h\"}]}\n")
	cli.fails(adminTok, exitFailure, "broken: ", "fn", "deploy", filepath.Join(proj, "moongate.yaml"))
	if !strings.Contains(cli.lastStderr, "broken:3:3: syntax error") || !strings.Contains(cli.lastStderr, "nothing deployed") {
		t.Fatalf("invalid project: want the line of the error and nothing deployed:\n%s", cli.lastStderr)
	}
	if m := cli.okJSON("fn", "ls"); jlen(m["functions"]) != 1 {
		t.Fatalf("an invalid project deployed something: %v", m)
	}
	writeFile(t, filepath.Join(proj, "moongate.yaml"), project)
	out = cli.ok("fn", "deploy", filepath.Join(proj, "moongate.yaml"), "--dry-run")
	if !strings.Contains(out, "valid (dry run") {
		t.Fatalf("dry run:\n%s", out)
	}
	out = cli.ok("fn", "deploy", filepath.Join(proj, "moongate.yaml"))
	if !strings.Contains(out, "telemetry  2        deployed, running") || !strings.Contains(out, "alarm      1        deployed, running") {
		t.Fatalf("project deploy:\n%s", out)
	}
	// The same pair deployed on its own: unchanged.
	out = cli.ok("fn", "deploy", filepath.Join(proj, "functions", "telemetry.lua"))
	if !strings.Contains(out, "unchanged") {
		t.Fatalf("redeploy:\n%s", out)
	}
	out = cli.ok("fn", "ls")
	for _, want := range []string{"NAME", "alarm", "mqtt:alarms/{device}", "telemetry  2        running  mqtt:devices/{device}/telemetry  test telemetry"} {
		if !strings.Contains(out, want) {
			t.Fatalf("fn ls lacks %q:\n%s", want, out)
		}
	}
	if src := cli.ok("fn", "get", "telemetry", "--source"); src != telemetrySrc(2) {
		t.Fatalf("fn get --source: %q", src)
	}
	if src := cli.ok("fn", "get", "telemetry", "--version", "1", "--source"); src != telemetrySrc(1) {
		t.Fatalf("fn get --version 1 --source: %q", src)
	}
	out = cli.ok("fn", "versions", "telemetry")
	if !strings.Contains(out, "1        inactive") || !strings.Contains(out, "2        running") {
		t.Fatalf("fn versions:\n%s", out)
	}
	mqttPublish(t, dev, "devices/d1/telemetry", `{"temp": 21}`)
	recs = cli.waitCLI("the record of v2", func(m map[string]any) bool { return jlen(m["records"]) == 2 }, "data", "query", "--function", "telemetry")
	if jfield(recs, "records.1.data.v") != 2.0 {
		t.Fatalf("record of v2: %v", recs)
	}

	// Roll back to version 1.
	if out := cli.ok("fn", "rollback", "telemetry"); !strings.Contains(out, "telemetry: version 1 is active (running)") {
		t.Fatalf("rollback: %s", out)
	}
	mqttPublish(t, dev, "devices/d1/telemetry", `{"temp": 22}`)
	recs = cli.waitCLI("the record after rollback", func(m map[string]any) bool { return jlen(m["records"]) == 3 }, "data", "query", "--function", "telemetry")
	if jfield(recs, "records.2.data.v") != 1.0 {
		t.Fatalf("record after rollback: %v", recs)
	}
	out = cli.ok("data", "query", "--function", "telemetry", "--desc", "--limit", "2")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.Contains(lines[1], `{"temp":22,"v":1}`) || !strings.Contains(cli.lastStderr, "more records: --cursor ") {
		t.Fatalf("data query page:\n%s\nstderr: %s", out, cli.lastStderr)
	}
	if out := cli.ok("data", "query", "--function", "telemetry", "--limit", "1", "--all"); strings.Count(out, "telemetry") != 6 { // function and stream columns
		t.Fatalf("data query --all:\n%s", out)
	}
	// One bucket from --from: hour buckets start on whole hours, and the
	// three records may fall on both sides of one.
	out = cli.ok("data", "agg", "--function", "telemetry", "--field", "temp", "--from", "1h")
	if !strings.Contains(out, "  3      20   22   21") {
		t.Fatalf("data agg:\n%s", out)
	}

	// Invoke: a dry run by default, committed with --commit.
	out = cli.ok("fn", "invoke", "telemetry", "--data", `{"temp": 5}`, "--capture", "device=d9")
	if !strings.Contains(out, `result (json): {"temp":5,"v":1}`) || !strings.Contains(out, "dry run, nothing committed") || !strings.Contains(out, "INFO  reading {\"temp\":5}") {
		t.Fatalf("invoke:\n%s", out)
	}
	if m := cli.okJSON("data", "query", "--device", "d9"); jlen(m["records"]) != 0 {
		t.Fatalf("a dry run stored records: %v", m)
	}
	inv := cli.okJSON("fn", "invoke", "telemetry", "--data", `{"temp": 6}`, "--capture", "device=d9", "--commit")
	if inv["committed"] != true {
		t.Fatalf("invoke --commit: %v", inv)
	}
	if m := cli.okJSON("data", "query", "--device", "d9"); jlen(m["records"]) != 1 {
		t.Fatalf("committed invoke: %v", m)
	}
	// The committed invocation's log line, by invocation id and by page.
	il := cli.okJSON("fn", "logs", "telemetry", "--invocation", inv["invocation_id"].(string))
	if jlen(il["lines"]) != 1 || jfield(il, "lines.0.fields.temp") != 6.0 {
		t.Fatalf("fn logs --invocation: %v", il)
	}
	page := cli.okJSON("fn", "logs", "--after", "1", "--limit", "2")
	if jlen(page["lines"]) != 2 || jfield(page, "lines.0.seq") == "1" {
		t.Fatalf("fn logs --after 1 --limit 2: %v", page)
	}
	cli.fails(adminTok, exitFailure, "the function failed: ", "fn", "invoke", "telemetry", "--data", `{"fail": true}`)
	if !strings.Contains(cli.lastStdout, "cannot handle this reading") {
		t.Fatalf("failing invoke report:\n%s", cli.lastStdout)
	}

	// State.
	if out := cli.ok("state", "get", "telemetry", "count"); out != "4\n" { // three MQTT events, one committed invoke
		t.Fatalf("state get: %q", out)
	}
	cli.ok("state", "put", "telemetry", "cfg/a", `{"limit": 3}`)
	if out := cli.ok("state", "ls", "telemetry", "--prefix", "cfg"); !strings.Contains(out, `cfg/a  {"limit":3}`) {
		t.Fatalf("state ls:\n%s", out)
	}
	cli.ok("state", "rm", "telemetry", "cfg/a")
	cli.fails(readTok, exitNotFound, "state key", "state", "get", "telemetry", "cfg/a")

	// A failing event becomes a dead letter; the fixed version takes it on replay.
	mqttPublish(t, dev, "alarms/d2", `{"fail": true, "level": 9}`)
	dls := cli.waitCLI("a dead letter", func(m map[string]any) bool { return jlen(m["dead_letters"]) == 1 }, "dlq", "ls")
	if !strings.Contains(fmt.Sprint(jfield(dls, "dead_letters.0.error")), "alarm failed") {
		t.Fatalf("dead letter: %v", dls)
	}
	seq := jfield(dls, "dead_letters.0.seq").(string)
	if out := cli.ok("dlq", "ls", "--function", "alarm"); !strings.Contains(out, seq) || !strings.Contains(out, "alarm failed") || !strings.Contains(out, `{"fail": true, "level": 9}`) {
		t.Fatalf("dlq ls:\n%s", out)
	}
	writeFile(t, filepath.Join(proj, "fixed", "alarm.lua"), "function handle(event)\n  local r = json.decode(event.payload)\n  r.fixed = true\n  return r\nend\n")
	cli.ok("fn", "deploy", filepath.Join(proj, "fixed", "alarm.lua"), "--trigger", "mqtt:alarms/{device}")
	if out := cli.ok("dlq", "replay", seq); out != "replayed 1, skipped 0\n" {
		t.Fatalf("dlq replay: %q", out)
	}
	recs = cli.waitCLI("the replayed record", func(m map[string]any) bool { return jlen(m["records"]) == 1 }, "data", "query", "--function", "alarm")
	if jfield(recs, "records.0.data.fixed") != true || jfield(recs, "records.0.data.level") != 9.0 {
		t.Fatalf("replayed record: %v", recs)
	}
	if m := cli.okJSON("dlq", "ls"); jlen(m["dead_letters"]) != 0 {
		t.Fatalf("dead letter left: %v", m)
	}
	cli.fails(adminTok, exitNotFound, "dead letter", "dlq", "replay", seq)
	if out := cli.ok("dlq", "purge", "--function", "alarm"); out != "purged 0\n" {
		t.Fatalf("dlq purge --function: %q", out)
	}
	if out := cli.ok("dlq", "purge", "--all"); out != "purged 0\n" {
		t.Fatalf("dlq purge: %q", out)
	}

	// Follow the logs while events arrive.
	seen := cli.okJSON("fn", "logs", "telemetry")
	after := fmt.Sprint(seen["next_after"])
	follow := exec.Command(bin, "fn", "logs", "telemetry", "-f", "--after", after)
	follow.Env = cli.env(readTok)
	pipe, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var followErr bytes.Buffer
	follow.Stderr = &followErr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = follow.Process.Kill() }()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for _, temp := range []int{30, 31} {
		mqttPublish(t, dev, "devices/d1/telemetry", fmt.Sprintf(`{"temp": %d}`, temp))
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("fn logs -f ended: %s", followErr.String())
			}
			if !strings.Contains(l, "INFO  telemetry ") || !strings.Contains(l, fmt.Sprintf(`reading {"temp":%d}`, temp)) {
				t.Fatalf("followed line: %q", l)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no log line followed for temp %d; stderr: %s", temp, followErr.String())
		}
	}
	// Ctrl-C ends -f with exit status 0.
	if err := follow.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := follow.Wait(); err != nil {
		t.Fatalf("fn logs -f after an interrupt: %v (want exit 0); stderr: %s", err, followErr.String())
	}
	if out := cli.ok("fn", "logs", "telemetry", "--tail", "2"); strings.Count(out, "\n") != 2 || !strings.Contains(out, `{"temp":31}`) {
		t.Fatalf("fn logs --tail 2:\n%s", out)
	}

	// Usage, sync, system.
	out = cli.ok("usage", "--function", "telemetry")
	if !strings.Contains(out, "FUNCTION   START") || !strings.Contains(out, "telemetry  ") {
		t.Fatalf("usage:\n%s", out)
	}
	if u := cli.okJSON("usage", "--function", "telemetry"); jfield(u, "usage.0.invocations") == "0" {
		t.Fatalf("usage: %v", u)
	}
	if out := cli.ok("sync", "status"); out != "no sync targets configured\n" {
		t.Fatalf("sync status: %q", out)
	}
	out = cli.ok("system")
	for _, want := range []string{"gateway:       clitest", "version:       dev", "ready:         yes", "functions:     2 running", "memory:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("system lacks %q:\n%s", want, out)
		}
	}

	// The README's CLI walk-through (step 2).
	if out := cli.ok("fn", "deploy", "../../docs/examples/functions/reference.lua"); !strings.Contains(out, "reference  1        deployed, running") {
		t.Fatalf("README deploy:\n%s", out)
	}
	out = cli.ok("fn", "invoke", "reference", "--data", `{"temp": 85}`, "--capture", "device=greenhouse-1")
	if !strings.Contains(out, `result (json): {"temp":85,"temp_f":185}`) || !strings.Contains(out, `publish devices/greenhouse-1/cmd qos=0 retain=false: {"fan":"on"}`) {
		t.Fatalf("README invoke:\n%s", out)
	}
	mqttPublish(t, dev, "devices/greenhouse-1/telemetry", `{"temp": 21}`)
	recs = cli.waitCLI("the README record", func(m map[string]any) bool { return jlen(m["records"]) == 1 }, "data", "query", "--stream", "reference")
	if jfield(recs, "records.0.data.temp") != 21.0 || jfield(recs, "records.0.device") != "greenhouse-1" {
		t.Fatalf("README record: %v", recs)
	}

	// Auth and not-found exit codes.
	cli.fails(readTok, exitAuth, "scope", "fn", "rm", "alarm")
	cli.fails("mgt_notatoken", exitAuth, "unknown or revoked token", "fn", "ls")
	cli.fails("", exitAuth, "no API token", "fn", "ls")
	cli.fails(readTok, exitNotFound, "nosuch", "fn", "get", "nosuch")
	if out := cli.ok("fn", "rm", "alarm"); out != "deleted alarm (2 versions)\n" {
		t.Fatalf("fn rm: %q", out)
	}
	cli.fails(adminTok, exitNotFound, "alarm", "fn", "invoke", "alarm")
}

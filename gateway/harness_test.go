package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/gateway/config"
)

// The gateway's tests run the daemon in-process, or as a child process (the
// test binary re-executed with envDaemonConfig set) when it must be killed.
const envDaemonConfig = "MOONGATE_TEST_DAEMON_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(envDaemonConfig); path != "" {
		os.Exit(runChildDaemon(path))
	}
	os.Exit(m.Run())
}

// runChildDaemon is the child process: a daemon on the given config that
// prints "READY <http addr>" once it takes events and stops on SIGTERM.
func runChildDaemon(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child config:", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := NewDaemon(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child start:", err)
		return 1
	}
	go func() {
		for !d.Gateway().Ready() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		fmt.Printf("READY %s\n", d.HTTPAddr())
	}()
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child run:", err)
		return 1
	}
	return 0
}

// referenceLua is the reference transform of the docs and benchmarks.
const referenceLua = `
function handle(event, ctx)
  local r = json.decode(event.payload)
  if r.temp == nil then return nil end
  r.temp_f = r.temp * 1.8 + 32
  if r.temp > 80 then mqtt.publish("devices/" .. event.device .. "/cmd", json.encode({fan = "on"})) end
  return r
end
`

// writeFunction writes NAME.lua and NAME.yaml into dir, each replaced
// atomically (through a dot file, which the loader ignores) so that a
// watching daemon never reads a half-written file.
func writeFunction(t testing.TB, dir, name, src, manifest string) {
	t.Helper()
	for _, f := range []struct{ name, content string }{{name + ".lua", src}, {name + ".yaml", manifest}} {
		tmp := filepath.Join(dir, "."+f.name+".tmp")
		if err := os.WriteFile(tmp, []byte(f.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, f.name)); err != nil {
			t.Fatal(err)
		}
	}
}

// testConfig returns a config YAML for a daemon on random loopback ports.
// extra is appended; when it has its own top-level mqtt section, that one
// replaces the embedded broker on a random port.
func testConfig(dataDir, fnDir, extra string) string {
	mqttSection := "mqtt:\n  embedded: {listen: \"127.0.0.1:0\"}\n"
	if strings.HasPrefix(extra, "mqtt:") || strings.Contains(extra, "\nmqtt:") {
		mqttSection = ""
	}
	return fmt.Sprintf("gateway_id: test\ndata_dir: %q\nfunctions_dir: %q\nlog: {level: warn}\n%sapi: {listen: \"127.0.0.1:0\"}\nstore: {durability: always}\n%s",
		dataDir, fnDir, mqttSection, extra)
}

// externalMQTT is the config section for external mode on broker url.
func externalMQTT(url, clientID string) string {
	return fmt.Sprintf("mqtt:\n  mode: external\n  external: {broker: %q, client_id: %q}\n", url, clientID)
}

type inProcess struct {
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
}

// startInProcess runs a daemon on cfgYAML until the test ends (or stop).
func startInProcess(t testing.TB, cfgYAML string) *inProcess {
	t.Helper()
	return startInProcessLog(t, cfgYAML, nil)
}

// startInProcessLog is startInProcess with the daemon's log written to logw
// (nil: discarded, or warnings to stderr with -v).
func startInProcessLog(t testing.TB, cfgYAML string, logw io.Writer) *inProcess {
	t.Helper()
	return startInProcessWith(t, cfgYAML, logw, nil)
}

// startInProcessWith is startInProcessLog with setup called on the daemon
// before it runs (nil: none).
func startInProcessWith(t testing.TB, cfgYAML string, logw io.Writer, setup func(*Daemon)) *inProcess {
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
	d, err := NewDaemon(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("daemon: %v", err)
	}
	d.FunctionsPoll = 50 * time.Millisecond
	if setup != nil {
		setup(d)
	}
	p := &inProcess{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- d.Run(ctx) }()
	t.Cleanup(func() { p.stop(t) })
	waitFor(t, 20*time.Second, "daemon ready", d.Gateway().Ready)
	return p
}

func (p *inProcess) stop(t testing.TB) {
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("daemon run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("daemon did not stop")
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// poll is waitFor for goroutines other than the test's (which must not
// call t.Fatal): it reports whether cond became true within timeout.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// connect returns a connected paho client.
func connect(t testing.TB, url, id string, clean bool) paho.Client {
	t.Helper()
	return connectWith(t, url, id, clean, nil)
}

// connectWith is connect with a handler run on every (re)connection.
func connectWith(t testing.TB, url, id string, clean bool, onConnect paho.OnConnectHandler) paho.Client {
	t.Helper()
	c, err := tryConnect(t, url, id, clean, onConnect)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryConnect is connectWith returning its error, for goroutines other than
// the test's. The client is disconnected when the test ends.
func tryConnect(t testing.TB, url, id string, clean bool, onConnect paho.OnConnectHandler) (paho.Client, error) {
	o := paho.NewClientOptions().SetOnConnectHandler(onConnect).
		AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).SetOrderMatters(false).SetKeepAlive(5 * time.Second)
	c := paho.NewClient(o)
	t.Cleanup(func() { c.Disconnect(50) })
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s as %s: %v", url, id, tok.Error())
	}
	return c, nil
}

func publish(t testing.TB, c paho.Client, topic string, qos byte, payload []byte) {
	t.Helper()
	if err := tryPublish(c, topic, qos, payload); err != nil {
		t.Fatal(err)
	}
}

// tryPublish is publish returning its error, for goroutines other than the
// test's.
func tryPublish(c paho.Client, topic string, qos byte, payload []byte) error {
	tok := c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		return fmt.Errorf("publish %s: %v", topic, tok.Error())
	}
	return nil
}

// child is a daemon running as a child process.
type child struct {
	cmd      *exec.Cmd
	httpAddr string
	waited   chan struct{} // closed when the process has exited
	waitErr  error
}

// startChild runs the daemon on the config file as a child process and waits
// until it reports ready.
func startChild(t testing.TB, cfgPath string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envDaemonConfig+"="+cfgPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, waited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if addr, ok := strings.CutPrefix(line, "READY "); ok {
				ready <- strings.TrimSpace(addr)
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { c.waitErr = cmd.Wait(); close(c.waited) }()
	select {
	case c.httpAddr = <-ready:
	case <-c.waited:
		t.Fatalf("daemon child exited before ready: %v", c.waitErr)
	case <-time.After(60 * time.Second):
		c.kill()
		t.Fatalf("daemon child not ready")
	}
	t.Cleanup(c.kill)
	return c
}

// kill ends the child with SIGKILL and waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.waited
}

// term stops the child with SIGTERM and waits for a clean exit.
func (c *child) term(t testing.TB) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.waited:
		if c.waitErr != nil {
			t.Fatalf("daemon child did not exit cleanly: %v", c.waitErr)
		}
	case <-time.After(60 * time.Second):
		c.kill()
		t.Fatalf("daemon child did not stop on SIGTERM")
	}
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// childConfig writes the config file of a daemon child whose embedded
// broker listens on a fixed free port (the same across restarts) and
// returns the file's path and the broker's URL.
func childConfig(t testing.TB, dataDir, fnDir string) (cfgPath, url string) {
	t.Helper()
	port := freePort(t)
	cfgPath = filepath.Join(t.TempDir(), "moongate.yaml")
	cfg := testConfig(dataDir, fnDir, fmt.Sprintf("mqtt:\n  embedded: {listen: \"127.0.0.1:%d\"}\n", port))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, fmt.Sprintf("tcp://127.0.0.1:%d", port)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// A stop asked for while the daemon starts (SIGTERM during the inbox
// resume) is a clean stop: Run returns no error and logs none, and the
// store opens again. With and without a functions directory.
func TestStopWhileStarting(t *testing.T) {
	dir := t.TempDir()
	fnDir := filepath.Join(dir, "functions")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFunction(t, fnDir, "f", "function handle(e) end", "triggers:\n  - mqtt: t/{device}\n")
	for i, fns := range []string{"", fnDir, ""} {
		cfg, err := config.Parse("test.yaml", []byte(testConfig(filepath.Join(dir, "data"), fns, "")))
		if err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		d, err := NewDaemon(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			cancel()
			t.Fatalf("daemon %d: %v", i, err)
		}
		cancel() // before Run: every start-up step sees a context that ended
		if err := d.Run(ctx); err != nil {
			t.Fatalf("run %d with its context ended while starting: %v", i, err)
		}
		if strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("run %d logged errors for a stop while starting:\n%s", i, logs.String())
		}
	}
}

// Package mqtttest starts real MQTT brokers for tests in other packages.
//
// StartMosquitto runs the Debian mosquitto binary on a free loopback port
// with a configuration file it writes (persistence on, large queues, Nagle
// off), waits until it accepts connections, and stops it when the test ends.
// StartSubackHold is a proxy that plays a broker too busy to answer a
// SUBSCRIBE in time.
package mqtttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MosquittoPath is the broker binary used by StartMosquitto.
var MosquittoPath = "/usr/sbin/mosquitto"

// ErrNotReady is returned (through t.Fatal) when mosquitto does not accept
// connections in time.
var ErrNotReady = errors.New("mqtttest: mosquitto not accepting connections")

// Option changes how StartMosquitto configures the broker.
type Option func(*options)

type options struct {
	extra       []string
	persistence bool
	anonymous   bool
	readyWait   time.Duration
}

// WithConfig appends lines to the generated mosquitto.conf (for example
// "max_inflight_messages 5" or "password_file /path").
func WithConfig(lines ...string) Option {
	return func(o *options) { o.extra = append(o.extra, lines...) }
}

// WithoutPersistence turns persistence off.
func WithoutPersistence() Option { return func(o *options) { o.persistence = false } }

// WithoutAnonymous sets allow_anonymous false (add a password_file with
// WithConfig).
func WithoutAnonymous() Option { return func(o *options) { o.anonymous = false } }

// Mosquitto is a running mosquitto process owned by a test. Methods are safe
// for concurrent use.
type Mosquitto struct {
	t    testing.TB
	dir  string
	conf string
	port int
	opts options

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartMosquitto starts mosquitto on 127.0.0.1 and a free port, waits until
// it accepts TCP connections, and registers a cleanup that stops it. If the
// binary is missing the test fails (`make test` installs it).
func StartMosquitto(t testing.TB, opts ...Option) *Mosquitto {
	t.Helper()
	o := options{persistence: true, anonymous: true, readyWait: 10 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	if _, err := os.Stat(MosquittoPath); err != nil {
		t.Fatalf("mqtttest: %s not found (apt-get install mosquitto): %v", MosquittoPath, err)
	}
	m := &Mosquitto{t: t, dir: t.TempDir(), opts: o}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("mqtttest: free port: %v", err)
		}
		m.port = port
		if err := m.writeConfig(); err != nil {
			t.Fatalf("mqtttest: %v", err)
		}
		if lastErr = m.start(); lastErr == nil {
			t.Cleanup(m.Stop)
			return m
		}
	}
	t.Fatalf("mqtttest: start mosquitto: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (m *Mosquitto) writeConfig() error {
	data := filepath.Join(m.dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	lines := []string{
		"listener " + strconv.Itoa(m.port) + " 127.0.0.1",
		"allow_anonymous " + strconv.FormatBool(m.opts.anonymous),
		"max_queued_messages 100000",
		"set_tcp_nodelay true",
		"log_dest file " + filepath.Join(m.dir, "mosquitto.log"),
		"log_type error",
		"log_type warning",
		"log_type notice",
	}
	if os.Geteuid() == 0 {
		// mosquitto started as root drops to user "mosquitto", which cannot
		// write the test's private temp dir (log, persistence).
		lines = append(lines, "user root")
	}
	if m.opts.persistence {
		lines = append(lines, "persistence true", "persistence_location "+data+"/")
	} else {
		lines = append(lines, "persistence false")
	}
	lines = append(lines, m.opts.extra...)
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	return os.WriteFile(m.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

func (m *Mosquitto) start() error {
	cmd := exec.Command(MosquittoPath, "-c", m.conf)
	// Own process group (a test's Ctrl-C does not hit it twice) and killed
	// with the test process if that dies without running cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	deadline := time.Now().Add(m.opts.readyWait)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited during start-up: %s", m.logTail())
		default:
		}
		c, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond) // poll interval while waiting for readiness
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("%w within %v: %s", ErrNotReady, m.opts.readyWait, m.logTail())
}

func (m *Mosquitto) logTail() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Port returns the TCP port mosquitto listens on (it stays the same across
// Restart).
func (m *Mosquitto) Port() int { return m.port }

// Addr returns "127.0.0.1:PORT".
func (m *Mosquitto) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// URL returns "tcp://127.0.0.1:PORT" for paho.
func (m *Mosquitto) URL() string { return "tcp://" + m.Addr() }

// Dir returns the directory holding the configuration, log and persistence
// files.
func (m *Mosquitto) Dir() string { return m.dir }

// Log returns the last part of mosquitto's log, for failure messages.
func (m *Mosquitto) Log() string { return m.logTail() }

// Kill ends mosquitto with SIGKILL (no persistence flush) and waits for it.
func (m *Mosquitto) Kill() { m.signal(syscall.SIGKILL) }

// Stop ends mosquitto with SIGTERM (it saves its persistence file) and waits
// for it. Stopping a stopped broker does nothing.
func (m *Mosquitto) Stop() { m.signal(syscall.SIGTERM) }

func (m *Mosquitto) signal(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops mosquitto if it runs and starts it again on the same port
// with the same persistence directory, waiting until it accepts
// connections.
func (m *Mosquitto) Restart() {
	m.t.Helper()
	m.Stop()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = m.start(); err == nil {
			return
		}
		if !strings.Contains(err.Error(), "in use") {
			break
		}
		time.Sleep(100 * time.Millisecond) // the port is still in TIME_WAIT/closing; retry
	}
	m.t.Fatalf("mqtttest: restart mosquitto: %v", err)
}

// WaitReady polls until mosquitto accepts a TCP connection or ctx is done.
func (m *Mosquitto) WaitReady(ctx context.Context) error {
	for {
		c, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNotReady, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process (moongate or mosquitto) started by the benchmark.
type proc struct {
	name   string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stderr *bytes.Buffer
}

// startProc starts argv with its own process group; the child is killed if
// the benchmark dies.
func startProc(name string, argv []string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), stderr: &bytes.Buffer{}}
	cmd.Stderr = &limitedWriter{b: p.stderr, max: 64 << 10}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// limitedWriter keeps the first max bytes.
type limitedWriter struct {
	b   *bytes.Buffer
	max int
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	if room := w.max - w.b.Len(); room > 0 {
		w.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits (SIGKILL after 20 s). It returns an error
// when the process did not exit cleanly.
func (p *proc) stop() error {
	if p.exited() {
		return fmt.Errorf("%s exited early: %v: %s", p.name, p.err, tail(p.stderr.String()))
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop on SIGTERM", p.name)
	}
	if p.err != nil {
		return fmt.Errorf("%s: %v: %s", p.name, p.err, tail(p.stderr.String()))
	}
	return nil
}

func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1500 {
		s = "..." + s[len(s)-1500:]
	}
	return s
}

// procStats is a sample of /proc/PID.
type procStats struct {
	RSS, HWM   int64 // bytes (VmRSS, VmHWM)
	CPU        time.Duration
	WriteBytes int64 // /proc/PID/io write_bytes (bytes sent to the block layer)
	WCharBytes int64 // /proc/PID/io wchar (bytes passed to write calls)
}

func readProcStats(pid int) (procStats, error) {
	var s procStats
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			s.RSS = v << 10
		case "VmHWM:":
			s.HWM = v << 10
		}
	}
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may contain spaces): state is
	// field 3, utime 14, stime 15.
	rest := string(stat[bytes.LastIndexByte(stat, ')')+2:])
	f := strings.Fields(rest)
	if len(f) > 13 {
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		s.CPU = time.Duration(ut+st) * time.Second / clockTicks
	}
	if io, err := os.ReadFile(dir + "/io"); err == nil {
		for line := range strings.SplitSeq(string(io), "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "write_bytes":
				s.WriteBytes = n
			case "wchar":
				s.WCharBytes = n
			}
		}
	}
	return s, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP waits until addr accepts connections, the process exits, or ctx ends.
func waitTCP(ctx context.Context, p *proc, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited during start-up: %v: %s", p.name, p.err, tail(p.stderr.String()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w", p.name, addr, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// mosquitto is a mosquitto broker on a random loopback port.
type mosquitto struct {
	*proc
	addr string
}

// MosquittoPath is the mosquitto binary (Debian package mosquitto).
var MosquittoPath = "/usr/sbin/mosquitto"

// startMosquitto starts mosquitto with the settings of mqtt/mqtttest
// (no persistence, TCP_NODELAY, deep queues) and max_inflight_messages
// inflight.
func startMosquitto(ctx context.Context, dir string, inflight int) (*mosquitto, error) {
	if _, err := os.Stat(MosquittoPath); err != nil {
		return nil, fmt.Errorf("mosquitto not installed (scripts/test-deps.sh installs it): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lines := []string{
		"listener " + strconv.Itoa(port) + " 127.0.0.1",
		"allow_anonymous true",
		"max_queued_messages 1000000",
		"max_inflight_messages " + strconv.Itoa(inflight),
		"set_tcp_nodelay true",
		"persistence false",
		"log_dest file " + filepath.Join(dir, "mosquitto.log"),
		"log_type error",
		"log_type warning",
	}
	if os.Geteuid() == 0 {
		lines = append(lines, "user root")
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc("mosquitto", []string{MosquittoPath, "-c", conf})
	if err != nil {
		return nil, err
	}
	m := &mosquitto{proc: p, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waitTCP(wctx, p, m.addr); err != nil {
		p.kill()
		return nil, err
	}
	return m, nil
}

// moongate is a `moongate serve` child process.
type moongate struct {
	*proc
	mqttAddr, apiAddr string
	dataDir, fnDir    string
	started, ready    time.Time
}

// startMoongate writes a configuration into dir and starts binary serve on
// it; mqttSection is the YAML of the mqtt section ("" for the embedded
// broker on a random port) and extra is appended.
func startMoongate(ctx context.Context, binary, dir, mqttSection, extra string) (*moongate, error) {
	mg := &moongate{dataDir: filepath.Join(dir, "data"), fnDir: filepath.Join(dir, "functions")}
	if err := os.MkdirAll(mg.fnDir, 0o755); err != nil {
		return nil, err
	}
	apiPort, err := freePort()
	if err != nil {
		return nil, err
	}
	mg.apiAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))
	if mqttSection == "" {
		mqttPort, err := freePort()
		if err != nil {
			return nil, err
		}
		mg.mqttAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(mqttPort))
		mqttSection = fmt.Sprintf("mqtt:\n  embedded: {listen: %q, allow_anonymous: true}\n", mg.mqttAddr)
	}
	// The store section is the benchmark's (durability always) unless the
	// extra configuration brings its own, which must then say so itself.
	storeSection := "store: {durability: always}\n"
	if strings.HasPrefix(extra, "store:") || strings.Contains(extra, "\nstore:") {
		storeSection = ""
	}
	cfg := fmt.Sprintf("gateway_id: bench\ndata_dir: %q\nfunctions_dir: %q\nlog: {level: warn}\n%sapi: {listen: %q}\n%s%s",
		mg.dataDir, mg.fnDir, mqttSection, mg.apiAddr, storeSection, extra)
	cfgPath := filepath.Join(dir, "moongate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	return mg, nil
}

// run starts the process and waits until /readyz answers 200.
func (mg *moongate) run(ctx context.Context, binary string) error {
	mg.started = time.Now()
	p, err := startProc("moongate", []string{binary, "serve", "--config", filepath.Join(filepath.Dir(mg.fnDir), "moongate.yaml")})
	if err != nil {
		return err
	}
	mg.proc = p
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + mg.apiAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				mg.ready = time.Now()
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("moongate exited during start-up: %v: %s", p.err, tail(p.stderr.String()))
		}
		select {
		case <-wctx.Done():
			p.kill()
			return errors.New("moongate not ready within 60s: " + tail(p.stderr.String()))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Package gwproc runs a moongate binary as a real process for the deploy
// tests and the footprint tool: it writes a configuration with loopback
// listeners on free ports (port 0), starts `moongate serve`, learns the
// bound addresses from the JSON log, waits for GET /readyz, and stops the
// process with SIGTERM. The binary may run under an emulator (qemu-arm,
// qemu-aarch64) given as a command prefix.
//
// A Proc is safe for concurrent use by its methods; the zero value is not
// usable: create one with Start.
package gwproc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options describe one daemon process.
type Options struct {
	// Command is the binary, optionally behind an emulator:
	// {"qemu-aarch64", "dist/moongate-linux-arm64"}. Required.
	Command []string
	// DataDir is the store directory. Required.
	DataDir string
	// FunctionsDir is the functions directory; "" = none.
	FunctionsDir string
	// ConfigPath is where the configuration is written. Required.
	ConfigPath string
	// ExtraConfig is appended to the generated YAML (top-level keys other
	// than data_dir, functions_dir, log, mqtt and api).
	ExtraConfig string
	// APIConfig is added inside the api section (YAML lines indented by
	// two spaces), e.g. "  tokens:\n    - {name: t, scope: read, hash: ...}\n".
	APIConfig string
	// Env is added to the process environment.
	Env []string
	// Args are added to the `serve` command line (e.g. --debug-listen).
	Args []string
	// Log receives every line the daemon writes (may be nil).
	Log io.Writer
}

// Proc is a running daemon.
type Proc struct {
	cmd     *exec.Cmd
	started time.Time
	readyAt time.Time
	exited  chan struct{}
	waitErr error

	mu        sync.Mutex
	apiAddr   string
	mqttAddr  string
	debugAddr string
	lines     []string
	addrSeen  chan struct{}
}

// WriteConfig writes the configuration of o: JSON logs, the embedded
// broker and the HTTP API on 127.0.0.1 port 0, plus o.ExtraConfig.
func WriteConfig(o Options) error {
	cfg := fmt.Sprintf("data_dir: %q\nfunctions_dir: %q\nlog:\n  format: json\nmqtt:\n  embedded:\n    listen: 127.0.0.1:0\napi:\n  listen: 127.0.0.1:0\n%s%s",
		o.DataDir, o.FunctionsDir, o.APIConfig, o.ExtraConfig)
	return os.WriteFile(o.ConfigPath, []byte(cfg), 0o600)
}

// Start writes the configuration, starts `serve` and returns once the
// daemon answers 200 on /readyz, or fails when ctx ends first or the
// process exits.
func Start(ctx context.Context, o Options) (*Proc, error) {
	if len(o.Command) == 0 || o.DataDir == "" || o.ConfigPath == "" {
		return nil, errors.New("gwproc: Command, DataDir and ConfigPath are required")
	}
	if err := WriteConfig(o); err != nil {
		return nil, fmt.Errorf("gwproc: write config: %w", err)
	}
	argv := append([]string{}, o.Command...)
	for i, a := range argv {
		// The process runs in the configuration's directory: make paths
		// of the binary (and of the one behind an emulator) absolute.
		if strings.Contains(a, "/") && !filepath.IsAbs(a) {
			abs, err := filepath.Abs(a)
			if err != nil {
				return nil, err
			}
			argv[i] = abs
		}
	}
	args := append(argv[1:], "serve", "--config", o.ConfigPath)
	args = append(args, o.Args...)
	cmd := exec.Command(argv[0], args...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Dir = filepath.Dir(o.ConfigPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, exited: make(chan struct{}), addrSeen: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("gwproc: start %s: %w", o.Command[0], err)
	}
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		p.scan(stderr, o.Log)
	}()
	go func() {
		<-scanDone
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w\n%s", err, p.Output())
	}
	return p, nil
}

func (p *Proc) scan(r io.Reader, log io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if log != nil {
			fmt.Fprintln(log, line)
		}
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		_ = json.Unmarshal([]byte(line), &rec)
		p.mu.Lock()
		if len(p.lines) < 10000 {
			p.lines = append(p.lines, line)
		}
		switch rec.Msg {
		case "api listening":
			p.apiAddr = rec.Addr
		case "embedded MQTT broker listening":
			p.mqttAddr = rec.Addr
		case "profiling handlers on loopback":
			p.debugAddr = rec.Addr
		}
		if p.apiAddr != "" && p.mqttAddr != "" && p.addrSeen != nil {
			close(p.addrSeen)
			p.addrSeen = nil
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *Proc) waitReady(ctx context.Context) error {
	p.mu.Lock()
	seen := p.addrSeen
	p.mu.Unlock()
	if seen != nil {
		select {
		case <-seen:
		case <-p.exited:
			return fmt.Errorf("gwproc: daemon exited before listening: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("gwproc: no listening addresses in the log: %w", ctx.Err())
		}
	}
	url := "http://" + p.APIAddr() + "/readyz"
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.readyAt = time.Now()
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-p.exited:
			return fmt.Errorf("gwproc: daemon exited before ready: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("gwproc: /readyz not ready: %w", ctx.Err())
		}
	}
}

// ReadyAfter is the time from the process start to the first 200 of
// /readyz seen by Start (polled every 2 ms); valid after Start returned.
func (p *Proc) ReadyAfter() time.Duration { return p.readyAt.Sub(p.started) }

// APIAddr is the bound address of the HTTP API (host:port).
func (p *Proc) APIAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.apiAddr
}

// MQTTAddr is the bound address of the embedded broker (host:port).
func (p *Proc) MQTTAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mqttAddr
}

// DebugAddr is the bound address of the profiling handlers when the
// daemon was started with --debug-listen (Options.Args), else "".
func (p *Proc) DebugAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.debugAddr
}

// PID is the process id (of the emulator when there is one).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output is every log line seen so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Stop sends SIGTERM and waits for the exit; it fails when the process
// does not exit before ctx ends (it is then killed) or exits non-zero.
func (p *Proc) Stop(ctx context.Context) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.waitErr != nil {
			return fmt.Errorf("gwproc: daemon exited after SIGTERM: %w", p.waitErr)
		}
		return nil
	case <-ctx.Done():
		p.Kill()
		return fmt.Errorf("gwproc: daemon did not stop after SIGTERM: %w", ctx.Err())
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Memory is a sample of the process's memory from /proc/PID/status, in
// bytes.
type Memory struct {
	RSS  int64 // VmRSS: resident now
	HWM  int64 // VmHWM: peak resident
	Anon int64 // RssAnon: heap, stacks (the Go runtime's memory)
	File int64 // RssFile: resident pages of mapped files (binary, Badger's mmaps)
}

// CPU is the processor time the process has used so far (user + system,
// from /proc/PID/stat; of the emulator when there is one).
func (p *Proc) CPU() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID()))
	if err != nil {
		return 0, err
	}
	return statCPU(b)
}

// statCPU reads utime + stime from the contents of /proc/PID/stat.
func statCPU(b []byte) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces
	// and parentheses: the fields counted start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("gwproc: malformed /proc/PID/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// utime and stime are fields 14 and 15 of stat, 12 and 13 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("gwproc: short /proc/PID/stat: %d fields after the name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("gwproc: /proc/PID/stat: bad processor time %q", s)
		}
		ticks += n
	}
	// USER_HZ is 100 on every Linux this runs on.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// Memory reads the process's resident memory.
func (p *Proc) Memory() (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			m.RSS = kb << 10
		case "VmHWM:":
			m.HWM = kb << 10
		case "RssAnon:":
			m.Anon = kb << 10
		case "RssFile:":
			m.File = kb << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("gwproc: no VmRSS in /proc/%d/status", p.PID())
	}
	return m, nil
}

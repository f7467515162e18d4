package firmwareexamples

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
)

// buildLinuxC builds linux-c/ with its Makefile (warnings are errors) into
// a temporary directory.
func buildLinuxC(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"make", "cc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/test-deps.sh (it installs build-essential and libpaho-mqtt-dev)", tool)
		}
	}
	bin := filepath.Join(t.TempDir(), "moongate-device")
	out, err := exec.Command("make", "-C", "linux-c", "WERROR=1", "OUT="+bin).CombinedOutput()
	if err != nil {
		t.Fatalf("make linux-c: %v\n%s(missing MQTTClient.h? apt-get install libpaho-mqtt-dev)", err, out)
	}
	return bin
}

// TestLinuxCDevice: the C device publishes three hot readings to a moongate
// started here, the paired climate function stores them and switches the
// relay on, and the command comes back to the device, which exits 0 once
// it has it. The device logs in with a password and the default ACL.
func TestLinuxCDevice(t *testing.T) {
	bin := buildLinuxC(t)
	// The lowest bcrypt cost keeps the test fast under -race.
	hashed, err := bcrypt.GenerateFromPassword([]byte("pi-secret"), bcrypt.MinCost)
	hash := string(hashed)
	if err != nil {
		t.Fatal(err)
	}
	users := fmt.Sprintf("    users:\n      - {username: pi-1, password_hash: %q}\n", hash)
	p := startDaemon(t, "linux-c", users, "")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	started := time.Now()
	cmd := exec.CommandContext(ctx, bin, "--broker", p.url, "--device", "pi-1", "--username", "pi-1",
		"--count", "3", "--interval-ms", "20", "--temp", "35", "--until-cmd", "1", "--timeout-s", "60")
	cmd.Env = append(os.Environ(), "MOONGATE_DEVICE_PASSWORD=pi-secret")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("device: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	finished := time.Now()
	out := stdout.String()
	if strings.Contains(stderr.String(), "clock not set") {
		t.Errorf("the device found this machine's clock unset:\n%s", stderr.String())
	}
	for _, want := range []string{
		"connected to " + p.url + " as pi-1",
		"published seq=1 temp=35.00", "published seq=3 temp=35.00",
		`command: {"cmd":"relay","on":true}`, "relay: on",
		"done: 3 readings, 0 unsent, 0 dropped, 1 commands, relay on",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("device output lacks %q:\n%s", want, out)
		}
	}

	// Every acknowledged reading is a record, once, in order.
	waitFor(t, 30*time.Second, "3 climate records", func() bool { return len(p.records(t, "climate")) >= 3 })
	recs := p.records(t, "climate")
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	for i, r := range recs {
		var m struct {
			Device string  `json:"device"`
			Seq    int     `json:"seq"`
			Temp   float64 `json:"temp"`
			Relay  bool    `json:"relay"`
			TS     int64   `json:"ts"`
		}
		if err := json.Unmarshal(r.Data, &m); err != nil {
			t.Fatal(err)
		}
		if r.Device != "pi-1" || r.Stream != "climate" || m.Seq != i+1 || m.Temp != 35 || !m.Relay {
			t.Errorf("record %d: %+v %s", i, r, r.Data)
		}
		// The clock is set here: each reading carries its time, in ms.
		if m.TS < started.Add(-time.Second).UnixMilli() || m.TS > finished.Add(time.Second).UnixMilli() {
			t.Errorf("record %d: ts %d outside the run [%d, %d]", i, m.TS, started.UnixMilli(), finished.UnixMilli())
		}
	}

	// Presence: the device said "offline" (retained) before disconnecting.
	o := paho.NewClientOptions().AddBroker(p.url).SetClientID("observer")
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("observer: %v", tok.Error())
	}
	defer c.Disconnect(50)
	status := make(chan string, 4)
	c.Subscribe("devices/pi-1/status", 1, func(_ paho.Client, m paho.Message) {
		status <- fmt.Sprintf("%s retained=%v", m.Payload(), m.Retained())
	})
	select {
	case s := <-status:
		if s != "offline retained=true" {
			t.Errorf("status %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Error("no retained status")
	}
}

// TestLinuxCBuffersWhileGatewayAway: the device starts before the gateway,
// keeps its readings, and sends them all once the gateway is up.
func TestLinuxCBuffersWhileGatewayAway(t *testing.T) {
	bin := buildLinuxC(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := freePort(t)
	var stdout, stderr syncBuffer
	cmd := exec.CommandContext(ctx, bin, "--broker", fmt.Sprintf("tcp://127.0.0.1:%d", port), "--device", "pi-2",
		"--count", "5", "--interval-ms", "20", "--temp", "20", "--timeout-s", "90")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the device has failed to connect at least twice.
	waitFor(t, 60*time.Second, "two failed connects", func() bool {
		return strings.Count(stderr.String(), "connect tcp://") >= 2
	})
	p := startDaemonOnPort(t, port)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("device: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "done: 5 readings, 0 unsent") {
		t.Fatalf("stdout:\n%s", stdout.String())
	}
	waitFor(t, 30*time.Second, "5 records", func() bool { return len(p.records(t, "climate")) >= 5 })
	for i, r := range p.records(t, "climate") {
		if !strings.Contains(string(r.Data), fmt.Sprintf(`"seq":%d,`, i+1)) {
			t.Errorf("record %d: %s", i, r.Data)
		}
	}
}

// TestClimateBadPayloadsAreDeadLettered: malformed, incomplete and
// out-of-range readings end in the dead letters with the function's
// message; good readings from the same device still go through.
func TestClimateBadPayloadsAreDeadLettered(t *testing.T) {
	p := startDaemon(t, "linux-c", "", "pipeline: {retry: {max_attempts: 2, initial_backoff: 5ms, max_backoff: 10ms}}\n")
	o := paho.NewClientOptions().AddBroker(p.url).SetClientID("bad-1")
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	bad := map[string]string{
		`{"seq":1,"temp":`:                     "climate: payload is not JSON",
		`[1,2]`:                                "climate: payload must be a JSON object",
		`{"seq":1}`:                            "climate: temp must be degrees Celsius",
		`{"seq":1,"temp":1e308}`:               "climate: temp must be degrees Celsius",
		`{"seq":"1","temp":20}`:                "climate: seq must be a positive integer",
		`{"seq":1,"temp":20,"hum":400}`:        "climate: hum must be a percentage",
		`{"seq":1,"temp":20,"ts":"yesterday"}`: "climate: ts must be milliseconds",
		`{"seq":1,"temp":20,"x":"` + strings.Repeat("y", 200<<10) + `"}`: "", // large but valid
	}
	for payload := range bad {
		if tok := c.Publish("devices/bad-1/telemetry", 1, false, payload); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	waitFor(t, 60*time.Second, "7 dead letters and 1 record", func() bool {
		dl, err := p.d.Store().ListDeadLetters(context.Background(), "climate", 0, 100)
		return err == nil && len(dl) == 7 && len(p.records(t, "climate")) == 1
	})
	dl, _ := p.d.Store().ListDeadLetters(context.Background(), "climate", 0, 100)
	seen := map[string]bool{}
	for _, d := range dl {
		seen[d.Error] = true
		found := false
		for _, want := range bad {
			if want != "" && strings.Contains(d.Error, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("dead letter with an unexpected error: %q", d.Error)
		}
	}
	if len(seen) < 6 {
		t.Errorf("errors not distinct: %v", seen)
	}
}

// TestFleet1000 runs the simulator with 1,000 devices publishing at QoS 1
// against the embedded broker and the paired fleet function, and checks
// that every acknowledged reading produced exactly one record (by device
// and seq) and that every command came back to its device.
func TestFleet1000(t *testing.T) {
	const devices, count = 1000, 3
	dir := copyFunction(t, "devsim/functions", "fleet", "cmd_every: 10", "cmd_every: 3")
	p := startDaemon(t, dir, "", "")

	var mu sync.Mutex
	acked := map[string]int{}
	var commands sync.Map
	var ncmd int64
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := devsim.Run(ctx, devsim.Config{
		Broker: p.url, Devices: devices, Rate: 4, Jitter: 0.5, QoS: 1, Count: count,
		ConnectRate: 2000, Linger: 2 * time.Minute, DevicePrefix: "fleet-",
		OnAck: func(a devsim.Ack) {
			mu.Lock()
			acked[fmt.Sprintf("%s/%d", a.Device, a.Seq)]++
			mu.Unlock()
		},
		OnCommand: func(device string, payload []byte) {
			if _, dup := commands.LoadOrStore(device, string(payload)); dup {
				t.Errorf("second command for %s: %s", device, payload)
			}
			mu.Lock()
			ncmd++
			if ncmd == devices {
				// Every device is connected and has its command: note what
				// the whole process (gateway, broker, 1,000 simulated
				// devices) costs, and stop lingering.
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				t.Logf("all connected: %d goroutines, Go heap in use %d MiB", runtime.NumGoroutine(), ms.HeapInuse>>20)
				cancel()
			}
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("simulator (%v):\n%s", time.Since(start).Round(time.Millisecond), r)
	if r.Connected != devices || r.Acked != devices*count || r.Unacked != 0 || len(acked) != devices*count {
		t.Fatalf("report: %+v (distinct acks %d)", r, len(acked))
	}
	if r.CommandsReceived != devices {
		t.Fatalf("commands received %d, want %d", r.CommandsReceived, devices)
	}
	commands.Range(func(k, v any) bool {
		if v != fmt.Sprintf(`{"cmd":"ping","seq":%d}`, count) {
			t.Errorf("%s got command %s", k, v)
		}
		return true
	})

	// Every acknowledged reading is durable in the inbox; wait until the
	// function has run on all of them, then compare.
	waitFor(t, 2*time.Minute, "all records", func() bool { return len(p.records(t, "fleet")) >= devices*count })
	recs := p.records(t, "fleet")
	stored := map[string]int{}
	for _, rec := range recs {
		var m struct {
			Seq       int     `json:"seq"`
			LatencyMS float64 `json:"latency_ms"`
		}
		if err := json.Unmarshal(rec.Data, &m); err != nil {
			t.Fatalf("record %s: %v", rec.Data, err)
		}
		stored[fmt.Sprintf("%s/%d", rec.Device, m.Seq)]++
	}
	for k, n := range stored {
		if n != 1 {
			t.Errorf("%s stored %d times", k, n)
		}
	}
	for k := range acked {
		if stored[k] != 1 {
			t.Errorf("%s acknowledged but stored %d times", k, stored[k])
		}
	}
	if len(recs) != devices*count {
		t.Errorf("%d records for %d acknowledged readings", len(recs), devices*count)
	}
	if s := p.d.Gateway().Stats(); s.DeadLettered != 0 {
		t.Errorf("dead letters: %+v", s)
	}
}

// TestMaxClients: mqtt.embedded.max_clients reaches the broker: with 2
// allowed, a third device is refused at CONNECT and keeps retrying.
func TestMaxClients(t *testing.T) {
	p := startDaemon(t, "devsim/functions", "    max_clients: 2\n", "")
	r, err := devsim.Run(context.Background(), devsim.Config{Broker: p.url, Devices: 3, Rate: 20, QoS: 1,
		Duration: 500 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		DevicePrefix: "max-"})
	if err != nil {
		t.Fatal(err)
	}
	// Connected counts devices that got in at least once: the third may,
	// at the very end, when a device that finished has left its slot.
	if r.Connected < 2 || r.ConnectFailures == 0 || !strings.Contains(r.LastError, "CONNACK") {
		t.Fatalf("report %+v", r)
	}
}

// TestFleetSurvivesGatewayRestart: the gateway stops in the middle of a
// simulated fleet's run and comes back on the same port and store; the
// devices reconnect with backoff and resend what was not acknowledged, and
// every acknowledged reading is stored exactly once.
func TestFleetSurvivesGatewayRestart(t *testing.T) {
	const devices, count = 50, 60
	dataDir := t.TempDir()
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	p := startDaemonData(t, dataDir, listen, "devsim/functions", "", "")

	var mu sync.Mutex
	acked := map[string]int{}
	ackedDevices := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan *devsim.Report, 1)
	go func() {
		r, err := devsim.Run(ctx, devsim.Config{
			Broker: p.url, Devices: devices, Rate: 40, Jitter: 0.3, QoS: 1, Count: count, DevicePrefix: "rs-",
			ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond, AckTimeout: time.Minute,
			OnAck: func(a devsim.Ack) {
				mu.Lock()
				acked[fmt.Sprintf("%s/%d", a.Device, a.Seq)]++
				ackedDevices[a.Device] = true
				mu.Unlock()
			},
		})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	// Stop the gateway once every device is publishing and a sixth of the
	// readings are acknowledged (each device needs 1.5 s for all of them).
	waitFor(t, time.Minute, "every device publishing", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedDevices) == devices && len(acked) >= devices*count/6
	})
	p.stop(t)
	mu.Lock()
	atStop := len(acked)
	mu.Unlock()
	p = startDaemonData(t, dataDir, listen, "devsim/functions", "", "")
	r := <-done
	t.Logf("acknowledged %d before the stop\n%s", atStop, r)
	if r.Acked != devices*count || r.Unacked != 0 || len(acked) != devices*count || r.Reconnects == 0 {
		t.Fatalf("report %+v, distinct acks %d", r, len(acked))
	}
	for k, n := range acked {
		if n != 1 {
			t.Errorf("%s acknowledged %d times", k, n)
		}
	}
	waitFor(t, 2*time.Minute, "all records", func() bool { return len(p.records(t, "fleet")) >= devices*count })
	stored := map[string]int{}
	for _, rec := range p.records(t, "fleet") {
		var m struct {
			Seq int `json:"seq"`
		}
		if err := json.Unmarshal(rec.Data, &m); err != nil {
			t.Fatal(err)
		}
		stored[fmt.Sprintf("%s/%d", rec.Device, m.Seq)]++
	}
	for k := range acked {
		if stored[k] != 1 {
			t.Errorf("%s acknowledged, stored %d times", k, stored[k])
		}
	}
	if len(stored) != devices*count {
		t.Errorf("%d distinct stored readings, want %d", len(stored), devices*count)
	}
}

// TestLinuxCBadCommands: commands the C device cannot use (too long, not a
// relay command, a bad "on") are reported and ignored; it keeps running and
// still acts on a good one.
func TestLinuxCBadCommands(t *testing.T) {
	bin := buildLinuxC(t)
	p := startDaemon(t, "linux-c", "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	cmd := exec.CommandContext(ctx, bin, "--broker", p.url, "--device", "pi-3", "--count", "1", "--temp", "20",
		"--until-cmd", "5", "--timeout-s", "60")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the device connected", func() bool { return strings.Contains(stdout.String(), "connected to") })
	c := paho.NewClient(paho.NewClientOptions().AddBroker(p.url).SetClientID("commander"))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	for _, m := range []string{
		`{"cmd":"relay","on":"` + strings.Repeat("x", 300) + `"}`,
		`not json at all`,
		`{"cmd":"reboot"}`,
		`{"cmd":"relay","on":"maybe"}`,
		`{"cmd":"relay","on":true}`,
	} {
		if tok := c.Publish("devices/pi-3/cmd", 1, false, m); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("device: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"command ignored: 323 bytes is too long",
		"command ignored: not a relay command", // twice: not JSON, reboot
		`command ignored: "on" must be true or false`,
		"relay: on",
		"5 commands, relay on",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "not a relay command"); n != 2 {
		t.Errorf("%d 'not a relay command' lines:\n%s", n, out)
	}
}

// TestLinuxCRefusesBadTemp: a fixed temperature that is not a number in
// range is a usage error. "nan" passed the range check (both comparisons
// false) and made every reading "temp":nan, which is not JSON.
func TestLinuxCRefusesBadTemp(t *testing.T) {
	bin := buildLinuxC(t)
	for _, v := range []string{"nan", "-nan", "inf", "200", "x"} {
		out, err := exec.Command(bin, "--device", "d1", "--temp", v, "--count", "1", "--timeout-s", "1").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "bad argument --temp") {
			t.Errorf("--temp %s: %v\n%s", v, err, out)
		}
	}
}

// unsetClockShim builds a preload library that makes CLOCK_REALTIME, as the
// device program itself reads it, start from 1970-01-01 (a board whose
// clock NTP has not set yet). The Paho library's own clock reads (absolute
// timeouts of its condition waits) are left alone.
func unsetClockShim(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "unset_clock.c")
	if err := os.WriteFile(src, []byte(`#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <time.h>

int clock_gettime(clockid_t id, struct timespec *ts) {
	static int (*real)(clockid_t, struct timespec *);
	static struct link_map *program;
	if (!real) {
		real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
		dlinfo(dlopen(NULL, RTLD_LAZY), RTLD_DI_LINKMAP, &program);
	}
	int rc = real(id, ts);
	Dl_info info;
	struct link_map *caller = NULL;
	if (rc == 0 && id == CLOCK_REALTIME &&
	    dladdr1(__builtin_return_address(0), &info, (void **)&caller, RTLD_DL_LINKMAP) && caller == program)
		ts->tv_sec %= 86400 * 10; /* somewhere in the first days of 1970 */
	return rc;
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "unset_clock.so")
	if out, err := exec.Command("cc", "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("build the clock shim: %v\n%s", err, out)
	}
	return lib
}

// TestLinuxCClockNotSet: while the clock is not set (1970), the device
// sends its readings without "ts" instead of a time near 1970, and says
// so; the function stores them with the gateway's receive time.
func TestLinuxCClockNotSet(t *testing.T) {
	bin := buildLinuxC(t)
	shim := unsetClockShim(t)
	p := startDaemon(t, "linux-c", "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--broker", p.url, "--device", "pi-4", "--count", "3",
		"--interval-ms", "20", "--temp", "20", "--timeout-s", "60")
	cmd.Env = append(os.Environ(), "LD_PRELOAD="+shim)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("device: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "clock not set (before 2020): readings go without ts") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	waitFor(t, 30*time.Second, "3 records", func() bool { return len(p.records(t, "climate")) >= 3 })
	now := time.Now().UnixMilli()
	for i, r := range p.records(t, "climate") {
		var m map[string]any
		if err := json.Unmarshal(r.Data, &m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m["ts"]; ok || m["seq"] != float64(i+1) {
			t.Errorf("record %d: %s", i, r.Data)
		}
		// The gateway's receive time stands for it.
		if rec, ok := m["received"].(float64); !ok || now-int64(rec) > 120_000 {
			t.Errorf("record %d: received %v", i, m["received"])
		}
	}
}

// droppingBroker listens on loopback like an MQTT broker that accepts each
// connection (CONNACK, SUBACK, PUBACKs) and closes it 250 ms after the
// device's "online": a broker that drops the device right after accepting
// it, or another board with the same device name taking its session over.
// (250 ms: Paho's synchronous client notices a PUBACK up to 100 ms late; a
// drop before it sees the "online" acknowledged is a failed connect, which
// always had its backoff.) It counts the connections.
func droppingBroker(t *testing.T) (url string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				for {
					typ, err := r.ReadByte()
					if err != nil {
						return
					}
					n, shift := 0, 0
					for {
						b, err := r.ReadByte()
						if err != nil {
							return
						}
						n |= int(b&0x7f) << shift
						if b&0x80 == 0 {
							break
						}
						shift += 7
					}
					body := make([]byte, n)
					if _, err := io.ReadFull(r, body); err != nil {
						return
					}
					switch {
					case typ>>4 == 1: // CONNECT
						c.Write([]byte{0x20, 2, 0, 0})
					case typ>>4 == 8 && n >= 2: // SUBSCRIBE: grant QoS 1
						c.Write([]byte{0x90, 3, body[0], body[1], 1})
					case typ>>4 == 3 && typ&0x06 != 0 && n >= 2: // PUBLISH, QoS 1
						tl := int(body[0])<<8 | int(body[1])
						if len(body) < 4+tl {
							return
						}
						c.Write([]byte{0x40, 2, body[2+tl], body[3+tl]})
						if strings.HasSuffix(string(body[2:2+tl]), "/status") {
							// "online" acknowledged: the device was
							// accepted. Drop it a moment later.
							_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
						}
					}
				}
			}()
		}
	}()
	return "tcp://" + ln.Addr().String(), conns
}

// TestLinuxCBacksOffAfterDrops: a broker that accepts the device and drops
// it at once must not get a reconnect loop: each drop waits the backoff,
// which grows until a connection lasts a minute.
func TestLinuxCBacksOffAfterDrops(t *testing.T) {
	bin := buildLinuxC(t)
	url, conns := droppingBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out syncBuffer
	cmd := exec.CommandContext(ctx, bin, "--broker", url, "--device", "d-drop", "--count", "0",
		"--interval-ms", "1000", "--temp", "20", "--timeout-s", "8")
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 { // 3: --timeout-s reached
		t.Fatalf("device: %v\n%s", err, out.String())
	}
	// Without a backoff after a drop the device reconnected at once: 16-17
	// connections in these 8 s (each takes about 0.45 s here). With it the
	// waits are random in [0, 0.5 s * 2^n]: 4-5, and more than 10 would
	// need nine waits adding up to under 3.5 s, five of them drawn from
	// 0-16 s or more.
	n := conns.Load()
	if n < 2 || n > 10 {
		t.Fatalf("%d connections in 8 s:\n%s", n, out.String())
	}
	if c := int64(strings.Count(out.String(), "connected to ")); c < n-1 {
		t.Errorf("%d connections, %d accepted:\n%s", n, c, out.String())
	}
	t.Logf("%d connections in 8 s", n)
}

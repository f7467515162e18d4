package firmwareexamples

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
)

// runHostSim runs code with micropython/testdata/host_sim.py (main.py on
// python3 against fake board modules); code prints "ok" when it passes.
func runHostSim(t *testing.T, code string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 not found")
	}
	cmd := exec.Command(py, "-c", "import sys\nsys.path.insert(0, 'micropython/testdata')\nimport host_sim as h\n"+code)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	b, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(b)) != "ok" {
		t.Fatalf("%v\n%s", err, b)
	}
}

// TestMicroPythonSurvivesDHTReadError: DHT22 reads fail now and then
// (OSError ETIMEDOUT, "checksum error"): one failure ended main() (with
// the watchdog on, a reset and the queued readings lost). A failed read is
// skipped, as the ESP32 sketch does.
func TestMicroPythonSurvivesDHTReadError(t *testing.T) {
	runHostSim(t, `
import types
calls = [0]
class DHT22:
    def __init__(self, pin): pass
    def measure(self):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(110)  # ETIMEDOUT, as dht_readinto raises it
    def temperature(self): return 21.5
    def humidity(self): return 40.0
dht = types.ModuleType("dht")
dht.DHT22 = DHT22
sys.modules["dht"] = dht
h.run(120, SENSOR="dht22")
r = h.readings()
h.check(len(r) >= 9, "%d readings in 120 s" % len(r))
print("ok")
`)
}

// TestMicroPythonSlowGatewayFeedsWatchdog: a connect waits for CONNACK,
// SUBACK and the status PUBACK in a row, then the boot event and the first
// reading, without feeding the watchdog: a gateway answering in 2 s a
// packet (a loaded Pi) reset the board at every connect. Each wait feeds it.
func TestMicroPythonSlowGatewayFeedsWatchdog(t *testing.T) {
	runHostSim(t, `
orig = h.fake_umqtt
def slow():
    pkg, m = orig()
    C = m.MQTTClient
    ow, oc = C._wait, C.connect
    def _wait(self, what):
        h.W.clock.advance(2000)
        return ow(self, what)
    def connect(self, *a, **k):
        r = oc(self, *a, **k)
        h.W.clock.advance(2000)
        return r
    C._wait, C.connect = _wait, connect
    return pkg, m
h.fake_umqtt = slow
h.run(120)
h.check_watchdog()
print("ok")
`)
}

// TestMicroPythonSurvivesConnectionClosedBeforeCONNACK: umqtt.simple reads
// an empty response from a connection the broker closed (moongate does so
// to shed a reconnecting fleet) and fails with IndexError, which main()
// did not catch (board reset, queue lost).
func TestMicroPythonSurvivesConnectionClosedBeforeCONNACK(t *testing.T) {
	runHostSim(t, `
orig = h.fake_umqtt
def closing():
    pkg, m = orig()
    C = m.MQTTClient
    oc = C.connect
    def connect(self, *a, **k):
        if h.W.attempts == 0:
            h.W.attempts += 1
            self.raw = h.Sock()
            self.sock = self.raw
            resp = b""  # sock.read(4) on a connection the broker closed
            assert resp[0] == 0x20 and resp[1] == 0x02
        return oc(self, *a, **k)
    C.connect = connect
    return pkg, m
h.fake_umqtt = closing
h.run(120)
h.check(len(h.W.connects) == 1 and len(h.readings()) >= 9, "%d connects, %d readings" % (len(h.W.connects), len(h.readings())))
print("ok")
`)
}

// TestLinuxCOnlyRelayCommandsSwitchTheRelay: the command parser looked for
// "relay" anywhere after the "cmd" key, so {"cmd":"reboot","target":
// "relay","on":true} switched the relay on.
func TestLinuxCOnlyRelayCommandsSwitchTheRelay(t *testing.T) {
	bin := buildLinuxC(t)
	p := startDaemon(t, "linux-c", "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	cmd := exec.CommandContext(ctx, bin, "--broker", p.url, "--device", "pi-9", "--count", "1", "--temp", "20",
		"--until-cmd", "2", "--timeout-s", "60")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the device connected", func() bool { return strings.Contains(stdout.String(), "connected to") })
	c := paho.NewClient(paho.NewClientOptions().AddBroker(p.url).SetClientID("commander-9"))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	for _, m := range []string{
		`{"cmd":"reboot","target":"relay","on":true}`,
		`{"cmd":"ping","note":"the \"relay\" stays","on":true}`,
	} {
		if tok := c.Publish("devices/pi-9/cmd", 1, false, m); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("device: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if strings.Contains(out, "relay: on") || strings.Count(out, "not a relay command") != 2 {
		t.Errorf("a command that is not a relay command switched the relay:\n%s", out)
	}
}

// TestDevsimBacksOffAfterDrops: a connection the broker drops at once
// counts as a failure until one has lasted (the firmware contract); every
// CONNACK reset the backoff, so devsim reconnected in a tight loop.
func TestDevsimBacksOffAfterDrops(t *testing.T) {
	url, conns := droppingBroker(t)
	r, err := devsim.Run(context.Background(), devsim.Config{Broker: url, Devices: 1, QoS: 1, Rate: 1,
		Duration: 8 * time.Second, DevicePrefix: "drop-", ReconnectMin: 500 * time.Millisecond, ReconnectMax: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n > 10 {
		t.Fatalf("%d connections in 8 s (backoff 0.5 s .. 30 s):\n%v", n, r)
	}
}

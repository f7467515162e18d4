package gateway

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// cmdLua sends every reading back to its device as a command.
const cmdLua = `
function handle(e, ctx)
  local r = json.decode(e.payload)
  mqtt.publish("devices/" .. e.device .. "/cmd", tostring(r.n), {qos = 1})
  return {n = r.n}
end
`

// commandLog collects the payloads a client receives.
type commandLog struct {
	mu   sync.Mutex
	seen map[string]int
}

func (l *commandLog) handler(_ paho.Client, m paho.Message) {
	l.mu.Lock()
	l.seen[string(m.Payload())]++
	l.mu.Unlock()
}

func (l *commandLog) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// Commands that functions send to a device while it is offline wait in its
// persistent session, and the session survives a restart of the daemon,
// clean (SIGTERM) or not (SIGKILL right after the commands went out): the
// device gets every one when it comes back. Before persisted sessions the
// broker forgot them with the process.
func TestEmbeddedCommandsSurviveRestart(t *testing.T) {
	for _, stop := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(stop, func(t *testing.T) {
			const n = 50
			dataDir, fnDir := t.TempDir(), t.TempDir()
			writeFunction(t, fnDir, "cmd", cmdLua, referenceManifest)
			cfgPath, url := childConfig(t, dataDir, fnDir)
			c := startChild(t, cfgPath)

			// The device subscribes in a persistent session, then goes away.
			dev := &commandLog{seen: map[string]int{}}
			devOpts := func() *paho.ClientOptions {
				return paho.NewClientOptions().AddBroker(url).SetClientID("dev1").SetCleanSession(false).
					SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetDefaultPublishHandler(dev.handler)
			}
			d := paho.NewClient(devOpts())
			if tok := d.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("device connect: %v", tok.Error())
			}
			if tok := d.Subscribe("devices/dev1/cmd", 1, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("device subscribe: %v", tok.Error())
			}
			d.Disconnect(100)

			// Its readings arrive through another connection; an observer
			// sees the commands leave the daemon.
			out := &commandLog{seen: map[string]int{}}
			obs := connect(t, url, "observer", true)
			if tok := obs.Subscribe("devices/dev1/cmd", 1, out.handler); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("observer subscribe: %v", tok.Error())
			}
			sender := connect(t, url, "sender", true)
			for i := 1; i <= n; i++ {
				publish(t, sender, "devices/dev1/telemetry", 1, []byte(`{"n":`+strconv.Itoa(i)+`}`))
			}
			waitFor(t, 60*time.Second, "the commands to go out", func() bool { return out.distinct() == n })
			obs.Disconnect(50)
			sender.Disconnect(50)
			if dev.distinct() != 0 {
				t.Fatal("the offline device received commands")
			}
			if stop == "SIGKILL" {
				c.kill()
			} else {
				c.term(t)
			}

			startChild(t, cfgPath)
			d = paho.NewClient(devOpts())
			if tok := d.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("device reconnect: %v", tok.Error())
			}
			defer d.Disconnect(50)
			waitFor(t, 60*time.Second, fmt.Sprintf("%d commands at the device", n), func() bool { return dev.distinct() == n })
			dev.mu.Lock()
			defer dev.mu.Unlock()
			for i := 1; i <= n; i++ {
				if dev.seen[strconv.Itoa(i)] == 0 {
					t.Errorf("command %d lost", i)
				}
			}
		})
	}
}

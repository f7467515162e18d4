package gateway

import (
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

const statusLua = `
function handle(e, ctx)
  return {s = e.payload}
end
`

// TestExternalRetainedStatusRunsOnce: a device's retained status,
// published while the daemon (external broker) runs, is run once; the
// broker's replay of it when the restarted daemon subscribes again is not
// run (it made a second record at every restart or reconnect).
func TestExternalRetainedStatusRunsOnce(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "status", statusLua, "triggers:\n  - mqtt: devices/{device}/status\n")
	cfg := testConfig(dataDir, fnDir, externalMQTT(m.URL(), "moongate-retained"))
	p := startInProcess(t, cfg)
	dev := connect(t, m.URL(), "d1", true)
	if tok := dev.Publish("devices/d1/status", 1, true, []byte("online")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	waitFor(t, 20*time.Second, "one record", func() bool { return len(allRecords(t, p.d.Store(), "status")) == 1 })
	p.stop(t)

	p = startInProcess(t, cfg)
	// A marker through the same function, after which any replay has come.
	publish(t, dev, "devices/d2/status", 1, []byte("marker"))
	waitFor(t, 20*time.Second, "the marker's record", func() bool {
		for _, r := range allRecords(t, p.d.Store(), "status") {
			if r.Device == "d2" {
				return true
			}
		}
		return false
	})
	n := 0
	for _, r := range allRecords(t, p.d.Store(), "status") {
		if r.Device == "d1" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("one retained publish of d1 made %d records (the daemon restarted once)", n)
	}
}

package gateway

import (
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

const bigPubLua = `
function handle(e, ctx)
  mqtt.publish("out/big", string.rep("x", 8000), {qos = 1})
  return nil
end
`

const smallPubLua = `
function handle(e, ctx)
  mqtt.publish("out/small", "hello", {qos = 1})
  return nil
end
`

// bigPublishGateway runs a daemon in external mode on a mosquitto whose
// max_packet_size is 4,096 (moongate's max_packet_size too), with function
// big (bigLua, on big/{device}) and function small (publishes out/small),
// the store section replaced by store when not empty. It returns the
// daemon, the messages an observer receives on out/#, and a device.
func bigPublishGateway(t *testing.T, clientID, bigLua, store string) (*inProcess, <-chan paho.Message, paho.Client) {
	m := mqtttest.StartMosquitto(t, mqtttest.WithConfig("max_packet_size 4096"))
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "big", bigLua, "triggers:\n  - mqtt: big/{device}\n")
	writeFunction(t, fnDir, "small", smallPubLua, "triggers:\n  - mqtt: small/{device}\n")
	cfg := testConfig(dataDir, fnDir, fmt.Sprintf("mqtt:\n  mode: external\n  external: {broker: %q, client_id: %s, max_packet_size: 4096}\n", m.URL(), clientID))
	if store != "" {
		cfg = strings.Replace(cfg, "store: {durability: always}", store, 1)
	}
	p := startInProcess(t, cfg)
	outs := subscribe(t, connect(t, m.URL(), "observer", true), "out/#")
	return p, outs, connect(t, m.URL(), "d1", true)
}

// waitSmallPublish waits for the small function's publish.
func waitSmallPublish(t *testing.T, p *inProcess, outs <-chan paho.Message) {
	t.Helper()
	select {
	case msg := <-outs:
		if msg.Topic() != "out/small" {
			t.Fatalf("got %s", msg.Topic())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the small function's publish did not go out in 20 s (gateway %+v)", p.d.Gateway().Stats())
	}
}

// waitBigDeadLetter waits for the big publish's dead letter, whose error
// holds want.
func waitBigDeadLetter(t *testing.T, p *inProcess, want string) {
	t.Helper()
	waitFor(t, 10*time.Second, "the big publish's dead letter", func() bool {
		dls, _ := p.d.Store().ListDeadLetters(t.Context(), PublishDeadLetters, 0, 10)
		return len(dls) == 1 && strings.Contains(dls[0].Error, want)
	})
}

// TestExternalOversizeLocalPublishDeadLettered: a function publishes 8,000
// bytes through a broker whose max_packet_size is 4,096. The broker closed
// the connection on it, the publisher retried it every second for ever,
// and every publish behind it (other functions' commands) waited; each
// retry also dropped intake's connection. With max_packet_size set to the
// broker's, the big publish is a publish dead letter and the others go out.
func TestExternalOversizeLocalPublishDeadLettered(t *testing.T) {
	p, outs, dev := bigPublishGateway(t, "moongate-bigpub", bigPubLua, "")
	publish(t, dev, "big/d1", 1, []byte("go"))
	waitFor(t, 20*time.Second, "the big function's commit", func() bool { return p.d.Gateway().Stats().Processed >= 1 })
	publish(t, dev, "small/d1", 1, []byte("go"))
	waitSmallPublish(t, p, outs)
	// The big one is a publish dead letter, the outbox moved on.
	waitBigDeadLetter(t, p, "max_packet_size 4096")
}

// TestExternalPublishUnderPayloadOverPacketLimit: mosquitto's
// max_packet_size counts the whole packet. A 4,090-byte payload passed a
// check of the payload alone against 4,096 (the setting's first form) and
// the broker closed the connection on it again and again; the packet's
// size is what is compared now.
func TestExternalPublishUnderPayloadOverPacketLimit(t *testing.T) {
	p, outs, dev := bigPublishGateway(t, "moongate-bigpub2", `
function handle(e, ctx)
  mqtt.publish("out/big", string.rep("x", 4090), {qos = 1})
  return nil
end
`, "")
	publish(t, dev, "big/d1", 1, []byte("go"))
	publish(t, dev, "small/d1", 1, []byte("go"))
	waitSmallPublish(t, p, outs)
	waitBigDeadLetter(t, p, "a packet of 4104 bytes (payload 4090)")
}

// TestUndeliverablePublishOverDeadLetterQuota: an undeliverable publish
// whose dead letter is larger than the whole dead-letter quota was retried
// every second for ever, holding up every publish behind it (the hang
// max_packet_size was for). The head of its payload is kept instead.
func TestUndeliverablePublishOverDeadLetterQuota(t *testing.T) {
	p, outs, dev := bigPublishGateway(t, "moongate-bigpub3", `
function handle(e, ctx)
  mqtt.publish("out/big", string.rep("x", 100000), {qos = 1})
  return nil
end
`, "store: {durability: always, quotas: {deadletters: {max_bytes: 64KiB}}}")
	publish(t, dev, "big/d1", 1, []byte("go"))
	publish(t, dev, "small/d1", 1, []byte("go"))
	waitSmallPublish(t, p, outs)
	waitBigDeadLetter(t, p, "kept the first 16384 of 100000 payload bytes")
}

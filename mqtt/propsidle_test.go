package mqtt

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// max_queued_bytes_per_client may be as low as max_payload + 64 KiB: the
// largest message the broker takes (payload up to max_payload, topic)
// always fitted a client's empty queue. Its MQTT 5 properties now count
// too, but the broker still takes a PUBLISH whose payload and properties
// together exceed the bound: acknowledged to the publisher, it is then
// dropped for every subscriber, even an idle one with nothing queued (an
// MQTT 3.1.1 subscriber, which is never even sent the properties).
func TestMessageWithPropertiesReachesIdleSubscriber(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}},
		MaxQueuedBytesPerClient: DefaultMaxPayload + 64<<10}, acceptAll, []string{}...)
	sub := dialRaw311Creds(t, e, "idle-sub")
	sub.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/#")...), 1)))
	sub.read(0x90)

	c, _ := dialConnect(t, e, connectV5User("pub"))
	var props []byte
	for range 2 {
		props = append(props, 0x26) // user property
		props = append(props, rawString("k")...)
		props = append(props, rawString(strings.Repeat("v", 60000))...)
	}
	payload := bytes.Repeat([]byte("p"), 250_000) // under max_payload (256 KiB)
	p := append(rawString("devices/u/x"), 0, 1)
	p = append(p, varint(len(props))...)
	p = append(p, props...)
	p = append(p, payload...)
	c.write(rawPacket(0x32, p)) // QoS 1
	if typ, ack := c.readPacket(); typ&0xf0 != 0x40 || (len(ack) > 2 && ack[2] >= 0x80) {
		t.Fatalf("packet %#x % x, want PUBACK success", typ, ack)
	}
	_ = sub.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	h := make([]byte, 1)
	if _, err := sub.conn.Read(h); err != nil {
		t.Fatalf("idle QoS 1 subscriber got nothing (%v); broker dropped %d message(s) (max_queued_bytes_per_client %d, payload %d, properties %d bytes)",
			err, e.Stats().MessagesDropped, e.cfg.MaxQueuedBytesPerClient, len(payload), len(props))
	}
	if h[0]&0xf0 != 0x30 {
		t.Fatalf("packet %#x, want PUBLISH", h[0])
	}
}

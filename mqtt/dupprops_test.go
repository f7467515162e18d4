package mqtt

import (
	"strings"
	"testing"
)

// A queued copy of a message keeps the received packet alive through its
// topic (a string decoded without a copy), so what it holds is the whole
// packet; the queued-bytes bound counts only the properties' decoded
// values. A property repeated in one PUBLISH (a protocol error in MQTT 5,
// accepted by the decoder, which keeps the last) is not counted at all:
// 15 content types of 60,000 bytes followed by a 1-byte one count 1 byte.
// 100 such one-byte messages for one offline subscriber must not hold ~90
// MiB under max_queued_bytes_per_client 1 MiB (the same bound as
// TestQueuedUserPropertiesBounded).
func TestQueuedDuplicatePropertiesBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	sub := dialRaw311Creds(t, e, "offline-sub")
	sub.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/#")...), 1)))
	sub.read(0x90)
	sub.conn.Close()
	waitFor(t, "subscriber offline", 5e9, func() bool { return e.Stats().ClientsConnected == 0 })

	c, _ := dialConnect(t, e, connectV5User("pub"))
	var props []byte
	big := strings.Repeat("c", 60000)
	for range 15 {
		props = append(props, 0x03) // content type
		props = append(props, rawString(big)...)
	}
	props = append(props, 0x03)
	props = append(props, rawString("a")...) // the one decoded and counted
	before := liveHeap()
	const n = 100
	for i := range n {
		p := append(rawString("devices/u/cmd"), 0, byte(i+1))
		p = append(p, varint(len(props))...)
		p = append(p, props...)
		p = append(p, 'x')
		c.write(rawPacket(0x32, p)) // QoS 1
		if typ, _ := c.readPacket(); typ&0xf0 != 0x40 {
			t.Fatalf("packet %#x, want PUBACK", typ)
		}
	}
	grew := liveHeap() - before
	t.Logf("in flight %d, dropped %d; heap grew %d MiB (max_queued_bytes_per_client %d KiB)", e.Stats().Inflight, e.Stats().MessagesDropped, grew>>20, e.cfg.MaxQueuedBytesPerClient>>10)
	if grew > 16<<20 {
		t.Fatalf("%d one-byte messages queued for one offline client hold %d MiB (bound: 2 x %d KiB)", n, grew>>20, e.cfg.MaxQueuedBytesPerClient>>10)
	}
}

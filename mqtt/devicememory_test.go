package mqtt

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// What one logged-in device can make the embedded broker hold (a review,
// 2026-11-29, found each of these growing the heap by tens or hundreds of
// MiB; each test failed before its fix).

// A subscription kept the whole SUBSCRIBE packet it came in alive (the
// filter string pointed into the decode buffer). 100 SUBSCRIBEs of ~1 MiB,
// each with one small allowed filter and padding filters the ACL refuses:
// 100 subscriptions, about 1.4 KB each, must cost well under 8 MiB (they
// cost 92 MiB).
func TestSubscriptionDoesNotPinPacket(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("subpin", "u", "pw", "", ""))
	pad := "x/" + strings.Repeat("a", MaxTopicLen-2) // refused by the ACL: not stored
	before := liveHeap()
	const n = 100
	for i := range n {
		b := []byte{0, byte(i + 1)}
		b = append(append(b, rawString(fmt.Sprintf("devices/u/s%d", i))...), 1)
		for range 900 {
			b = append(append(b, rawString(pad)...), 1)
		}
		c.write(rawPacket(0x82, b))
		typ, ack := c.readPacket()
		if typ&0xf0 != 0x90 || ack[2] != 1 || ack[3] != 0x80 {
			t.Fatalf("SUBACK %#x % x", typ, ack[:4])
		}
	}
	grew := liveHeap() - before
	cl, _ := e.srv.Clients.Get("subpin")
	t.Logf("%d subscriptions held; heap grew %d MiB", len(cl.State.Subscriptions.GetAll()), grew>>20)
	if grew > 8<<20 {
		t.Fatalf("%d small subscriptions grew the heap by %d MiB (each pins its ~960 KiB SUBSCRIBE packet)", n, grew>>20)
	}
}

// varint encodes an MQTT variable byte integer.
func varint(n int) []byte { return appendHeader(nil, 0, n)[1:] }

// An MQTT 5 QoS 2 PUBLISH awaiting its PUBREL kept its whole packet alive:
// the stored PUBREC inherited the publish's user properties, which point
// into the decode buffer. 60 publishes of 1 payload byte and ~1 MiB of user
// properties, no PUBREL: 54 MiB before.
func TestQoS2PubrecDoesNotPinPacket(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	b := append(rawString("MQTT"), 5, 0xC2, 0, 60, 0) // v5, user+pass, clean start, no properties
	b = append(b, rawString("q2pin")...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, _ := dialConnect(t, e, rawPacket(0x10, b))
	var props []byte
	v := strings.Repeat("v", 60000)
	for range 16 {
		props = append(props, 0x26)
		props = append(props, rawString("k")...)
		props = append(props, rawString(v)...)
	}
	before := liveHeap()
	const n = 60
	for i := range n {
		p := append(rawString("devices/u/q2"), 0, byte(i+1))
		p = append(p, varint(len(props))...)
		p = append(p, props...)
		p = append(p, 'x')
		c.write(rawPacket(0x34, p)) // QoS 2
		typ, _ := c.readPacket()
		if typ&0xf0 != 0x50 {
			t.Fatalf("packet %#x, want PUBREC", typ)
		}
	}
	grew := liveHeap() - before
	t.Logf("heap grew %d MiB for %d QoS 2 publishes of 1 payload byte awaiting PUBREL", grew>>20, n)
	if grew > 8<<20 {
		t.Fatalf("%d one-byte QoS 2 publishes awaiting PUBREL grew the heap by %d MiB", n, grew>>20)
	}
}

// Retained messages were bounded by count only (MaxRetained 10000 of up to
// 256 KiB: 2.5 GiB from one device). 2100 retained messages of 256 KiB with
// max_retained_bytes 8 MiB: the rest are delivered, not retained (all 525
// MiB were kept before).
func TestRetainedBytesBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxRetainedBytes: 8 << 20}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("ret", "u", "pw", "", ""))
	before := liveHeap()
	payload := make([]byte, 256<<10)
	const n = 2100
	for i := range n {
		c.write(rawPacket(0x33, append(append(rawString(fmt.Sprintf("devices/u/r%d", i)), byte((i+1)>>8), byte(i+1)), payload...)))
		c.read(0x40)
	}
	grew := liveHeap() - before
	t.Logf("retained %d, refused %d, heap grew %d MiB", e.Stats().Retained, e.Stats().RetainedRefused, grew>>20)
	if grew > 64<<20 || e.Stats().RetainedRefused < n-40 {
		t.Fatalf("one device's retained messages hold %d MiB of heap (max_retained_bytes 8 MiB), %d refused", grew>>20, e.Stats().RetainedRefused)
	}
}

// connectV5DelayedWill is an MQTT 5 CONNECT (user u/pw, clean start, no
// session expiry property: the session ends with the connection) with a
// QoS 0 will to topic, delayed by delay seconds.
func connectV5DelayedWill(id, topic string, delay uint32, will []byte) []byte {
	b := append(rawString("MQTT"), 5, 0xC0|0x04|0x02, 0, 60, 0) // user, pass, will, clean start; no properties
	b = append(b, rawString(id)...)
	b = append(b, 5, 0x18, byte(delay>>24), byte(delay>>16), byte(delay>>8), byte(delay)) // will delay interval
	b = append(b, rawString(topic)...)
	b = append(b, byte(len(will)>>8), byte(len(will)))
	b = append(b, will...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	return rawPacket(0x10, b)
}

// A will is sent when its delay passes or its session ends, whichever
// comes first [MQTT-3.1.3-9]. A device whose session ends with its
// connection (MQTT 5, no session expiry) with a will delayed by an hour:
// the will is due at the abrupt close. It waited the whole delay (up to 136
// years), held in memory.
func TestDelayedWillOfEndedSession(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	sub, _ := dialConnect(t, e, connectWithWill("watcher", "u", "pw", "", ""))
	sub.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/status")...), 0)))
	sub.read(0x90)
	w, _ := dialConnect(t, e, connectV5DelayedWill("dev", "devices/u/status", 3600, []byte("offline")))
	w.conn.Close() // abrupt: the will is due, and the session (expiry 0) ends now
	_ = sub.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 1)
	if _, err := io.ReadFull(sub.conn, hdr); err != nil {
		t.Fatalf("no will 5 s after the session of its client ended: %v", err)
	}
}

// The same as a memory bound: 1,000 abrupt closes under fresh client ids,
// each with a 60 KB will delayed for years, left 64 MiB of parked wills
// (no session remained: MaxSessions did not count them).
func TestDelayedWillsDoNotPileUp(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	will := make([]byte, 60000)
	before := liveHeap()
	const n = 1000
	for i := range n {
		w, _ := dialConnect(t, e, connectV5DelayedWill(fmt.Sprintf("d%d", i), "devices/u/status", 0xfffffff0, will))
		w.conn.Close()
	}
	waitFor(t, "clients gone", 10*time.Second, func() bool { return e.Stats().ClientsConnected == 0 })
	grew := liveHeap() - before
	t.Logf("sessions %d, heap grew %d MiB after %d closed clean connections", e.Stats().Sessions, grew>>20, n)
	if grew > 16<<20 {
		t.Fatalf("%d ended connections left %d MiB of delayed wills", n, grew>>20)
	}
}

// Control: the same will without a delay reaches the watcher.
func TestUndelayedWillSentAtOnce(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	sub, _ := dialConnect(t, e, connectWithWill("watcher", "u", "pw", "", ""))
	sub.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/status")...), 0)))
	sub.read(0x90)
	w, _ := dialConnect(t, e, connectV5DelayedWill("dev", "devices/u/status", 0, []byte("offline")))
	w.conn.Close()
	_ = sub.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, body := sub.readPacket(); typ&0xf0 != 0x30 || !strings.HasSuffix(string(body), "offline") {
		t.Fatalf("packet %#x %q", typ, body)
	}
}

// A subscriber that advertises a topic alias maximum (MQTT 5) gets every
// topic in full: an outbound alias kept the topic of the packet it was made
// for, and so the whole packet, for the life of the connection (mochi
// patch, section 24).
func TestOutboundTopicAliasesDoNotPinPackets(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	b := append(rawString("MQTT"), 5, 0xC2, 0, 60) // v5, user+pass, clean start
	b = append(b, 3, 0x22, 0xff, 0xff)             // properties: topic alias maximum 65535
	b = append(b, rawString("aliaspin")...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, _ := dialConnect(t, e, rawPacket(0x10, b))
	sub := append([]byte{0, 1, 0}, rawString("devices/u/#")...) // packet id 1, no properties
	c.write(rawPacket(0x82, append(sub, 0)))
	if typ, _ := c.readPacket(); typ&0xf0 != 0x90 {
		t.Fatalf("packet %#x, want SUBACK", typ)
	}
	payload := make([]byte, 256<<10)
	before := liveHeap()
	const n = 100
	for i := range n {
		p := append(rawString(fmt.Sprintf("devices/u/t%d", i)), 0) // no properties
		c.write(rawPacket(0x30, append(p, payload...)))            // QoS 0
		if typ, _ := c.readPacket(); typ&0xf0 != 0x30 {
			t.Fatalf("packet %#x, want the PUBLISH back", typ)
		}
	}
	grew := liveHeap() - before
	t.Logf("heap grew %d MiB after %d delivered messages of 256 KiB on new topics", grew>>20, n)
	if grew > 8<<20 {
		t.Fatalf("%d messages delivered (nothing queued, nothing retained) left %d MiB held by the connection's outbound topic aliases", n, grew>>20)
	}
}

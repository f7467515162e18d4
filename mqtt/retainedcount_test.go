package mqtt

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// The count of retained bytes (max_retained_bytes) follows what the broker
// holds. Retained publishes refused after mayRetain (here by the ACL) were
// counted, each with a clone of its topic, and never dropped: 3,000 of
// them with 16 KiB topics held 52 MiB (topics are at most MaxTopicLen
// now; the test uses 20,000 of that length).
func TestRetainedCountIgnoresRefusedPublishes(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("ret", "u", "pw", "", ""))
	before := liveHeap()
	long := strings.Repeat("x", MaxTopicLen-20)
	const n = 20000
	for i := range n {
		topic := fmt.Sprintf("denied/%d/%s", i, long) // not devices/u/#: refused by the ACL
		c.write(rawPacket(0x33, append(append(rawString(topic), byte((i%65535+1)>>8), byte(i%65535+1)), 'p')))
		c.read(0x40)
	}
	grew := liveHeap() - before
	e.retained.mu.Lock()
	entries, total := len(e.retained.size), e.retained.total
	e.retained.mu.Unlock()
	t.Logf("broker retained %d, unauthorized %d; retainedBytes: %d entries, total %d bytes; heap grew %d MiB",
		e.Stats().Retained, e.stats.unauthorized.Load(), entries, total, grew>>20)
	if entries > e.srv.Topics.Retained.Len() || grew > 16<<20 {
		t.Fatalf("%d refused retained publishes left %d entries (%d MiB of heap)", n, entries, grew>>20)
	}
}

// A retained publish checked by mayRetain, then held in the handler (the
// inbox commit), is stored after a clear of the same topic that came in
// meanwhile: the count had the topic at 0 while the broker held the
// payload, and the bound was passed (2 MB held under 1 MiB).
func TestRetainedCountAfterClearRace(t *testing.T) {
	hash, _ := HashPassword("pw")
	entered, release := make(chan struct{}), make(chan struct{})
	h := func(_ context.Context, m *Message) error {
		if len(m.Payload) > 1000 {
			entered <- struct{}{}
			<-release
		}
		return nil
	}
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxRetainedBytes: 1 << 20}, h, "devices/#")
	a, _ := dialConnect(t, e, connectWithWill("a", "u", "pw", "", ""))
	b, _ := dialConnect(t, e, connectWithWill("b", "u", "pw", "", ""))
	payload := make([]byte, 200<<10)
	for i := range 10 {
		topic := fmt.Sprintf("devices/u/r%d", i)
		a.write(rawPacket(0x33, append(append(rawString(topic), 0, 1), payload...)))
		<-entered
		b.write(rawPacket(0x33, append(rawString(topic), 0, 1)))
		b.read(0x40)
		release <- struct{}{}
		a.read(0x40)
	}
	var held int64
	for _, pk := range e.srv.Topics.Retained.GetAll() {
		held += retainedSize(pk.TopicName, pk.Payload, &pk.Properties)
	}
	e.retained.mu.Lock()
	total := e.retained.total
	e.retained.mu.Unlock()
	t.Logf("broker holds %d retained bytes, count %d, bound %d; refused %d", held, total, e.cfg.MaxRetainedBytes, e.Stats().RetainedRefused)
	if held > e.cfg.MaxRetainedBytes || total != held {
		t.Fatalf("retained messages %d bytes over max_retained_bytes %d (counted %d)", held, e.cfg.MaxRetainedBytes, total)
	}
}

// CONNECT properties: an authentication method (kept, not cloned) and a
// large user property (cloned): the method pins the whole packet.
func connectV5AuthMethod(id string, pad int) []byte {
	var props []byte
	props = append(props, 0x15)
	props = append(props, rawString("m")...)
	for range 4 {
		props = append(props, 0x26)
		props = append(props, rawString("k")...)
		props = append(props, rawString(strings.Repeat("v", pad))...)
	}
	b := append(rawString("MQTT"), 5, 0xC0|0x02, 0, 60)
	b = append(b, varint(len(props))...)
	b = append(b, props...)
	b = append(b, rawString(id)...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	return rawPacket(0x10, b)
}

// The CONNECT's authentication method kept the whole packet alive (mochi
// patch 22 cloned the user properties but not the method): 240 KB more per
// client with a 1-byte method.
func TestConnectAuthMethodDoesNotPinPacket(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	var grown [2]int64
	for mi, method := range []bool{false, true} {
		before := liveHeap()
		const n = 40
		for i := range n {
			pk := connectV5AuthMethod(fmt.Sprintf("c%v%d", method, i), 60000)
			if !method {
				pk = connectV5AuthMethod(fmt.Sprintf("c%v%d", method, i), 60000)
				// same packet without the method: drop the 4 bytes 0x15 00 01 'm'
				pk = bytesWithout(pk, []byte{0x15, 0, 1, 'm'})
			}
			_, ack := dialConnect(t, e, pk)
			if i == 0 {
				t.Logf("method %v: CONNACK % x", method, ack[:min(len(ack), 6)])
			}
		}
		grew := liveHeap() - before
		grown[mi] = grew
		t.Logf("method %v: %d clients, heap grew %d MiB", method, n, grew>>20)
	}
	if extra := grown[1] - grown[0]; extra > 4<<20 {
		t.Fatalf("40 clients with an authentication method held %d MiB more", extra>>20)
	}
}

func bytesWithout(pk, cut []byte) []byte {
	s := string(pk)
	i := strings.Index(s, string(cut))
	body := []byte(s[:i] + s[i+len(cut):])
	// re-encode: strip the fixed header (type + varint), fix the property length (-4)
	j := 1
	for body[j]&0x80 != 0 {
		j++
	}
	rest := body[j+1:]
	// rest: "MQTT" string(6) + version(1) + flags(1) + keepalive(2) + varint proplen
	k := 10
	n, m := 0, 0
	for shift := 0; ; shift += 7 {
		n |= int(rest[k+m]&0x7f) << shift
		if rest[k+m]&0x80 == 0 {
			m++
			break
		}
		m++
	}
	out := append([]byte{}, rest[:k]...)
	out = append(out, varint(n-4)...)
	out = append(out, rest[k+m:]...)
	return rawPacket(0x10, out)
}

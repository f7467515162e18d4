package mqtt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// connectV5User is an MQTT 5 CONNECT of user u/pw, clean start, no
// properties.
func connectV5User(id string) []byte {
	b := append(rawString("MQTT"), 5, 0xC2, 0, 60, 0)
	b = append(b, rawString(id)...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	return rawPacket(0x10, b)
}

// bulkUserProps is ~960 KiB of MQTT 5 user properties.
func bulkUserProps() []byte {
	var props []byte
	v := strings.Repeat("v", 60000)
	for range 16 {
		props = append(props, 0x26)
		props = append(props, rawString("k")...)
		props = append(props, rawString(v)...)
	}
	return props
}

// A retained message with one payload byte and ~1 MiB of user properties
// counts as one byte against MaxRetainedBytes, but its user property
// strings point into the received packet, which the retained copy keeps
// alive. 60 such retained publishes (60 bytes of payload) must not grow
// the heap by anything like 60 MiB.
func TestRetainedUserPropertiesBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxRetainedBytes: 1 << 20}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectV5User("retprops"))
	props := bulkUserProps()
	before := liveHeap()
	const n = 60
	for i := range n {
		p := append(rawString(fmt.Sprintf("devices/u/r%d", i)), 0, byte(i+1))
		p = append(p, varint(len(props))...)
		p = append(p, props...)
		p = append(p, 'x')
		c.write(rawPacket(0x33, p)) // QoS 1, retain
		if typ, _ := c.readPacket(); typ&0xf0 != 0x40 {
			t.Fatalf("packet %#x, want PUBACK", typ)
		}
	}
	grew := liveHeap() - before
	t.Logf("retained %d (refused %d); heap grew %d MiB with max_retained_bytes 1 MiB", e.Stats().Retained, e.Stats().RetainedRefused, grew>>20)
	if grew > 16<<20 {
		t.Fatalf("%d retained one-byte messages with user properties hold %d MiB (max_retained_bytes 1 MiB)", n, grew>>20)
	}
}

// Messages queued for an offline persistent session are bounded by
// MaxQueuedBytesPerClient (default 4 x MaxPayload = 1 MiB), counting
// payload and topic only: a QoS 1 message with one payload byte and ~1 MiB
// of user properties counts as a few bytes, and pins its whole packet.
// 100 of them for one offline subscriber must not hold ~100 MiB.
func TestQueuedUserPropertiesBounded(t *testing.T) {
	checkQueuedPropsBounded(t, bulkUserProps())
}

// checkQueuedPropsBounded publishes 100 QoS 1 one-byte messages with the
// MQTT 5 properties props for a persistent subscriber that is offline and
// fails unless they hold well under 16 MiB (max_queued_bytes_per_client
// is 1 MiB).
func checkQueuedPropsBounded(t *testing.T, props []byte) {
	t.Helper()
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	sub := dialRaw311Creds(t, e, "offline-sub")
	sub.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/#")...), 1)))
	sub.read(0x90)
	sub.conn.Close()
	waitFor(t, "subscriber offline", 5e9, func() bool { return e.Stats().ClientsConnected == 0 })

	c, _ := dialConnect(t, e, connectV5User("pub"))
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

// dialRaw311Creds connects an MQTT 3.1.1 client as u/pw with clean
// session off.
func dialRaw311Creds(t *testing.T, e *Embedded, id string) *rawClient {
	t.Helper()
	b := append(rawString("MQTT"), 4, 0xC0, 0, 60)
	b = append(b, rawString(id)...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, _ := dialConnect(t, e, rawPacket(0x10, b))
	return c
}

// closedAfter reports whether the broker closes c's connection after it
// wrote pk (read returns EOF or a reset before any packet).
func closedAfter(t *testing.T, c *rawClient, pk []byte) bool {
	t.Helper()
	if _, err := c.conn.Write(pk); err != nil {
		return true
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	_, err := io.ReadFull(c.conn, b)
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// max_retained_bytes counted payloads only: a retained message with a
// one-byte payload on a long topic counted as one byte. It now counts the
// topic (twice: the broker's copy and the byte count's key): 5,000
// retained messages of one byte on 1 KiB topics (10 MiB held, counted 5
// KB) stop at the 1 MiB bound.
func TestRetainedLongTopicsBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxRetainedBytes: 1 << 20}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("rettopics", "u", "pw", "", ""))
	base := e.Stats().Retained // the broker's own ($SYS)
	const n = 5000
	for i := range n {
		topic := fmt.Sprintf("devices/u/%04d/", i)
		topic += strings.Repeat("t", MaxTopicLen-len(topic))
		c.write(rawPacket(0x33, append(append(rawString(topic), byte((i+1)>>8), byte(i+1)), 'x')))
		c.readPacket()
	}
	st := e.Stats()
	st.Retained -= base
	t.Logf("retained %d, refused %d", st.Retained, st.RetainedRefused)
	if max := int64(1<<20) / (2 * MaxTopicLen); st.Retained > max+8 || st.RetainedRefused == 0 {
		t.Fatalf("%d retained one-byte messages on %d-byte topics kept (refused %d), want at most about %d under max_retained_bytes 1 MiB", st.Retained, MaxTopicLen, st.RetainedRefused, max)
	}
}

// A subscription is documented at about 1.4 KB, but a filter could be
// 65,535 bytes (256 of them per session: 16 MiB): a filter longer than
// MaxTopicLen closes the connection; one of MaxTopicLen is taken.
func TestLongSubscriptionFiltersBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	filter := func(n int) string { return "devices/u/" + strings.Repeat("f", n-len("devices/u/")) }
	c := dialRaw311Creds(t, e, "longsub")
	c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString(filter(MaxTopicLen))...), 1)))
	if typ, ack := c.readPacket(); typ&0xf0 != 0x90 || ack[2] != 1 {
		t.Fatalf("SUBACK %#x % x for a filter of %d bytes, want granted", typ, ack, MaxTopicLen)
	}
	if !closedAfter(t, c, rawPacket(0x82, append(append([]byte{0, 2}, rawString(filter(60000))...), 1))) {
		t.Fatal("a SUBSCRIBE with a 60,000-byte filter was answered; want the connection closed")
	}
	c = dialRaw311Creds(t, e, "longunsub")
	if !closedAfter(t, c, rawPacket(0xa2, append([]byte{0, 3}, rawString(filter(60000))...))) {
		t.Fatal("an UNSUBSCRIBE with a 60,000-byte filter was answered; want the connection closed")
	}
}

// The topic tree splits a topic or filter level by level from its start
// again at each level: a 30,000-level topic (60 KB) cost seconds of broker
// processor time per publish and per subscribe. Topics and filters longer
// than MaxTopicLen close the connection before the tree is walked; a will
// topic that long refuses the connection; a function's publish to one is
// an invalid topic.
func TestDeepTopicRefused(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	deep := "devices/u/" + strings.Repeat("a/", 30000) + "x"
	base := e.Stats().Retained // the broker's own ($SYS)
	c, _ := dialConnect(t, e, connectWithWill("deep", "u", "pw", "", ""))
	pk := rawPublish(deep, 1, 1, []byte("x"))
	pk[0] |= 0x01 // retain
	if !closedAfter(t, c, pk) {
		t.Fatal("a publish to a 30,000-level topic was answered; want the connection closed")
	}
	c, _ = dialConnect(t, e, connectWithWill("deepsub", "u", "pw", "", ""))
	if !closedAfter(t, c, rawPacket(0x82, append(append([]byte{0, 3}, rawString("devices/u/"+strings.Repeat("b/", 30000)+"#")...), 1))) {
		t.Fatal("a subscribe to a 30,000-level filter was answered; want the connection closed")
	}
	if n := e.Stats().Retained - base; n != 0 {
		t.Fatalf("%d retained messages, want none", n)
	}
	long := "devices/u/" + strings.Repeat("w", MaxTopicLen)
	conn, err := net.Dial("tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wc := &rawClient{t: t, conn: conn}
	wc.write(connectWithWill("longwill", "u", "pw", long, "bye"))
	if typ, ack := wc.readPacket(); typ&0xf0 != 0x20 || len(ack) < 2 || ack[1] == 0 {
		t.Fatalf("CONNECT with a %d-byte will topic: %#x % x, want CONNACK refused", len(long), typ, ack)
	}
	if err := e.Publish(context.Background(), long, []byte("x"), 1, false); !errors.Is(err, ErrInvalidTopic) {
		t.Fatalf("a local publish to a %d-byte topic: %v, want ErrInvalidTopic", len(long), err)
	}
}

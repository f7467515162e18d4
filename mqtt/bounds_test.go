package mqtt

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Bounds a hostile or buggy device meets in the embedded broker.

// connectWithWill is a raw MQTT 3.1.1 CONNECT with credentials and, when
// willTopic is set, a retained QoS 0 will.
func connectWithWill(id, user, pass, willTopic, will string) []byte {
	b := rawString("MQTT")
	flags := byte(0xC0 | 2) // username, password, clean session
	if willTopic != "" {
		flags |= 0x04 | 0x20 // will flag, will retain
	}
	b = append(b, 4, flags, 0, 60)
	b = append(b, rawString(id)...)
	if willTopic != "" {
		b = append(b, rawString(willTopic)...)
		b = append(b, rawString(will)...)
	}
	b = append(b, rawString(user)...)
	b = append(b, rawString(pass)...)
	return rawPacket(0x10, b)
}

// dialConnect opens a raw connection, sends connect and checks that the
// CONNACK accepts it; it returns the CONNACK's body too.
func dialConnect(t *testing.T, e *Embedded, connect []byte) (*rawClient, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawClient{t, conn}
	c.write(connect)
	typ, ack := c.readPacket()
	if typ != 0x20 || len(ack) < 2 || ack[1] != 0 {
		t.Fatalf("CONNACK type %#x %x", typ, ack)
	}
	return c, ack
}

// TestRetainedWillsBounded: a retained will counts against MaxRetained
// like a retained publish (it is still delivered, not kept): before, 20
// abrupt disconnections with wills on new topics took the retained set
// 20 topics past its bound.
func TestRetainedWillsBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	base := e.srv.Topics.Retained.Len()
	e.cfg.MaxRetained = base + 2 // room for two more retained topics
	for i := range 20 {
		w, _ := dialConnect(t, e, connectWithWill(fmt.Sprintf("w%d", i), "u", "pw", fmt.Sprintf("devices/u/will%d", i), "gone"))
		w.conn.Close() // abrupt: the will is published
		// One at a time (concurrent ones may overshoot the bound by a few,
		// as documented): retained or refused.
		waitFor(t, "the will handled", 10*time.Second, func() bool {
			return e.srv.Topics.Retained.Len()-base+int(e.Stats().RetainedRefused) == i+1
		})
	}
	if n, r := e.srv.Topics.Retained.Len(), e.Stats().RetainedRefused; n != e.cfg.MaxRetained || r != 18 {
		t.Fatalf("MaxRetained %d: %d topics retained, %d wills refused retention", e.cfg.MaxRetained, n, r)
	}
}

// TestTopicAliasesRefused: the embedded broker does not advertise a Topic
// Alias Maximum, so MQTT 5 clients may use no alias [MQTT-3.2.2-17]; one
// that does is disconnected. Before, mochi accepted up to 65,535 aliases
// per connection without advertising them, each keeping the packet it
// came in: 150 refused publishes of 1 MiB held 151 MiB of heap.
func TestTopicAliasesRefused(t *testing.T) {
	hash, _ := HashPassword("pw")
	var handled atomic.Int32
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, func(context.Context, *Message) error {
		handled.Add(1)
		return nil
	}, "devices/#")
	b := append(rawString("MQTT"), 5, 0xC2, 0, 60, 0) // v5, user+pass, clean start, no properties
	b = append(b, rawString("alias")...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, ack := dialConnect(t, e, rawPacket(0x10, b))
	for i := 3; i < len(ack); i++ {
		if ack[i] == 0x22 {
			t.Fatalf("CONNACK %x offers topic aliases", ack)
		}
	}
	p := append(rawString("devices/u/t"), 3, 0x23, 0, 1) // property: topic alias 1
	c.write(rawPacket(0x30, append(p, "v"...)))
	typ, body := c.readPacket()
	if typ != 0xe0 || len(body) < 1 || body[0] != 0x94 {
		t.Fatalf("after a publish with a topic alias: packet %#x %x, want DISCONNECT 0x94 (topic alias invalid)", typ, body)
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("the publish with an alias reached the handler %d times", n)
	}
}

// TestRetainedMessageHeldOnce: a retained message holds its payload once,
// not also the packet it came in (its topic string pointed into it): 100
// retained messages of 256 KiB grew the heap by 50 MiB.
func TestRetainedMessageHeldOnce(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("r", "u", "pw", "", ""))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	payload := make([]byte, 256<<10)
	for i := range 100 {
		c.write(rawPacket(0x33, append(append(rawString(fmt.Sprintf("devices/u/r%d", i)), 0, byte(i+1)), payload...))) // QoS 1, retain
		c.read(0x40)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 40<<20 {
		t.Fatalf("100 retained messages of 256 KiB (25 MiB): heap grew %d MiB", grew>>20)
	}
}

// TestSubscriptionsPerClientBounded: a client holds at most
// MaxSubscriptionsPerClient subscriptions; a SUBSCRIBE to a new filter
// beyond it is refused (0x80 in MQTT 3.1.1) while one it already holds
// is still granted. Before, 50,000 were granted to one client (71 MiB of
// heap, kept in the store for a persistent session).
func TestSubscriptionsPerClientBounded(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxSubscriptionsPerClient: 3}, acceptAll, []string{}...)
	c, _ := dialConnect(t, e, connectWithWill("subs", "u", "pw", "", ""))
	subscribe := func(id byte, filters ...string) []byte {
		b := []byte{0, id}
		for _, f := range filters {
			b = append(append(b, rawString(f)...), 1)
		}
		c.write(rawPacket(0x82, b))
		ack := c.read(0x90)
		return ack[2:]
	}
	if got := subscribe(1, "devices/u/a", "devices/u/b", "devices/u/c"); string(got) != "\x01\x01\x01" {
		t.Fatalf("three subscriptions: SUBACK codes %x", got)
	}
	if got := subscribe(2, "devices/u/d", "devices/u/a"); string(got) != "\x80\x01" {
		t.Fatalf("a fourth filter and one held: SUBACK codes %x, want 80 01", got)
	}
}

// TestQoS2RedeliveryBeforePubrelAcknowledged: an MQTT 5 device whose
// PUBREC was lost resends its QoS 2 PUBLISH (DUP) on a new connection; the
// broker answers PUBREC with success [MQTT-4.3.3-10], not 0x91 (identifier
// in use), which the device would take for a failure of a message the
// gateway has accepted; the handler runs once, and PUBREL completes it.
func TestQoS2RedeliveryBeforePubrelAcknowledged(t *testing.T) {
	var calls atomic.Int32
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true}, func(context.Context, *Message) error {
		calls.Add(1)
		return nil
	}, "devices/#")
	connect := func() []byte {
		props := []byte{0x11, 0, 0, 1, 0x2c} // session expiry 300 s
		b := append(rawString("MQTT"), 5, 0, 0, 60, byte(len(props)))
		b = append(b, props...)
		return rawPacket(0x10, append(b, rawString("d5")...)) // clean start off
	}
	publish := func(dup bool) []byte {
		h := byte(0x34) // QoS 2
		if dup {
			h |= 0x08
		}
		return rawPacket(h, append(append(rawString("devices/d5/t"), 0, 7, 0), "v"...)) // id 7, no properties
	}
	okPubrec := func(body []byte) bool {
		return len(body) >= 2 && body[0] == 0 && body[1] == 7 && (len(body) < 3 || body[2] < 0x80)
	}

	c, _ := dialConnect(t, e, connect())
	c.write(publish(false))
	if typ, body := c.readPacket(); typ != 0x50 || !okPubrec(body) {
		t.Fatalf("first PUBREC: %#x %x", typ, body)
	}
	c.conn.Close() // the device did not get it: it reconnects and resends
	waitFor(t, "the old connection gone", 10*time.Second, func() bool { return e.Stats().ClientsConnected == 0 })

	c, _ = dialConnect(t, e, connect())
	c.write(publish(true))
	c.write(rawPacket(0x62, []byte{0, 7})) // PUBREL
	for {
		typ, body := c.readPacket()
		if typ == 0x50 && !okPubrec(body) {
			t.Fatalf("PUBREC for the redelivered message: %x (reason 0x91 is a failure to an MQTT 5 client)", body)
		}
		if typ == 0x70 {
			break // PUBCOMP
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for one QoS 2 message", n)
	}
}

// TestExpiredSessionUnsubscribed: when an offline persistent session
// expires, its subscriptions leave the broker's topic tree too. Before,
// mochi forgot the client but kept its subscriptions forever: a fleet
// whose devices come and go under new client ids grew the tree without
// bound.
func TestExpiredSessionUnsubscribed(t *testing.T) {
	hash, _ := HashPassword("pw")
	e := startEmbedded(t, EmbeddedConfig{Users: []User{{Username: "u", PasswordHash: hash}}, MaxSessionExpiry: time.Second}, acceptAll, []string{}...)
	b := rawString("MQTT")
	b = append(b, 4, 0xC0, 0, 60) // 3.1.1, username + password, persistent session
	b = append(b, rawString("gone")...)
	b = append(b, rawString("u")...)
	b = append(b, rawString("pw")...)
	c, _ := dialConnect(t, e, rawPacket(0x10, b))
	c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("devices/u/cmd/#")...), 1)))
	c.read(0x90)
	subscribed := func() int { return len(e.srv.Topics.Subscribers("devices/u/cmd/x").Subscriptions) }
	if n := subscribed(); n != 1 {
		t.Fatalf("%d subscribers after SUBSCRIBE", n)
	}
	c.write([]byte{0xe0, 0}) // DISCONNECT: the session stays, offline
	c.conn.Close()
	waitFor(t, "the session to expire", 10*time.Second, func() bool {
		_, ok := e.srv.Clients.Get("gone")
		return !ok
	})
	waitFor(t, "its subscription to go", 5*time.Second, func() bool { return subscribed() == 0 })
}

// TestSessionsBounded: persistent sessions of offline devices count
// against MaxSessions with the connected clients; a connection under a new
// client id past it discards the session (and subscriptions) of the device
// offline the longest, never a connected one, and a device taking its own
// session back does not count as new. Before, one device could make the
// broker keep any number of offline sessions (a new client id per
// connection), each holding up to twice MaxQueuedBytesPerClient.
func TestSessionsBounded(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, MaxClients: 3, MaxSessions: 3}, acceptAll, []string{}...)
	session := func(id string) *rawClient {
		c := dialRaw311(t, e, id, false)
		c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("cmd/"+id)...), 1)))
		c.read(0x90)
		return c
	}
	leave := func(id string, c *rawClient) {
		c.write([]byte{0xe0, 0}) // DISCONNECT: the session stays, offline
		c.conn.Close()
		waitFor(t, id+" offline", 5*time.Second, func() bool {
			cl, ok := e.srv.Clients.Get(id)
			return ok && cl.StopTime() != 0
		})
	}
	subscribed := func(id string) bool { return len(e.srv.Topics.Subscribers("cmd/"+id).Subscriptions) == 1 }
	leave("a", session("a"))
	// Disconnection times are in whole seconds: c leaves a second after a.
	at, _ := e.srv.Clients.Get("a")
	waitFor(t, "the next second", 2*time.Second, func() bool { return time.Now().Unix() > at.StopTime() })
	session("b") // stays connected
	leave("c", session("c"))
	if n := e.Stats().Sessions; n != 3 {
		t.Fatalf("%d sessions, want 3", n)
	}

	session("d") // a new id: a, offline the longest, makes room
	for id, want := range map[string]bool{"a": false, "b": true, "c": true, "d": true} {
		if _, ok := e.srv.Clients.Get(id); ok != want {
			t.Errorf("session %s held: %v, want %v", id, ok, want)
		}
		if subscribed(id) != want {
			t.Errorf("subscription of %s: %v, want %v", id, subscribed(id), want)
		}
	}
	if n := e.Stats().SessionsEvicted; n != 1 {
		t.Errorf("SessionsEvicted %d, want 1", n)
	}

	// c takes its own session back (present) without evicting anyone.
	conn, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t, conn}
	rc.write(connect311("c", false))
	if ack := rc.read(0x20); len(ack) != 2 || ack[0] != 1 || ack[1] != 0 {
		t.Fatalf("CONNACK %x, want session present", ack)
	}
	if st := e.Stats(); st.SessionsEvicted != 1 || st.Sessions != 3 {
		t.Errorf("after c came back: %d evicted, %d sessions; want 1 and 3", st.SessionsEvicted, st.Sessions)
	}
}

// TestEvictedSessionForgotten: a session discarded for a new client id
// (MaxSessions) is gone from the store too: it does not come back at a
// restart.
func TestEvictedSessionForgotten(t *testing.T) {
	ctx := context.Background()
	st := openSessionStore(t, t.TempDir())
	t.Cleanup(func() { st.Close() })
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, MaxClients: 1, MaxSessions: 1, Sessions: st}, acceptAll, []string{}...)
	b := &sessionBroker{e: e, st: st}
	c := dialPersistent(t, e, "old", newInbox(), "a/#")
	c.Disconnect(100)
	waitFor(t, "old's session stored", 5*time.Second, func() bool {
		n := b.items(t)
		return n[kindClient] == 1 && n[kindSub] == 1
	})
	if err := e.Publish(ctx, "a/x", []byte("queued"), 1, false); err != nil {
		t.Fatal(err)
	}
	n := dialPersistent(t, e, "new", newInbox())
	defer n.Disconnect(100)
	waitFor(t, "only new's session stored", 5*time.Second, func() bool {
		n := b.items(t)
		return n[kindClient] == 1 && n[kindSub] == 0 && n[kindInflight] == 0
	})
	if _, ok := e.srv.Clients.Get("old"); ok {
		t.Fatal("old's session still held")
	}
}

package mqtt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moongate-edge/moongate/store"
)

// sessionBroker is an embedded broker whose sessions live in a store in
// dir, for tests that restart it.
type sessionBroker struct {
	e  *Embedded
	st *store.Store
}

// openSessionStore opens the store in dir.
func openSessionStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), store.Options{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// startSessionBroker starts a broker keeping its sessions in st, with no
// handler filter; it returns Start's error.
func startSessionBroker(t *testing.T, st *store.Store) (*Embedded, error) {
	t.Helper()
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true, Sessions: st}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.SetFilters(ctx, []string{}); err != nil {
		t.Fatal(err)
	}
	return e, e.Start(ctx, func(context.Context, *Message) error { return nil })
}

func openSessionBroker(t *testing.T, dir string) *sessionBroker {
	t.Helper()
	st := openSessionStore(t, dir)
	e, err := startSessionBroker(t, st)
	if err != nil {
		t.Fatal(err)
	}
	b := &sessionBroker{e: e, st: st}
	t.Cleanup(b.close)
	return b
}

func (b *sessionBroker) close() {
	if b.e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = b.e.Close(ctx)
	_ = b.st.Close()
	b.e, b.st = nil, nil
}

// items counts the stored session items by kind byte, once every change
// queued so far is applied.
func (b *sessionBroker) items(t *testing.T) map[byte]int {
	t.Helper()
	// A synchronous commit of nothing: queued changes are applied first.
	if _, err := b.st.Commit(context.Background(), &store.Commit{}); err != nil {
		t.Fatal(err)
	}
	n := map[byte]int{}
	err := b.st.LoadSessions(context.Background(), func(k, v []byte) error {
		n[k[0]]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// inbox collects the messages a paho client receives, in order.
type inbox struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 100)} }

func (in *inbox) handler(_ paho.Client, m paho.Message) {
	in.mu.Lock()
	in.got = append(in.got, m.Topic()+"="+string(m.Payload()))
	in.mu.Unlock()
	in.ch <- struct{}{}
}

func (in *inbox) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		in.mu.Lock()
		got := append([]string(nil), in.got...)
		in.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-in.ch:
		case <-deadline:
			t.Fatalf("received %q, want %d messages", got, n)
		}
	}
}

func persistent(in *inbox) clientOpt {
	return func(o *paho.ClientOptions) {
		o.SetCleanSession(false).SetDefaultPublishHandler(in.handler)
	}
}

// dialPersistent connects id with a persistent session whose messages go
// to in, and subscribes it to filters at QoS 1.
func dialPersistent(t *testing.T, e *Embedded, id string, in *inbox, filters ...string) paho.Client {
	t.Helper()
	c := mustDial(t, brokerURL(e), id, persistent(in))
	for _, f := range filters {
		if err := waitToken(t, c.Subscribe(f, 1, nil)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// A device's persistent session, its subscription, the commands queued for
// it while it is away and a retained message all survive a restart of the
// broker; commands published after the restart reach it too.
func TestSessionsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openSessionBroker(t, dir)
	dev := newInbox()
	c := dialPersistent(t, b.e, "dev1", dev, "devices/dev1/cmd")
	if err := waitToken(t, c.Publish("devices/dev1/status", 1, true, "online")); err != nil {
		t.Fatal(err)
	}
	c.Disconnect(100)
	// A clean-session client leaves nothing behind.
	tmp := mustDial(t, brokerURL(b.e), "tmp")
	if err := waitToken(t, tmp.Subscribe("devices/dev1/cmd", 1, func(paho.Client, paho.Message) {})); err != nil {
		t.Fatal(err)
	}
	if err := b.e.Publish(ctx, "devices/dev1/cmd", []byte("on"), 1, false); err != nil {
		t.Fatal(err)
	}
	tmp.Disconnect(100)
	n := b.items(t)
	if n[kindClient] != 1 || n[kindSub] != 1 || n[kindInflight] != 1 || n[kindRetained] != 1 {
		t.Fatalf("stored items by kind: %v, want one client, subscription, queued message and retained message", n)
	}

	b.close()
	b = openSessionBroker(t, dir)
	if st := b.e.Stats(); st.Sessions != 1 || st.ClientsConnected != 0 || st.Inflight != 1 {
		t.Fatalf("after the restart: %d sessions, %d connected, %d messages queued; want 1, 0, 1", st.Sessions, st.ClientsConnected, st.Inflight)
	}
	// The subscription is back before the device is: this command is
	// queued for it as well.
	if err := b.e.Publish(ctx, "devices/dev1/cmd", []byte("off"), 1, false); err != nil {
		t.Fatal(err)
	}
	mustDial(t, brokerURL(b.e), "dev1", persistent(dev))
	// (In either order: mochi resends queued messages sorted by their
	// creation time in whole seconds.)
	got := dev.wait(t, 2)
	slices.Sort(got)
	if len(got) != 2 || got[0] != "devices/dev1/cmd=off" || got[1] != "devices/dev1/cmd=on" {
		t.Fatalf("device received %q, want on and off", got)
	}
	// The session, taken over by the new connection, is still stored.
	if n := b.items(t); n[kindClient] != 1 || n[kindSub] != 1 {
		t.Fatalf("stored items by kind after the device came back: %v", n)
	}
	status := newInbox()
	watcher := mustDial(t, brokerURL(b.e), "watcher")
	if err := waitToken(t, watcher.Subscribe("devices/+/status", 1, status.handler)); err != nil {
		t.Fatal(err)
	}
	if got := status.wait(t, 1); got[0] != "devices/dev1/status=online" {
		t.Fatalf("retained message after restart: %q", got)
	}
	// Acknowledged commands are removed from the store.
	waitFor(t, "acknowledged messages removed from the store", 10*time.Second, func() bool { return b.items(t)[kindInflight] == 0 })
}

// A client id that reconnects with a clean session drops what was stored
// for it, and clearing a retained message removes it from the store.
func TestSessionsCleanStartForgets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openSessionBroker(t, dir)
	dev := newInbox()
	c := dialPersistent(t, b.e, "dev1", dev, "a/#")
	if err := waitToken(t, c.Subscribe("b/#", 1, nil)); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, c.Unsubscribe("b/#")); err != nil {
		t.Fatal(err)
	}
	c.Disconnect(100)
	for i := range 3 {
		if err := b.e.Publish(ctx, "a/x", []byte{'0' + byte(i)}, 1, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.e.Publish(ctx, "r/1", []byte("x"), 0, true); err != nil {
		t.Fatal(err)
	}
	if n := b.items(t); n[kindClient] != 1 || n[kindSub] != 1 || n[kindInflight] != 3 || n[kindRetained] != 1 {
		t.Fatalf("stored items by kind: %v", n)
	}
	clean := mustDial(t, brokerURL(b.e), "dev1") // clean session
	// mochi runs the session hooks after CONNACK: wait for them.
	waitFor(t, "nothing stored for the id while it has a clean session", 5*time.Second, func() bool {
		n := b.items(t)
		return n[kindClient] == 0 && n[kindSub] == 0 && n[kindInflight] == 0
	})
	clean.Disconnect(100)
	if err := b.e.Publish(ctx, "r/1", nil, 0, true); err != nil { // clears the retained message
		t.Fatal(err)
	}
	if n := b.items(t); len(n) != 0 {
		t.Fatalf("items left after a clean start and a cleared retained message: %v", n)
	}
	b.close()
	b = openSessionBroker(t, dir)
	if err := b.e.Publish(ctx, "a/x", []byte("late"), 1, false); err != nil {
		t.Fatal(err)
	}
	if n := b.items(t); len(n) != 0 {
		t.Fatalf("a forgotten session came back: %v", n)
	}
}

// Items the broker cannot use (undecodable, unknown, or of a client that is
// not stored: left by a crash during a removal) are removed at start; the
// broker starts and serves.
func TestSessionsHostileStore(t *testing.T) {
	dir := t.TempDir()
	st := openSessionStore(t, dir)
	good := clientPrefix(kindClient, "dev1")
	for k, v := range map[string]string{
		string(good):                                          `{"id":"dev1","clean":false,"protocolVersion":4}`,
		string(subKey("dev1", "a/#")):                         `{"client":"dev1","filter":"a/#","qos":1}`,
		string(clientPrefix(kindClient, "broken")):            `{not json`,
		string(subKey("nobody", "x")):                         `{"client":"nobody","filter":"x","qos":1}`,
		string(inflightKey("nobody", inflightRef{dirOut, 7})): `{"client":"nobody","packet_id":7}`,
		// A message filed under the other direction than its type's.
		string(inflightKey("dev1", inflightRef{dirIn, 8})): "\x01\x00\x00\x00\x00\x00\x00\x00\x05" +
			`{"client":"dev1","packet_id":8,"fixedheader":{"type":3,"qos":1},"topic_name":"a/1"}`,
		// An ordered item cut short.
		string(inflightKey("dev1", inflightRef{dirOut, 9})): "\x01\x00\x00",
		"Zunknown":                               "?",
		string(retainedKey("t")):                 `[1,2,3]`,
		string(clientPrefix(kindClient, "dev2")): `{"id":"dev3","clean":false,"protocolVersion":4}`,
		string(retainedKey("u")):                 `{"topic_name":"not-u","payload":"eA=="}`,
	} {
		if err := st.SetSession([]byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	b := openSessionBroker(t, dir)
	if n := b.items(t); n[kindClient] != 1 || n[kindSub] != 1 || len(n) != 2 {
		t.Fatalf("items after start: %v, want the good client and its subscription", n)
	}
	if _, ok := b.e.srv.Clients.Get("dev1"); !ok {
		t.Fatal("the stored session was not restored")
	}
	dev := newInbox()
	mustDial(t, brokerURL(b.e), "dev1", persistent(dev))
	if err := b.e.Publish(context.Background(), "a/1", []byte("x"), 1, false); err != nil {
		t.Fatal(err)
	}
	if got := dev.wait(t, 1); got[0] != "a/1=x" {
		t.Fatalf("restored subscription delivered %q", got)
	}
}

// A store that fails to load stops the broker from starting, with the
// store's error.
func TestSessionsLoadError(t *testing.T) {
	st := openSessionStore(t, t.TempDir())
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	e, err := startSessionBroker(t, st)
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Start with a closed session store: %v, want store.ErrClosed", err)
	}
	// The listener it had bound is released.
	ln, err := net.Listen("tcp", e.Addr().String())
	if err != nil {
		t.Fatalf("the failed start kept its port: %v", err)
	}
	ln.Close()
	_ = e.Close(context.Background())
}

// mapSessions is a SessionStore in a map, for the fuzz test (no disk).
type mapSessions struct {
	mu  sync.Mutex
	m   map[string][]byte
	ops []string // "set KEY" / "del KEY", in call order
}

func (s *mapSessions) SetSession(k, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[string(k)] = v
	s.ops = append(s.ops, "set "+string(k))
	return nil
}

func (s *mapSessions) DeleteSession(k []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, string(k))
	s.ops = append(s.ops, "del "+string(k))
	return nil
}

func (s *mapSessions) LoadSessions(_ context.Context, fn func(k, v []byte) error) error {
	s.mu.Lock()
	keys := slices.Sorted(maps.Keys(s.m))
	s.mu.Unlock()
	for _, k := range keys {
		if err := fn([]byte(k), s.m[k]); err != nil {
			return err
		}
	}
	return nil
}

// Whatever the stored items (a damaged store, a future format), loading
// them never panics, hands mochi only what decodes, and removes the rest.
func FuzzSessionLoad(f *testing.F) {
	f.Add(clientPrefix(kindClient, "d"), []byte(`{"id":"d","protocolVersion":4}`), subKey("d", "a/#"), []byte(`{"client":"d","filter":"a/#","qos":1}`))
	f.Add(inflightKey("d", inflightRef{dirOut, 1}), []byte("\x01\x00\x00\x00\x00\x00\x00\x00\x01"+`{"client":"d","packet_id":1,"payload":"eA=="}`), retainedKey("t"), []byte(`{"topic_name":"t","payload":"eA=="}`))
	// An item of the first release (no direction, no order) and the same
	// item in the current form.
	legacy := binary.BigEndian.AppendUint16(clientPrefix(kindInflight, "d"), 1)
	f.Add(legacy, []byte(`{"client":"d","packet_id":1,"fixedheader":{"type":3}}`), inflightKey("d", inflightRef{dirOut, 1}), []byte(`{"client":"d","packet_id":1,"fixedheader":{"type":3}}`))
	f.Add([]byte("C"), []byte(`{`), []byte{kindSub}, []byte(`null`))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 []byte) {
		st := &mapSessions{m: map[string][]byte{string(clientPrefix(kindClient, "d")): []byte(`{"id":"d","protocolVersion":4}`)}}
		st.m[string(k1)] = v1
		st.m[string(k2)] = v2
		h := &sessionHook{st: st, log: slog.New(slog.DiscardHandler)}
		set, err := h.load()
		if err != nil {
			t.Fatal(err)
		}
		n := len(set.clients) + len(set.subs) + len(set.inflight) + len(set.retained)
		if n != len(st.m) {
			t.Fatalf("%d items handed to mochi, %d left in the store: %q", n, len(st.m), slices.Collect(maps.Keys(st.m)))
		}
	})
}

// connect311 is a raw MQTT 3.1.1 CONNECT.
func connect311(id string, clean bool) []byte { return connectWith(id, clean, 60, "", "") }

// brokenConn delivers what the peer writes but fails every write of the
// broker: a device whose link drops right after it sent CONNECT.
type brokenConn struct{ net.Conn }

func (brokenConn) Write([]byte) (int, error) { return 0, errors.New("link down") }

// connectOverBrokenLink has the broker handle a CONNECT from id over a
// link that fails every write (the CONNACK first), and returns once the
// broker is done with the connection.
func connectOverBrokenLink(e *Embedded, id string, clean bool) {
	srvSide, devSide := net.Pipe()
	go func() {
		_, _ = devSide.Write(connect311(id, clean))
		devSide.Close()
	}()
	_ = e.srv.EstablishConnection("tcp", brokenConn{srvSide})
}

// A device coming back over a link that fails before its queued messages
// are resent keeps them, in memory and in the store: mochi moves them to
// the new connection and clears the old one, which must not remove them
// from the store.
func TestSessionsReconnectOverBrokenLink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := openSessionBroker(t, dir)
	dev := newInbox()
	c := dialPersistent(t, b.e, "dev1", dev, "cmd")
	c.Disconnect(100)
	for _, p := range []string{"a", "b", "c"} {
		if err := b.e.Publish(ctx, "cmd", []byte(p), 1, false); err != nil {
			t.Fatal(err)
		}
	}
	connectOverBrokenLink(b.e, "dev1", false)
	if n := b.items(t); n[kindClient] != 1 || n[kindSub] != 1 || n[kindInflight] != 3 {
		t.Fatalf("stored items by kind after the failed reconnect: %v", n)
	}
	b.close()
	b = openSessionBroker(t, dir)
	mustDial(t, brokerURL(b.e), "dev1", persistent(dev))
	if got := dev.wait(t, 3); len(got) != 3 {
		t.Fatalf("device received %q", got)
	}
}

// A clean-session connection taking over a connected persistent session
// leaves nothing stored, whenever the old connection's end is reported.
func TestSessionsTakeoverByCleanClient(t *testing.T) {
	b := openSessionBroker(t, t.TempDir())
	for i := range 5 {
		c := dialPersistent(t, b.e, "dev1", newInbox(), "cmd")
		old, ok := b.e.srv.Clients.Get("dev1")
		if !ok {
			t.Fatal("the persistent client is not known to the broker")
		}
		clean := mustDial(t, brokerURL(b.e), "dev1")
		// mochi runs the session hooks after CONNACK: wait for them.
		waitFor(t, "the old connection to end", 5*time.Second, func() bool { return old.Closed() })
		waitFor(t, fmt.Sprintf("round %d: nothing stored while the id has a clean session", i), 5*time.Second,
			func() bool { return len(b.items(t)) == 0 })
		clean.Disconnect(10)
		c.Disconnect(10)
		waitFor(t, "the clean session to end", 5*time.Second, func() bool {
			_, ok := b.e.srv.Clients.Get("dev1")
			return !ok
		})
	}
	if n := b.items(t); len(n) != 0 {
		t.Fatalf("stored at the end: %v", n)
	}
}

// A persistent-session device publishing QoS 1 costs no store write per
// message (mochi's PUBACK in flight lives a moment; it is not stored).
func TestSessionsInboundQoS1NoWrites(t *testing.T) {
	b := openSessionBroker(t, t.TempDir())
	c := mustDial(t, brokerURL(b.e), "dev1", persistent(newInbox()))
	b.items(t)
	w0 := b.st.Stats().Writes
	for range 100 {
		if err := waitToken(t, c.Publish("telemetry/dev1", 1, false, "21.5")); err != nil {
			t.Fatal(err)
		}
	}
	b.items(t)
	if w := b.st.Stats().Writes - w0; w > 2 { // the barrier itself
		t.Fatalf("%d store writes for 100 QoS 1 publishes", w)
	}
}

// A QoS 2 delivery answered with PUBREC is stored as the PUBREL that
// follows it, so that a restart resends PUBREL, not the message.
func TestSessionsQoS2Pubrel(t *testing.T) {
	dir := t.TempDir()
	b := openSessionBroker(t, dir)
	conn, err := net.DialTimeout("tcp", b.e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	read := func(want byte) []byte {
		t.Helper()
		hdr := make([]byte, 2)
		if _, err := io.ReadFull(conn, hdr); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, hdr[1]) // short packets only
		if _, err := io.ReadFull(conn, body); err != nil {
			t.Fatal(err)
		}
		if hdr[0]&0xf0 != want {
			t.Fatalf("packet type %#x, want %#x", hdr[0], want)
		}
		return body
	}
	if _, err := conn.Write(connect311("q2", false)); err != nil {
		t.Fatal(err)
	}
	read(0x20) // CONNACK
	sub := append([]byte{0, 1}, rawString("cmd")...)
	if _, err := conn.Write(rawPacket(0x82, append(sub, 2))); err != nil {
		t.Fatal(err)
	}
	read(0x90) // SUBACK
	if err := b.e.Publish(context.Background(), "cmd", []byte("x"), 2, false); err != nil {
		t.Fatal(err)
	}
	pub := read(0x30)
	id := pub[len(pub)-3 : len(pub)-1]                         // topic "cmd", packet id, payload "x"
	if _, err := conn.Write(rawPacket(0x50, id)); err != nil { // PUBREC
		t.Fatal(err)
	}
	read(0x60) // PUBREL; no PUBCOMP: the flow stays open
	// The hook runs once mochi has processed the PUBREC (after it wrote
	// the PUBREL): wait for the stored entry to change.
	var got []packets.Packet
	stored := func() bool {
		b.items(t)
		got = got[:0]
		if err := b.st.LoadSessions(context.Background(), func(k, v []byte) error {
			if k[0] == kindInflight {
				o, err := unmarshalOrdered(v)
				if err != nil {
					return err
				}
				got = append(got, o.m.ToPacket())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return len(got) == 1 && got[0].FixedHeader.Type == packets.Pubrel
	}
	waitFor(t, "the stored in-flight entry to become one PUBREL", 5*time.Second, stored)
}

// mapHook is a session hook on a map store, whose retained messages are
// held, with a client "dev" of a broker that is not started.
func mapHook() (*sessionHook, *mapSessions, map[string]packets.Packet, *mochi.Client) {
	st := &mapSessions{m: map[string][]byte{}}
	held := map[string]packets.Packet{}
	h := &sessionHook{st: st, log: slog.New(slog.DiscardHandler), retained: func(topic string) (packets.Packet, bool) {
		pk, ok := held[topic]
		return pk, ok
	}}
	return h, st, held, mochi.New(nil).NewClient(nil, "tcp", "dev", false)
}

// What is stored for a retained topic is what mochi holds when the hook
// runs, so two retained publishes to one topic that reach the hook in the
// other order still leave the last one stored.
func TestSessionsRetainedOrder(t *testing.T) {
	h, st, held, cl := mapHook()
	pub := func(payload string) packets.Packet {
		return packets.Packet{TopicName: "t", Payload: []byte(payload), FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}}
	}
	stored := func() string {
		v, ok := st.m[string(retainedKey("t"))]
		if !ok {
			return "<none>"
		}
		var m storage.Message
		if err := m.UnmarshalBinary(v); err != nil {
			t.Fatal(err)
		}
		return string(m.Payload)
	}
	held["t"] = pub("new")
	h.OnRetainMessage(cl, pub("new"), 1)
	h.OnRetainMessage(cl, pub("old"), 1) // late
	if got := stored(); got != "new" {
		t.Fatalf("stored %q, want new", got)
	}
	delete(held, "t")
	h.OnRetainMessage(cl, pub("old"), 1) // late, after the topic was cleared
	if got := stored(); got != "<none>" {
		t.Fatalf("stored %q after the topic was cleared", got)
	}
}

// rawClient is an MQTT 3.1.1 client written by hand, for packet sequences
// paho does not produce.
type rawClient struct {
	t    *testing.T
	conn net.Conn
}

func dialRaw311(t *testing.T, e *Embedded, id string, clean bool) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawClient{t, conn}
	c.write(connect311(id, clean))
	c.read(0x20)
	return c
}

func (c *rawClient) write(p []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(p); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one short packet of type want and returns its body.
func (c *rawClient) read(want byte) []byte {
	c.t.Helper()
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		c.t.Fatal(err)
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(c.conn, body); err != nil {
		c.t.Fatal(err)
	}
	if hdr[0]&0xf0 != want {
		c.t.Fatalf("packet type %#x, want %#x", hdr[0], want)
	}
	return body
}

// An UNSUBSCRIBE that mochi refuses (its packet id is that of the client's
// own QoS 2 message still waiting for its PUBREL) leaves the subscription,
// in mochi and in the store.
func TestSessionsRefusedUnsubscribe(t *testing.T) {
	b := openSessionBroker(t, t.TempDir())
	c := dialRaw311(t, b.e, "u1", false)
	c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("cmd")...), 1)))
	c.read(0x90)
	id := []byte{0, 5}
	c.write(rawPacket(0x34, append(append(rawString("devices/u1/telemetry"), id...), "1"...)))
	c.read(0x50) // PUBREC; no PUBREL: id 5 stays in use
	c.write(rawPacket(0xa2, append(append([]byte{}, id...), rawString("cmd")...)))
	c.read(0xb0)
	cl, _ := b.e.srv.Clients.Get("u1")
	if _, kept := cl.State.Subscriptions.Get("cmd"); !kept {
		t.Fatal("mochi dropped the subscription: the test no longer sets up a refused UNSUBSCRIBE")
	}
	if n := b.items(t); n[kindSub] != 1 {
		t.Fatalf("stored items by kind: %v, want the subscription mochi kept", n)
	}
}

// A clean start that takes over a connected persistent session forgets it
// before CONNACK: a CONNACK that fails (mochi then skips the hooks it calls
// after CONNACK) leaves nothing behind to come back after a restart.
func TestSessionsCleanTakeoverFailedConnack(t *testing.T) {
	dir := t.TempDir()
	b := openSessionBroker(t, dir)
	c := dialPersistent(t, b.e, "dev1", newInbox(), "cmd")
	connectOverBrokenLink(b.e, "dev1", true)
	if n := b.items(t); len(n) != 0 {
		t.Fatalf("stored after a clean start whose CONNACK failed: %v", n)
	}
	c.Disconnect(10)
	b.close()
	b = openSessionBroker(t, dir)
	if cl, ok := b.e.srv.Clients.Get("dev1"); ok {
		t.Fatalf("after a restart, the discarded session came back with %d subscriptions", len(cl.State.Subscriptions.GetAll()))
	}
}

// A persistent session that takes over a connected clean-session client is
// not forgotten when the old connection ends (its end says "expire").
func TestSessionsPersistentTakesOverClean(t *testing.T) {
	b := openSessionBroker(t, t.TempDir())
	srvSide, devSide := net.Pipe()
	defer devSide.Close()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_ = b.e.srv.EstablishConnection("tcp", srvSide)
	}()
	go func() { _, _ = io.Copy(io.Discard, devSide) }() // CONNACK and the rest
	if _, err := devSide.Write(connect311("dev1", true)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the clean client", 5*time.Second, func() bool { _, ok := b.e.srv.Clients.Get("dev1"); return ok })
	dialPersistent(t, b.e, "dev1", newInbox(), "cmd")
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the clean client's connection did not end")
	}
	if n := b.items(t); n[kindClient] != 1 || n[kindSub] != 1 {
		t.Fatalf("stored items by kind: %v, want the persistent session", n)
	}
}

// mochi reports an expired retained message after deleting it, without a
// lock: a retained message set on the topic in between stays stored.
func TestSessionsRetainedExpiredLate(t *testing.T) {
	h, st, held, cl := mapHook()
	pub := packets.Packet{TopicName: "t", Payload: []byte("new"), FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}}
	held["t"] = pub
	h.OnRetainMessage(cl, pub, 1)
	h.OnRetainedExpired("t") // late, for the message before
	if _, ok := st.m[string(retainedKey("t"))]; !ok {
		t.Fatal("the new retained message was removed from the store")
	}
	delete(held, "t")
	h.OnRetainedExpired("t")
	if _, ok := st.m[string(retainedKey("t"))]; ok {
		t.Fatal("an expired retained message stayed stored")
	}
}

// mochi reports an expired in-flight message dropped twice (the second
// time with its packet id only): a message that reused the id in between
// stays stored.
func TestSessionsExpiredInflightReported(t *testing.T) {
	h, st, _, cl := mapHook()
	cl.Properties.ProtocolVersion = 4
	old := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "cmd", Payload: []byte("old"), PacketID: 1}
	cl.State.Inflight.Set(old)
	h.OnQosPublish(cl, old, 0, 0)
	if _, ok := st.m[string(inflightKey("dev", inflightRef{dirOut, 1}))]; !ok {
		t.Fatal("the queued message was not stored")
	}
	cl.State.Inflight.Delete(1)
	h.OnQosDropped(cl, old) // Client.ClearExpiredInflights
	if _, ok := st.m[string(inflightKey("dev", inflightRef{dirOut, 1}))]; ok {
		t.Fatal("the expired message stayed stored")
	}
	nw := old
	nw.Payload = []byte("new")
	cl.State.Inflight.Set(nw)
	h.OnQosPublish(cl, nw, 0, 0)                    // a publisher reused id 1
	h.OnQosDropped(cl, packets.Packet{PacketID: 1}) // Server.clearExpiredInflights
	if _, ok := st.m[string(inflightKey("dev", inflightRef{dirOut, 1}))]; !ok {
		t.Fatal("the message that reused the id was removed from the store")
	}
}

// A message queued for a persistent session whose connection a new one has
// just disconnected (to take the session over) but not yet taken over is
// stored: mochi copies it to the new connection, and it must survive a
// restart like any other. (The hook skipped it when the old connection's
// stop cause was the takeover.)
func TestSessionsMessageDuringTakeoverStored(t *testing.T) {
	h, st, _, cl := mapHook()
	cl.Properties.ProtocolVersion = 4 // persistent: not clean
	cl.Stop(packets.ErrSessionTakenOver)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "cmd", Payload: []byte("x"), PacketID: 1}
	cl.State.Inflight.Set(pk)
	h.OnQosPublish(cl, pk, 0, 0)
	if _, ok := st.m[string(inflightKey("dev", inflightRef{dirOut, 1}))]; !ok {
		t.Fatal("a message queued while the session is being taken over was not stored")
	}
}

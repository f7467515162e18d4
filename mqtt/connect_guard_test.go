package mqtt

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"
)

// twoUsers returns device accounts alice and bob (password "s3cret", the
// default ACL devices/{username}/#).
func twoUsers(t testing.TB) []User {
	t.Helper()
	hb, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return []User{{Username: "alice", PasswordHash: string(hb)}, {Username: "bob", PasswordHash: string(hb)}}
}

// connack3 sends an MQTT 3.1.1 CONNECT (clean session) over a new
// connection and returns the CONNACK's return code.
func connack3(t *testing.T, addr, id, user, pass string) byte {
	t.Helper()
	return connackOf(t, addr, id, user, rawConnect(id, user, pass))
}

// connackOf sends the CONNECT packet over a new connection and returns the
// CONNACK's return (3.1.1) or reason (5) code.
func connackOf(t *testing.T, addr, id, user string, connect []byte) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("read CONNACK for %s/%s: %v", id, user, err)
	}
	if ack[0] != 0x20 {
		t.Fatalf("CONNACK = % x", ack)
	}
	return ack[3]
}

// connect5Creds is a raw MQTT 5 CONNECT (clean start, keepalive 60, no
// properties) with a username and password.
func connect5Creds(id, user, pass string) []byte {
	b := append(rawString("MQTT"), 5, 0xC2, 0, 60, 0)
	b = append(b, rawString(id)...)
	b = append(b, rawString(user)...)
	b = append(b, rawString(pass)...)
	return rawPacket(0x10, b)
}

// connack5 sends an MQTT 5 CONNECT with credentials and returns the
// CONNACK's reason code.
func connack5(t *testing.T, addr, id, user, pass string) byte {
	t.Helper()
	return connackOf(t, addr, id, user, connect5Creds(id, user, pass))
}

// A device must not take over the session of another user's client id:
// bob, with valid credentials of his own, connecting with alice's client id
// is refused (MQTT 3.1.1: CONNACK 0x05, MQTT 5: 0x87) whether alice is
// connected or offline, and neither disconnects alice, receives her
// commands, nor wipes her session with a clean start. Anonymous clients
// count as a user of their own. Alice reconnecting (a same-user takeover)
// still works. Without the check, mochi handed alice's session over.
func TestEmbeddedTakeoverAcrossUsersRefused(t *testing.T) {
	ctx := context.Background()
	e := startEmbedded(t, EmbeddedConfig{Users: twoUsers(t), AllowAnonymous: true}, acceptAll, []string{}...)
	url, addr := brokerURL(e), e.Addr().String()
	alice := newInbox()
	a1 := mustDial(t, url, "dev-a", withCreds("alice", "s3cret"), persistent(alice))
	if err := waitToken(t, a1.Subscribe("devices/alice/cmd", 1, nil)); err != nil {
		t.Fatal(err)
	}
	a1.Disconnect(10)
	waitFor(t, "alice offline", 5*time.Second, func() bool {
		cl, ok := e.srv.Clients.Get("dev-a")
		return ok && cl.Closed()
	})
	if err := e.Publish(ctx, "devices/alice/cmd", []byte("while away"), 1, false); err != nil {
		t.Fatal(err)
	}

	// Her offline session: bob (persistent or clean start) and an anonymous
	// client are refused.
	bob := newInbox()
	if _, err := dial(t, url, "dev-a", withCreds("bob", "s3cret"), persistent(bob)); err == nil {
		t.Fatal("bob took over alice's offline session")
	}
	if rc := connack3(t, addr, "dev-a", "bob", "s3cret"); rc != 0x05 {
		t.Fatalf("bob, clean session: CONNACK %#x, want 0x05 not authorized", rc)
	}
	if rc := connack5(t, addr, "dev-a", "bob", "s3cret"); rc != 0x87 {
		t.Fatalf("bob, MQTT 5: CONNACK %#x, want 0x87 not authorized", rc)
	}
	if rc := connack3(t, addr, "dev-a", "", ""); rc != 0x05 {
		t.Fatalf("anonymous: CONNACK %#x, want 0x05 not authorized", rc)
	}
	// Nor the broker's own inline client.
	if rc := connack3(t, addr, "inline", "", ""); rc != 0x05 {
		t.Fatalf("anonymous as the inline client: CONNACK %#x, want 0x05", rc)
	}
	if st := e.Stats(); st.RejectedUnauthorized != 5 {
		t.Fatalf("RejectedUnauthorized = %d, want 5", st.RejectedUnauthorized)
	}

	// Alice's session is intact: her reconnection gets the command.
	a2 := mustDial(t, url, "dev-a", withCreds("alice", "s3cret"), persistent(alice))
	if got := alice.wait(t, 1); got[0] != "devices/alice/cmd=while away" {
		t.Fatalf("alice got %q", got)
	}

	// Her live connection: bob is refused and alice stays connected.
	if rc := connack3(t, addr, "dev-a", "bob", "s3cret"); rc != 0x05 {
		t.Fatalf("bob vs live alice: CONNACK %#x, want 0x05", rc)
	}
	if err := e.Publish(ctx, "devices/alice/cmd", []byte("live"), 1, false); err != nil {
		t.Fatal(err)
	}
	if got := alice.wait(t, 2); got[1] != "devices/alice/cmd=live" || !a2.IsConnectionOpen() {
		t.Fatalf("alice got %q, connected %v", got, a2.IsConnectionOpen())
	}

	// The same user takes her own session over (a device reconnecting
	// before the broker noticed the old connection is gone).
	a3 := mustDial(t, url, "dev-a", withCreds("alice", "s3cret"), persistent(alice))
	waitFor(t, "the previous connection to be taken over", 5*time.Second, func() bool { return !a2.IsConnectionOpen() })
	if !a3.IsConnectionOpen() {
		t.Fatal("alice's new connection is not open")
	}
	// Anonymous clients take over anonymous sessions.
	mustDial(t, url, "anon-1")
	mustDial(t, url, "anon-1")
	bob.mu.Lock()
	defer bob.mu.Unlock()
	if len(bob.got) != 0 {
		t.Fatalf("bob got %q", bob.got)
	}
}

// A session restored after a restart keeps its owner: bob's clean start
// with alice's client id is refused and does not remove her stored session
// either (moongate's session hook forgot the stored session on a clean
// start before mochi decided about the takeover).
func TestEmbeddedTakeoverOfStoredSessionRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	users := twoUsers(t)
	start := func() (*Embedded, func()) {
		st := openSessionStore(t, dir)
		e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Users: users, Sessions: st}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		_ = e.SetFilters(ctx, []string{})
		if err := e.Start(ctx, acceptAll); err != nil {
			t.Fatal(err)
		}
		return e, func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_ = e.Close(cctx)
			_ = st.Close()
		}
	}
	e, stop := start()
	alice := newInbox()
	a := mustDial(t, brokerURL(e), "dev-a", withCreds("alice", "s3cret"), persistent(alice))
	if err := waitToken(t, a.Subscribe("devices/alice/cmd", 1, nil)); err != nil {
		t.Fatal(err)
	}
	a.Disconnect(10)
	waitFor(t, "alice offline", 5*time.Second, func() bool {
		cl, ok := e.srv.Clients.Get("dev-a")
		return ok && cl.Closed()
	})
	if err := e.Publish(ctx, "devices/alice/cmd", []byte("queued"), 1, false); err != nil {
		t.Fatal(err)
	}
	stop()

	e, stop = start()
	if rc := connack3(t, e.Addr().String(), "dev-a", "bob", "s3cret"); rc != 0x05 {
		t.Fatalf("bob, clean session, restored session: CONNACK %#x, want 0x05", rc)
	}
	stop()

	e, stop = start()
	defer stop()
	mustDial(t, brokerURL(e), "dev-a", withCreds("alice", "s3cret"), persistent(alice))
	if got := alice.wait(t, 1); got[0] != "devices/alice/cmd=queued" {
		t.Fatalf("alice got %q", got)
	}
}

// A CONNECT has a bound of its own (MaxPayload+16 KiB, room for a will of
// MaxPayload), below the 4*MaxPayload+64 KiB of other packets: a CONNECT
// header claiming more closes the connection before anything is read or
// allocated. Without it the broker waited (allocated) for the whole claim.
func TestEmbeddedConnectSizeBound(t *testing.T) {
	// The CONNECT deadline is a minute: the bound, not the deadline, closes it.
	e := startSlowConnect(t, EmbeddedConfig{Listen: "127.0.0.1:0", Users: twoUsers(t), MaxPayload: 1024})
	if got := e.cfg.connectLimit(); got != 1024+16<<10 || got >= e.cfg.packetLimit() {
		t.Fatalf("connect limit %d (packet limit %d)", got, e.cfg.packetLimit())
	}
	c, err := net.DialTimeout("tcp", e.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// CONNECT, remaining length 40000 (under the packet limit of 69632),
	// and only the start of it.
	if _, err := c.Write([]byte{0x10, 0xc0, 0xb8, 0x02, 0, 4, 'M', 'Q'}); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	// A CONNECT with a will of MaxPayload bytes fits.
	mustDial(t, brokerURL(e), "alice-w", withCreds("alice", "s3cret"), func(o *paho.ClientOptions) {
		o.SetBinaryWill("devices/alice/status", make([]byte, 1024), 1, false)
	})
}

// startSlowConnect starts a broker on cfg whose CONNECT deadline is a
// minute, so that idle sockets keep their unauthenticated slots for the
// whole test; it is closed when the test ends.
func startSlowConnect(t *testing.T, cfg EmbeddedConfig) *Embedded {
	t.Helper()
	e, err := NewEmbedded(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e.connectTimeout = time.Minute
	if err := e.Start(context.Background(), acceptAll); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e
}

// At most MaxUnauthenticated connections per listener wait unauthenticated
// (TLS handshake, CONNECT, password check); more are closed at once,
// unread, and counted. A connection gives its slot back once it has
// authenticated, or when it ends.
func TestEmbeddedUnauthenticatedBound(t *testing.T) {
	e := startSlowConnect(t, EmbeddedConfig{Listen: "127.0.0.1:0", Users: twoUsers(t), MaxUnauthenticated: 2})
	addr := e.Addr().String()
	idle := make([]net.Conn, 2)
	for i := range idle {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle[i] = c
	}
	third, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	expectClosed(t, third) // at once; the CONNECT deadline is a minute
	if n := e.Stats().ConnectionsShed; n != 1 {
		t.Fatalf("ConnectionsShed = %d, want 1", n)
	}
	// A connection that ends gives its slot back.
	idle[0].Close()
	waitFor(t, "a slot to be free", 10*time.Second, func() bool {
		c, err := dial(t, brokerURL(e), "alice-0", withCreds("alice", "s3cret"))
		if err == nil {
			c.Disconnect(10)
		}
		return err == nil
	})
	// Authenticated connections hold no slot: with one left (the other idle
	// socket holds one), several devices connect and stay connected.
	for _, id := range []string{"alice-1", "alice-2", "alice-3"} {
		mustDial(t, brokerURL(e), id, withCreds("alice", "s3cret"))
	}
}

// dialFrom opens a TCP connection to addr from the loopback address local
// (any of 127.0.0.0/8 can be a source address on Linux), so that tests can
// be several hosts.
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectConnack sends a CONNECT with credentials over c and wants CONNACK 0.
func expectConnack(t *testing.T, c net.Conn, id string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(rawConnect(id, "alice", "s3cret")); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("%s: read CONNACK: %v", id, err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("%s: CONNACK = % x, want accepted", id, ack)
	}
}

// One address (a host flooding the listener with sockets that never send
// CONNECT) holds at most MaxUnauthenticatedPerAddress of the listener's
// slots: its next connection is closed at once, unread, while devices from
// other addresses still get in. The listener's own bound still holds
// across addresses, and a slot given back is usable again by its address.
func TestEmbeddedUnauthenticatedPerAddress(t *testing.T) {
	e := startSlowConnect(t, EmbeddedConfig{Listen: "127.0.0.1:0", Users: twoUsers(t), MaxUnauthenticated: 4, MaxUnauthenticatedPerAddress: 2})
	addr := e.Addr().String()
	flood := []net.Conn{dialFrom(t, "127.0.0.1", addr), dialFrom(t, "127.0.0.1", addr)}
	expectClosed(t, dialFrom(t, "127.0.0.1", addr))
	if n := e.Stats().ConnectionsShed; n != 1 {
		t.Fatalf("ConnectionsShed = %d, want 1", n)
	}
	// Another host gets in while the flood holds its two slots.
	expectConnack(t, dialFrom(t, "127.0.0.2", addr), "from-2")
	// Two idle sockets from 127.0.0.3 fill the listener (4 slots): a
	// fourth host is turned away by the listener's bound.
	idle3 := []net.Conn{dialFrom(t, "127.0.0.3", addr), dialFrom(t, "127.0.0.3", addr)}
	waitFor(t, "the listener to be full", 10*time.Second, func() bool {
		c := dialFrom(t, "127.0.0.4", addr)
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout()) // closed, not still open
	})
	idle3[0].Close()
	idle3[1].Close()
	// The flooding address gets a slot back when one of its sockets ends.
	flood[0].Close()
	waitFor(t, "a slot of 127.0.0.1 to be free", 10*time.Second, func() bool {
		c := dialFrom(t, "127.0.0.1", addr)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(rawConnect("from-1", "alice", "s3cret")); err != nil {
			return false
		}
		ack := make([]byte, 4)
		_, err := io.ReadFull(c, ack)
		return err == nil && ack[0] == 0x20 && ack[3] == 0
	})
}

// Close does not wait for connections that never sent CONNECT (TCP and
// WebSocket) or their HTTP request (WebSocket): it closes them. Before, it waited for their CONNECT
// deadline (10 s by default, a minute here).
func TestEmbeddedCloseClosesUnauthenticated(t *testing.T) {
	e := startSlowConnect(t, EmbeddedConfig{Listen: "127.0.0.1:0", WebSocketListen: "127.0.0.1:0", Users: twoUsers(t)})
	idle := dialFrom(t, "127.0.0.1", e.Addr().String())
	idleWS := dialFrom(t, "127.0.0.1", e.WebSocketAddr().String()) // never sends its HTTP request
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://"+e.WebSocketAddr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	done := make(chan error, 1)
	go func() { done <- e.Close(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close still waiting for unauthenticated connections after 30s (their CONNECT deadline is a minute)")
	}
	expectClosed(t, idle)
	expectClosed(t, idleWS)
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := ws.ReadMessage(); err == nil {
		t.Fatal("WebSocket connection still open after Close")
	}
}

// The WebSocket listener counts per address too (the HTTP request's
// remote address).
func TestEmbeddedUnauthenticatedPerAddressWebSocket(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, WebSocketListen: "127.0.0.1:0", MaxUnauthenticated: 2, MaxUnauthenticatedPerAddress: 1}, acceptAll, "#")
	u := "ws://" + e.WebSocketAddr().String() + "/"
	from := func(local string) *websocket.Dialer {
		nd := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return &websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second, NetDialContext: nd.DialContext}
	}
	held, _, err := from("127.0.0.1").Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c, resp, err := from("127.0.0.1").Dial(u, nil)
	if err == nil {
		c.Close()
		t.Fatal("second unauthenticated WebSocket connection from one address accepted with MaxUnauthenticatedPerAddress 1")
	}
	if resp != nil {
		t.Fatalf("second connection: %v, got an HTTP response %s; want it closed unread", err, resp.Status)
	}
	other, _, err := from("127.0.0.2").Dial(u, nil)
	if err != nil {
		t.Fatalf("connection from another address: %v", err)
	}
	other.Close()
}

// The WebSocket listener has its own bound, taken when a connection is
// accepted: beyond it the connection is closed unread (no HTTP request is
// read, so an idle socket cannot hold memory or a goroutine either).
func TestEmbeddedUnauthenticatedBoundWebSocket(t *testing.T) {
	e := startEmbedded(t, EmbeddedConfig{AllowAnonymous: true, WebSocketListen: "127.0.0.1:0", MaxUnauthenticated: 1}, acceptAll, "#")
	u := "ws://" + e.WebSocketAddr().String() + "/"
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	held, _, err := d.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c, resp, err := d.Dial(u, nil)
	if err == nil {
		c.Close()
		t.Fatal("second unauthenticated WebSocket connection accepted with MaxUnauthenticated 1")
	}
	if resp != nil {
		t.Fatalf("second connection: %v, got an HTTP response %s; want it closed unread", err, resp.Status)
	}
	if n := e.Stats().ConnectionsShed; n != 1 {
		t.Fatalf("ConnectionsShed = %d, want 1", n)
	}
	// A socket that never sends its HTTP request holds a slot too.
	held.Close()
	waitFor(t, "the WebSocket slot to be free", 10*time.Second, func() bool {
		c, _, err := d.Dial(u, nil)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	// The probe above closed its connection; the broker may not have seen
	// that close yet when the raw socket arrives, and then sheds the raw
	// socket. A dial that succeeds says the raw socket holds nothing: try
	// again with a new one.
	var raw net.Conn
	defer func() {
		if raw != nil {
			raw.Close()
		}
	}()
	waitFor(t, "a connection shed while the raw socket holds the slot", 10*time.Second, func() bool {
		if raw == nil {
			var err error
			if raw, err = net.DialTimeout("tcp", e.WebSocketAddr().String(), 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		shed := e.Stats().ConnectionsShed
		c, resp, err := d.Dial(u, nil)
		if err == nil {
			c.Close()
			raw.Close()
			raw = nil
			return false
		}
		return resp == nil && e.Stats().ConnectionsShed > shed
	})
	// The TCP listener has slots of its own.
	mustDial(t, brokerURL(e), "tcp-dev")
	raw.Close()
	raw = nil
	waitFor(t, "the WebSocket slot to be free", 10*time.Second, func() bool {
		c, err := dial(t, "ws://"+e.WebSocketAddr().String(), "ws-dev")
		if err == nil {
			c.Disconnect(10)
		}
		return err == nil
	})
}

// The wait for a bcrypt slot is bounded: with every slot taken, a device is
// refused with CONNACK "server unavailable" (MQTT 5: "server busy") after
// the bound, not left waiting with no deadline (mochi has replaced the
// CONNECT deadline by then). Without the bound it waited forever.
func TestEmbeddedPasswordCheckWaitBounded(t *testing.T) {
	e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Users: twoUsers(t)}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e.authWait = 200 * time.Millisecond
	if err := e.Start(context.Background(), acceptAll); err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	addr := e.Addr().String()
	for range cap(e.auth.sem) {
		e.auth.sem <- struct{}{} // every bcrypt slot busy
	}
	if rc := connack3(t, addr, "a", "alice", "s3cret"); rc != 0x03 {
		t.Fatalf("MQTT 3.1.1: CONNACK %#x, want 0x03 server unavailable", rc)
	}
	if rc := connack5(t, addr, "a", "alice", "s3cret"); rc != 0x89 {
		t.Fatalf("MQTT 5: CONNACK %#x, want 0x89 server busy", rc)
	}
	if rc := connack3(t, addr, "m", "mallory", "x"); rc != 0x03 {
		t.Fatalf("unknown user: CONNACK %#x, want 0x03 server unavailable", rc)
	}
	if st := e.Stats(); st.ConnectionsShed != 3 || st.AuthFailures != 0 {
		t.Fatalf("ConnectionsShed = %d, AuthFailures = %d; want 3, 0", st.ConnectionsShed, st.AuthFailures)
	}
	for range cap(e.auth.sem) {
		<-e.auth.sem
	}
	if rc := connack3(t, addr, "a", "alice", "s3cret"); rc != 0 {
		t.Fatalf("CONNACK %#x once the checks are free", rc)
	}
	if rc := connack3(t, addr, "b", "bob", "wrong"); rc != 0x05 {
		t.Fatalf("wrong password: CONNACK %#x, want 0x05", rc)
	}
}

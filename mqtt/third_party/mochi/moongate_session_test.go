// SPDX-License-Identifier: MIT

package mqtt

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// moongate's change to the session expiry (README.moongate.md section 13):
// run with -race (make test-mochi).

// expiryHook reads the session expiry interval in OnQosPublish, as
// moongate's session hook does, both ways: the plain field, which nothing
// may write once the client is shared, and SessionExpiry.
type expiryHook struct {
	HookBase
	seen chan uint32
}

func (h *expiryHook) ID() string { return "expiry-reader" }
func (h *expiryHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck || b == OnQosPublish
}
func (h *expiryHook) OnConnectAuthenticate(cl *Client, pk packets.Packet) bool { return true }
func (h *expiryHook) OnACLCheck(cl *Client, topic string, write bool) bool     { return true }
func (h *expiryHook) OnQosPublish(cl *Client, pk packets.Packet, sent int64, resends int) {
	plain := cl.Properties.Props.SessionExpiryInterval
	iv, _ := cl.SessionExpiry()
	if plain != iv && plain < iv {
		panic("SessionExpiry above the connection's interval")
	}
	select {
	case h.seen <- iv:
	default:
	}
}

func newExpiryServer(t *testing.T, maxExpiry uint32) (*Server, *expiryHook) {
	t.Helper()
	caps := NewDefaultServerCapabilities()
	caps.MaximumSessionExpiryInterval = maxExpiry
	s := New(&Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	h := &expiryHook{seen: make(chan uint32, 1)}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return s, h
}

func writePacket(t *testing.T, w io.Writer, pk packets.Packet) {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func connectV5(id string, expiry uint32) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 30},
		Properties:      packets.Properties{SessionExpiryInterval: expiry, SessionExpiryIntervalFlag: true},
	}
}

// A client asking for more than the server's maximum reconnects to a
// session with a subscription, and a message is published to it while its
// CONNACK is still being written (the pipe is not read): mochi lowered the
// interval in SendConnack, after registering the client, a write the race
// detector reported against the publisher's hook. The CONNACK still
// carries the server's maximum.
func TestSessionExpiryClampedBeforeShared(t *testing.T) {
	s, h := newExpiryServer(t, 3600)
	sub := packets.Subscription{Filter: "t", Qos: 1}
	old := s.NewClient(nil, "tcp", "sub", false)
	old.Properties.ProtocolVersion = 5
	old.Properties.Props.SessionExpiryInterval = 3600
	old.setSessionExpiry(3600, true)
	old.Stop(nil)
	old.State.Subscriptions.Add("t", sub)
	s.Topics.Subscribe("sub", sub)
	s.Clients.Add(old)

	srvConn, cliConn := net.Pipe()
	defer cliConn.Close()
	done := make(chan struct{})
	go func() {
		_ = s.EstablishConnection("tcp", srvConn)
		close(done)
	}()
	writePacket(t, cliConn, connectV5("sub", 0xFFFFFFFF))
	waitFor(t, "the new connection to be registered", func() bool {
		cl, ok := s.Clients.Get("sub")
		return ok && cl != old
	})
	if err := s.Publish("t", []byte("x"), false, 1); err != nil {
		t.Fatal(err)
	}
	if got := <-h.seen; got != 3600 {
		t.Fatalf("hook saw session expiry %d, want 3600", got)
	}

	r := bufio.NewReader(cliConn)
	fh := new(packets.FixedHeader)
	b, err := r.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Decode(b); err != nil {
		t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	fh.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	ack := packets.Packet{FixedHeader: *fh, ProtocolVersion: 5}
	if err := ack.ConnackDecode(body); err != nil {
		t.Fatal(err)
	}
	if !ack.Properties.SessionExpiryIntervalFlag || ack.Properties.SessionExpiryInterval != 3600 {
		t.Fatalf("CONNACK session expiry %d (flag %v), want the server's 3600", ack.Properties.SessionExpiryInterval, ack.Properties.SessionExpiryIntervalFlag)
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	cliConn.Close()
	<-done
}

// A DISCONNECT that sets the session expiry to 0 while messages are being
// published to the client: mochi wrote the interval into Props on the read
// loop while publishers' hooks read it. It now goes through SessionExpiry,
// and the session ends with the connection as the DISCONNECT asked.
func TestSessionExpiryChangedByDisconnect(t *testing.T) {
	s, h := newExpiryServer(t, 3600)
	srvConn, cliConn := net.Pipe()
	done := make(chan struct{})
	go func() {
		_ = s.EstablishConnection("tcp", srvConn)
		close(done)
	}()
	go func() { _, _ = io.Copy(io.Discard, cliConn) }()
	writePacket(t, cliConn, connectV5("dev", 600))
	writePacket(t, cliConn, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "t", Qos: 1}},
	})
	waitFor(t, "the subscription", func() bool { return len(s.Topics.Subscribers("t").Subscriptions) == 1 })

	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = s.Publish("t", []byte("x"), false, 1)
		}
	}()
	if got := <-h.seen; got != 600 { // messages are reaching the client
		t.Fatalf("hook saw session expiry %d, want 600", got)
	}
	writePacket(t, cliConn, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5,
		Properties: packets.Properties{SessionExpiryInterval: 0, SessionExpiryIntervalFlag: true},
	})
	<-done
	close(stop)
	<-pubDone
	if _, ok := s.Clients.Get("dev"); ok {
		t.Fatal("the session outlived a DISCONNECT with session expiry 0")
	}
}

// A device whose will is delayed has reconnected when the delay runs out:
// the event loop neither publishes the will (MQTT-3.1.3-9) nor clears the
// new connection's own will. (mochi published it, then cleared the will of
// whatever client held the id.)
func TestDelayedWillSparesNewConnection(t *testing.T) {
	s, _ := newExpiryServer(t, 3600)
	var mu sync.Mutex
	var got []string
	if err := s.Subscribe("will/#", 1, func(cl *Client, sub packets.Subscription, pk packets.Packet) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, pk.TopicName)
	}); err != nil {
		t.Fatal(err)
	}
	cl := s.NewClient(nil, "tcp", "dev", false) // live: not stopped
	cl.Properties.Will = Will{Flag: 1, TopicName: "will/new", Payload: []byte("bye")}
	s.Clients.Add(cl)
	s.loop.willDelayed.Add("dev", packets.Packet{TopicName: "will/old", Payload: []byte("gone"), Expiry: 0})
	s.sendDelayedLWT(time.Now().Unix())
	published := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
	if p := published(); len(p) != 0 {
		t.Fatalf("will published to %v although the device is connected again", p)
	}
	if cl.Properties.Will.Flag != 1 {
		t.Fatal("the new connection's will was cleared")
	}
	if s.loop.willDelayed.Len() != 0 {
		t.Fatal("the cancelled will is still queued")
	}

	// The same will for a device that did not come back is published.
	cl.Stop(nil)
	s.loop.willDelayed.Add("dev", packets.Packet{TopicName: "will/old", Payload: []byte("gone"), Expiry: 0})
	s.sendDelayedLWT(time.Now().Unix())
	if p := published(); len(p) != 1 || p[0] != "will/old" {
		t.Fatalf("published %v, want the delayed will once", p)
	}
}

// dropHook publishes a message to the session being taken over from
// inside the takeover (OnQosDropped is called while the previous
// connection's messages in flight are cleared, after they were copied to
// the new client) and waits a little for that publish to return.
type dropHook struct {
	HookBase
	s        *Server
	fired    bool
	returned chan bool // whether the publish returned within the wait
}

func (h *dropHook) ID() string { return "drop-publisher" }
func (h *dropHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck || b == OnQosDropped
}
func (h *dropHook) OnConnectAuthenticate(cl *Client, pk packets.Packet) bool { return true }
func (h *dropHook) OnACLCheck(cl *Client, topic string, write bool) bool     { return true }
func (h *dropHook) OnQosDropped(cl *Client, pk packets.Packet) {
	if h.fired || cl.ID != "sub" {
		return
	}
	h.fired = true
	done := make(chan struct{})
	go func() {
		_ = h.s.Publish("t", []byte("late"), false, 1)
		close(done)
	}()
	// Before the change the publish returned at once, into the old
	// client object. Now it waits for the takeover: give it a moment to
	// show that it does wait (a publish that returns here fails the test
	// below only if the message is then lost).
	select {
	case <-done:
		h.returned <- true
	case <-time.After(200 * time.Millisecond):
		h.returned <- false
	}
}

// readPublish reads packets from r until a PUBLISH with payload want
// arrives (true) or the connection ends (false).
func readPublish(r *bufio.Reader, want string) bool {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return false
		}
		fh := new(packets.FixedHeader)
		if err := fh.Decode(b); err != nil {
			return false
		}
		n, _, err := packets.DecodeLength(r)
		if err != nil {
			return false
		}
		fh.Remaining = n
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return false
		}
		if fh.Type != packets.Publish {
			continue
		}
		pk := packets.Packet{FixedHeader: *fh, ProtocolVersion: 5}
		if err := pk.PublishDecode(body); err == nil && string(pk.Payload) == want {
			return true
		}
	}
}

// A QoS 1 message published to a persistent session while a new
// connection takes it over reaches the new connection. mochi copied the
// old client's messages in flight to the new client, then registered it;
// a message published in between went to the old client object and was
// lost (and moongate's session hook did not store it either: the old
// client was already marked taken over).
func TestMessageDuringTakeoverReachesNewConnection(t *testing.T) {
	caps := NewDefaultServerCapabilities()
	s := New(&Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	h := &dropHook{s: s, returned: make(chan bool, 1)}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	// An offline persistent session subscribed to "t" with one message in
	// flight (so that the takeover copies and clears messages in flight).
	sub := packets.Subscription{Filter: "t", Qos: 1}
	old := s.NewClient(nil, "tcp", "sub", false)
	old.Properties.ProtocolVersion = 5
	old.setSessionExpiry(3600, true)
	old.Stop(nil)
	old.State.Subscriptions.Add("t", sub)
	s.Topics.Subscribe("sub", sub)
	s.Clients.Add(old)
	if err := s.Publish("t", []byte("early"), false, 1); err != nil {
		t.Fatal(err)
	}
	if old.State.Inflight.Len() != 1 {
		t.Fatalf("old session holds %d messages, want 1", old.State.Inflight.Len())
	}

	srvConn, cliConn := net.Pipe()
	done := make(chan struct{})
	go func() {
		_ = s.EstablishConnection("tcp", srvConn)
		close(done)
	}()
	writePacket(t, cliConn, connectV5("sub", 3600))
	r := bufio.NewReader(cliConn)
	got := make(chan bool, 1)
	go func() { got <- readPublish(r, "late") }()
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("connection ended without the message published during the takeover")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message published during the takeover never reached the new connection")
	}
	if returned := <-h.returned; returned {
		t.Log("the publish returned within the takeover (it was delivered all the same)")
	}
	cliConn.Close()
	<-done
}

// SPDX-License-Identifier: MIT

package mqtt

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// moongate's connection guards (README.moongate.md section 15): run with
// -race (make test-mochi).

// connectHook accepts every client, or refuses it with refusal when set,
// and counts OnSessionEstablish calls.
type connectHook struct {
	HookBase
	refusal     packets.Code
	established atomic.Int32
}

func (h *connectHook) ID() string { return "connect-guard" }
func (h *connectHook) Provides(b byte) bool {
	return b == OnConnectAuthenticate || b == OnACLCheck || b == OnSessionEstablish
}
func (h *connectHook) OnConnectAuthenticate(cl *Client, pk packets.Packet) bool {
	if h.refusal.Code != 0 {
		cl.RefuseConnect(h.refusal)
		return false
	}
	return true
}
func (h *connectHook) OnACLCheck(cl *Client, topic string, write bool) bool { return true }
func (h *connectHook) OnSessionEstablish(cl *Client, pk packets.Packet)     { h.established.Add(1) }

func newGuardServer(t *testing.T, caps *Capabilities, mayTakeOver func(existing, cl *Client) bool) (*Server, *connectHook) {
	t.Helper()
	if caps == nil {
		caps = NewDefaultServerCapabilities()
	}
	s := New(&Options{Capabilities: caps, Logger: slog.New(slog.DiscardHandler), MayTakeOver: mayTakeOver})
	h := &connectHook{}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return s, h
}

// connectAs is a CONNECT of the protocol version (4 or 5) with a user name
// and, for 4, a persistent session.
func connectAs(version byte, id, user string) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id,
			Keepalive: 30, UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte("pw")},
	}
}

// connackCode connects over a pipe with pk and returns the CONNACK's code
// and EstablishConnection's error.
func connackCode(t *testing.T, s *Server, pk packets.Packet) (byte, error) {
	t.Helper()
	srvConn, cliConn := net.Pipe()
	defer cliConn.Close()
	errC := make(chan error, 1)
	go func() { errC <- s.EstablishConnection("tcp", srvConn) }()
	writePacket(t, cliConn, pk)
	_, code := readConnack(t, cliConn)
	cliConn.Close() // an accepted connection ends here
	return code, <-errC
}

// readConnack reads a whole CONNACK and returns its session present flag
// and reason code.
func readConnack(t *testing.T, r io.Reader) (present bool, code byte) {
	t.Helper()
	br := bufio.NewReader(r)
	b, err := br.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	if b != packets.Connack<<4 {
		t.Fatalf("first packet %#x, want CONNACK", b)
	}
	n, _, err := packets.DecodeLength(br)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	if br.Buffered() > 0 {
		t.Fatal("more than the CONNACK read")
	}
	return body[0]&1 == 1, body[1]
}

// MayTakeOver refusing: CONNACK "not authorized" (0x87, MQTT 3.1.1 0x05),
// the session registered under the id is left as it is, and
// OnSessionEstablish (which may discard a stored session) is not called.
func TestMayTakeOverRefuses(t *testing.T) {
	var asked atomic.Int32
	s, h := newGuardServer(t, nil, func(existing, cl *Client) bool {
		asked.Add(1)
		return string(existing.Properties.Username) == string(cl.Properties.Username)
	})
	old := s.NewClient(nil, "tcp", "dev", false)
	old.Properties.Username = []byte("alice")
	old.Properties.ProtocolVersion = 4
	old.Stop(nil)
	sub := packets.Subscription{Filter: "cmd", Qos: 1}
	old.State.Subscriptions.Add("cmd", sub)
	s.Topics.Subscribe("dev", sub)
	s.Clients.Add(old)

	for _, c := range []struct {
		version byte
		code    byte
	}{{5, packets.ErrNotAuthorized.Code}, {4, packets.Err3NotAuthorized.Code}} {
		code, err := connackCode(t, s, connectAs(c.version, "dev", "bob"))
		if code != c.code || !errors.Is(err, packets.ErrNotAuthorized) {
			t.Fatalf("MQTT %d: CONNACK %#x (%v), want %#x", c.version, code, err, c.code)
		}
	}
	if cur, ok := s.Clients.Get("dev"); !ok || cur != old || old.IsTakenOver() || old.State.Subscriptions.Len() != 1 {
		t.Fatal("the refused connection changed the session under its id")
	}
	if n := h.established.Load(); n != 0 {
		t.Fatalf("OnSessionEstablish called %d times for refused connections", n)
	}
	// The same user takes it over.
	srvConn, cliConn := net.Pipe()
	defer cliConn.Close()
	done := make(chan struct{})
	go func() {
		_ = s.EstablishConnection("tcp", srvConn)
		close(done)
	}()
	writePacket(t, cliConn, connectAs(4, "dev", "alice"))
	if present, code := readConnack(t, cliConn); code != 0 || !present {
		t.Fatalf("alice's CONNACK: code %#x, session present %v; want accepted with the session", code, present)
	}
	if asked.Load() != 3 || h.established.Load() != 1 {
		t.Fatalf("MayTakeOver asked %d times, OnSessionEstablish called %d", asked.Load(), h.established.Load())
	}
	cliConn.Close()
	<-done
}

// RefuseConnect replaces "bad user name or password" in the CONNACK.
func TestRefuseConnectCode(t *testing.T) {
	s, h := newGuardServer(t, nil, nil)
	h.refusal = packets.ErrServerBusy
	if code, err := connackCode(t, s, connectAs(5, "a", "u")); code != packets.ErrServerBusy.Code || !errors.Is(err, packets.ErrServerBusy) {
		t.Fatalf("CONNACK %#x (%v), want server busy", code, err)
	}
	h.refusal = packets.ErrServerUnavailable
	if code, _ := connackCode(t, s, connectAs(4, "a", "u")); code != packets.Err3ServerUnavailable.Code {
		t.Fatalf("MQTT 3.1.1: CONNACK %#x, want server unavailable", code)
	}
	h.refusal = packets.Code{}
	if code, _ := connackCode(t, s, connectAs(4, "a", "u")); code != 0 {
		t.Fatalf("CONNACK %#x, want accepted", code)
	}
}

// A CONNECT over MaximumConnectPacketSize ends the connection before its
// body is read; later packets may be up to MaximumPacketSize.
func TestMaximumConnectPacketSize(t *testing.T) {
	caps := NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 1 << 20
	caps.MaximumConnectPacketSize = 1024
	s, _ := newGuardServer(t, caps, nil)
	srvConn, cliConn := net.Pipe()
	defer cliConn.Close()
	errC := make(chan error, 1)
	go func() { errC <- s.EstablishConnection("tcp", srvConn) }()
	// CONNECT, remaining length 2048, no body.
	if _, err := cliConn.Write([]byte{packets.Connect << 4, 0x80, 0x10}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errC:
		if !errors.Is(err, packets.ErrPacketTooLarge) {
			t.Fatalf("EstablishConnection: %v, want packet too large", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server waits for the CONNECT's body")
	}
	if code, _ := connackCode(t, s, connectAs(4, "a", "u")); code != 0 {
		t.Fatalf("a small CONNECT: CONNACK %#x", code)
	}
}

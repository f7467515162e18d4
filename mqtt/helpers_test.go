package mqtt

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MOONGATE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startEmbedded starts an embedded broker on a random loopback port.
func startEmbedded(t testing.TB, cfg EmbeddedConfig, h Handler, filters ...string) *Embedded {
	t.Helper()
	return startEmbeddedLog(t, cfg, testLogger(t), h, filters...)
}

// startEmbeddedLog is startEmbedded logging to log.
func startEmbeddedLog(t testing.TB, cfg EmbeddedConfig, log *slog.Logger, h Handler, filters ...string) *Embedded {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	e, err := NewEmbedded(cfg, log)
	if err != nil {
		t.Fatalf("NewEmbedded: %v", err)
	}
	if filters != nil {
		if err := e.SetFilters(context.Background(), filters); err != nil {
			t.Fatalf("SetFilters: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

type clientOpt func(*paho.ClientOptions)

// dial connects a paho (MQTT 3.1.1) client; it fails the test on error
// unless wantErr is set, in which case the connect error is returned.
func dial(t testing.TB, broker, id string, opts ...clientOpt) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetConnectTimeout(5 * time.Second).SetAutoReconnect(false).SetOrderMatters(false).
		SetProtocolVersion(4)
	for _, f := range opts {
		f(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect timeout")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

func mustDial(t testing.TB, broker, id string, opts ...clientOpt) paho.Client {
	t.Helper()
	c, err := dial(t, broker, id, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

func withCreds(user, pass string) clientOpt {
	return func(o *paho.ClientOptions) { o.SetUsername(user).SetPassword(pass) }
}

func waitToken(t testing.TB, tok paho.Token) error {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("token timed out")
	}
	return tok.Error()
}

// recorder is a Handler collecting messages.
type recorder struct {
	mu   sync.Mutex
	msgs []*Message
}

func (r *recorder) handle(ctx context.Context, m *Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	return nil
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) get(i int) *Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs[i]
}

// Raw MQTT 3.1.1 packets, for input paho refuses to produce.

func rawString(s string) []byte {
	b := make([]byte, 2+len(s))
	binary.BigEndian.PutUint16(b, uint16(len(s)))
	copy(b[2:], s)
	return b
}

func rawPacket(typeFlags byte, body []byte) []byte {
	var out bytes.Buffer
	out.WriteByte(typeFlags)
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out.WriteByte(d)
		if n == 0 {
			break
		}
	}
	out.Write(body)
	return out.Bytes()
}

func rawConnect(id, user, pass string) []byte {
	return rawConnectKA(id, user, pass, 60)
}

func rawConnectKA(id, user, pass string, keepalive uint16) []byte {
	var b bytes.Buffer
	b.Write(rawString("MQTT"))
	b.WriteByte(4)
	flags := byte(0x02) // clean session
	if user != "" {
		flags |= 0x80 | 0x40
	}
	b.WriteByte(flags)
	b.Write([]byte{byte(keepalive >> 8), byte(keepalive)})
	b.Write(rawString(id))
	if user != "" {
		b.Write(rawString(user))
		b.Write(rawString(pass))
	}
	return rawPacket(0x10, b.Bytes())
}

func rawPublish(topic string, qos byte, id uint16, payload []byte) []byte {
	var b bytes.Buffer
	b.Write(rawString(topic))
	if qos > 0 {
		b.Write([]byte{byte(id >> 8), byte(id)})
	}
	b.Write(payload)
	return rawPacket(0x30|qos<<1, b.Bytes())
}

// rawDial opens a TCP connection and completes CONNECT/CONNACK.
func rawDial(t testing.TB, addr, id string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(rawConnect(id, "", "")); err != nil {
		t.Fatalf("write connect: %v", err)
	}
	ack := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("read connack: %v", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("connack = % x", ack)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

// expectClosed asserts the server closes the connection (reads EOF or a
// reset) within a few seconds, ignoring any bytes it sends first.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for {
		_, err := c.Read(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("connection still open after 5s")
			}
			return
		}
	}
}

func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

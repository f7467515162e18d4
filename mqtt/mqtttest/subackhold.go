package mqtttest

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// SubackHold is a TCP proxy between MQTT clients and a broker that plays a
// broker too busy to answer: once a client has sent a SUBSCRIBE, what the
// broker sends that client is held until Release. Methods are safe for
// concurrent use.
type SubackHold struct {
	ln          net.Listener
	subscribed  chan struct{}
	release     chan struct{}
	once        sync.Once
	releaseOnce sync.Once
}

// StartSubackHold listens on a free loopback port and forwards each
// connection to broker (host:port) until the test ends.
func StartSubackHold(t testing.TB, broker string) *SubackHold {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &SubackHold{ln: ln, subscribed: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		p.Release()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", broker)
			if err != nil {
				c.Close()
				continue
			}
			var held atomic.Bool
			go p.clientToBroker(c, b, &held)
			go p.brokerToClient(b, c, &held)
		}
	}()
	return p
}

// URL is the proxy's address for paho: "tcp://127.0.0.1:PORT".
func (p *SubackHold) URL() string { return "tcp://" + p.ln.Addr().String() }

// Subscribed is closed when the first SUBSCRIBE went through the proxy.
func (p *SubackHold) Subscribed() <-chan struct{} { return p.subscribed }

// Release lets what the broker sent (and sends) through. Safe to call more
// than once.
func (p *SubackHold) Release() { p.releaseOnce.Do(func() { close(p.release) }) }

// clientToBroker forwards packet by packet, noting SUBSCRIBEs.
func (p *SubackHold) clientToBroker(c, b net.Conn, held *atomic.Bool) {
	defer b.Close()
	r := bufio.NewReader(c)
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return
		}
		hdr, n := []byte{typ}, 0
		for mul := 1; ; mul *= 128 {
			x, err := r.ReadByte()
			if err != nil {
				return
			}
			hdr = append(hdr, x)
			n += int(x&0x7f) * mul
			if x&0x80 == 0 || len(hdr) == 5 {
				break
			}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if typ>>4 == 8 { // SUBSCRIBE
			held.Store(true)
			p.once.Do(func() { close(p.subscribed) })
		}
		if _, err := b.Write(append(hdr, body...)); err != nil {
			return
		}
	}
}

// brokerToClient forwards bytes, holding them once the client subscribed.
func (p *SubackHold) brokerToClient(b, c net.Conn, held *atomic.Bool) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := b.Read(buf)
		if n > 0 {
			if held.Load() {
				<-p.release
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

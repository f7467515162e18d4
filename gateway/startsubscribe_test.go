package gateway

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/mqtt/mqtttest"
)

// holdSubackProxy forwards TCP between a client and broker. When the
// client sends its first SUBSCRIBE it reports it on subscribed and holds
// everything the broker sends until release is closed.
type holdSubackProxy struct {
	ln         net.Listener
	subscribed chan struct{}
	release    chan struct{}
	once       sync.Once
	mu         sync.Mutex
	hold       bool
}

func startHoldSubackProxy(t *testing.T, broker string) *holdSubackProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdSubackProxy{ln: ln, subscribed: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-p.release:
		default:
			close(p.release)
		}
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
			go p.clientToBroker(c, b)
			go p.brokerToClient(b, c)
		}
	}()
	return p
}

func (p *holdSubackProxy) clientToBroker(c, b net.Conn) {
	defer b.Close()
	r := bufio.NewReader(c)
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return
		}
		hdr := []byte{typ}
		n, mul := 0, 1
		for {
			x, err := r.ReadByte()
			if err != nil {
				return
			}
			hdr = append(hdr, x)
			n += int(x&0x7f) * mul
			mul *= 128
			if x&0x80 == 0 {
				break
			}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if typ>>4 == 8 { // SUBSCRIBE
			p.once.Do(func() {
				p.mu.Lock()
				p.hold = true
				p.mu.Unlock()
				close(p.subscribed)
			})
		}
		if _, err := b.Write(append(hdr, body...)); err != nil {
			return
		}
	}
}

func (p *holdSubackProxy) brokerToClient(b, c net.Conn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := b.Read(buf)
		if n > 0 {
			p.mu.Lock()
			hold := p.hold
			p.mu.Unlock()
			if hold {
				<-p.release
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestFunctionDeployedWhileSubscribingIsSubscribed: a function deployed
// (functions_dir) while Run subscribes at start (the SUBACK held back by a
// proxy) gets its subscription. Run read the filters, subscribed them, and
// only then was ready; the deploy in between saw it not ready and left the
// subscriptions to Run, which subscribed the list it had read before: the
// broker acknowledged the new function's events and dropped them.
func TestFunctionDeployedWhileSubscribingIsSubscribed(t *testing.T) {
	m := mqtttest.StartMosquitto(t)
	proxy := startHoldSubackProxy(t, m.Addr())
	dataDir, fnDir := t.TempDir(), t.TempDir()
	writeFunction(t, fnDir, "a", recordPayloadLua, "triggers:\n  - mqtt: a/{device}\n")
	cfgYAML := testConfig(dataDir, fnDir, externalMQTT("tcp://"+proxy.ln.Addr().String(), "moongate-startrace"))
	cfg, err := config.Parse("test.yaml", []byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := NewDaemon(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	d.FunctionsPoll = 20 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("daemon did not stop")
		}
	})
	select {
	case <-proxy.subscribed:
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway never subscribed")
	}
	// The gateway is in Run's SetFilters, its SUBACK held. A new function
	// arrives meanwhile.
	writeFunction(t, fnDir, "b", recordPayloadLua, "triggers:\n  - mqtt: b/{device}\n")
	waitFor(t, 20*time.Second, "function b deployed", func() bool {
		for _, f := range d.Gateway().Functions() {
			if f.Name == "b" {
				return true
			}
		}
		return false
	})
	close(proxy.release)
	waitFor(t, 20*time.Second, "ready", d.Gateway().Ready)
	dev := connect(t, m.URL(), "d1", true)
	publish(t, dev, "b/d1", 1, []byte("for b"))
	publish(t, dev, "a/d1", 1, []byte("marker"))
	waitFor(t, 20*time.Second, "function a's record", func() bool { return len(allRecords(t, d.Store(), "a")) == 1 })
	if !poll(5*time.Second, func() bool { return len(allRecords(t, d.Store(), "b")) == 1 }) {
		t.Fatalf("the event for function b (deployed while the gateway subscribed at start) was never processed: gateway %+v", d.Gateway().Stats())
	}
}

const recordPayloadLua = `
function handle(e, ctx)
  return {p = e.payload}
end
`

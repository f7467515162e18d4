package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestBoundedConn: packets within the bound pass through unchanged, read
// whole or a byte at a time; a length over the bound, or a malformed
// 5-byte length, fails the read before the reader sees it.
func TestBoundedConn(t *testing.T) {
	small := []byte{0x40, 0x02, 0x00, 0x01}                       // PUBACK
	mid := append([]byte{0x30, 0x80, 0x01}, make([]byte, 128)...) // PUBLISH of 128 bytes (2-byte length)
	for _, c := range []struct {
		name    string
		stream  []byte
		good    int // bytes that pass before the error (all when no error)
		wantErr bool
	}{
		{"within", append(append([]byte{}, small...), mid...), len(small) + len(mid), false},
		{"over", append(append([]byte{}, small...), 0x30, 0xff, 0xff, 0xff, 0x7f), len(small), true},
		{"just over", append(append([]byte{}, small...), 0x30, 0x81, 0x01), len(small), true}, // 129 > 128
		{"malformed length", append(append([]byte{}, small...), 0x30, 0x80, 0x80, 0x80, 0x80, 0x01), len(small), true},
	} {
		for _, oneByte := range []bool{false, true} {
			a, b := net.Pipe()
			go func() { b.Write(c.stream); b.Close() }()
			var r io.Reader = &boundedConn{Conn: a, max: 128}
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			var got bytes.Buffer
			_, err := io.Copy(&got, r)
			a.Close()
			if c.wantErr != errors.Is(err, ErrPacketTooLarge) {
				t.Errorf("%s (one byte %v): error %v", c.name, oneByte, err)
			}
			if c.wantErr {
				// Read whole, the buffer holding the bad header is refused
				// with the packets before it; a byte at a time, the bytes
				// before the one that gives the length away pass (paho
				// allocates only once the length is complete).
				if g := got.Bytes(); len(g) >= len(c.stream) || !bytes.HasPrefix(c.stream, g) || (oneByte && len(g) < c.good) {
					t.Errorf("%s (one byte %v): passed %x of %x", c.name, oneByte, g, c.stream)
				}
				continue
			}
			if !bytes.Equal(got.Bytes(), c.stream[:c.good]) {
				t.Errorf("%s (one byte %v): passed %x, want %x", c.name, oneByte, got.Bytes(), c.stream[:c.good])
			}
		}
	}
}

// countingListener accepts connections on loopback, counts them and closes
// them.
func countingListener(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return l.Addr().String(), &n
}

// TestDialBrokerTLSThroughProxy: a TLS broker is dialled through the proxy
// of all_proxy, as paho's own opener does (the external client's opener
// went straight to the broker), and directly without one. The dials run in
// child processes: golang.org/x/net/proxy reads the environment once per
// process, so setting all_proxy here would send every later dial of this
// test binary to the proxy.
func TestDialBrokerTLSThroughProxy(t *testing.T) {
	if broker := os.Getenv("MOONGATE_TEST_DIAL_BROKER"); broker != "" {
		uri, err := url.Parse(broker)
		if err != nil {
			t.Fatal(err)
		}
		o := paho.NewClientOptions()
		o.SetConnectTimeout(2 * time.Second)
		if _, err := dialBroker(uri, o); err == nil {
			t.Fatal("dial succeeded: the listeners close every connection")
		}
		return
	}
	proxyAddr, viaProxy := countingListener(t)
	brokerAddr, direct := countingListener(t)
	dial := func(proxy string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestDialBrokerTLSThroughProxy$")
		cmd.Env = append(os.Environ(), "MOONGATE_TEST_DIAL_BROKER=ssl://"+brokerAddr, "all_proxy="+proxy, "ALL_PROXY=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
	}
	dial("socks5://" + proxyAddr)
	if viaProxy.Load() != 1 || direct.Load() != 0 {
		t.Fatalf("with all_proxy: %d through the proxy, %d direct", viaProxy.Load(), direct.Load())
	}
	dial("")
	if viaProxy.Load() != 1 || direct.Load() != 1 {
		t.Fatalf("without all_proxy: %d through the proxy, %d direct", viaProxy.Load(), direct.Load())
	}
}

package mqtt

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

var (
	fuzzBrokerOnce sync.Once
	fuzzBroker     *Embedded
	fuzzBrokerErr  error
	fuzzBrokerBad  atomic.Value // string: what the Handler saw that it must not
)

// FuzzEmbeddedPackets sends arbitrary bytes after a valid CONNECT to the
// embedded broker (one broker for the whole run) and checks that it keeps
// serving: a hostile device must not crash or wedge the gateway, and the
// Handler only ever sees valid topics within the payload limit.
func FuzzEmbeddedPackets(f *testing.F) {
	seeds := [][]byte{
		rawPublish("a/b", 1, 1, []byte("x")),
		rawPublish("a/+", 1, 1, nil),
		rawPublish("\xff", 0, 0, nil),
		rawPublish("", 1, 1, nil),
		rawPacket(0x32, []byte{0, 1}),               // truncated topic
		rawPacket(0x82, []byte{0, 1, 0, 1, 'a', 1}), // SUBSCRIBE a qos1
		rawPacket(0x82, []byte{0, 1, 0, 3, 'a', '/', '#', 3}),
		rawPacket(0xA2, []byte{0, 2, 0, 1, 'a'}),                             // UNSUBSCRIBE
		rawPacket(0x62, []byte{0, 1}),                                        // PUBREL unknown id
		rawPacket(0x40, []byte{0, 7}),                                        // PUBACK unknown id
		rawPacket(0xC0, nil),                                                 // PINGREQ
		rawPacket(0xE0, nil),                                                 // DISCONNECT
		rawPacket(0x10, []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0}), // second CONNECT
		{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f},                                 // bad remaining length
		{0xf0, 0x00},                                                         // reserved type
		append(rawPublish("q/2", 2, 3, []byte("two")), rawPacket(0x62, []byte{0, 3})...),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzBrokerOnce.Do(func() {
			e, err := NewEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true, MaxPayload: 4096}, testLogger(t))
			if err != nil {
				fuzzBrokerErr = err
				return
			}
			_ = e.SetFilters(context.Background(), []string{"#"})
			fuzzBrokerErr = e.Start(context.Background(), func(ctx context.Context, m *Message) error {
				if err := topics.ValidName(m.Topic); err != nil || m.Topic[0] == '$' {
					fuzzBrokerBad.Store("handler got invalid topic " + m.Topic)
				}
				if len(m.Payload) > 4096 {
					fuzzBrokerBad.Store("handler got an oversize payload")
				}
				return nil
			})
			fuzzBroker = e
		})
		if fuzzBrokerErr != nil {
			t.Fatal(fuzzBrokerErr)
		}
		addr := fuzzBroker.Addr().String()
		c := rawDial(t, addr, "fuzz")
		_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		_, _ = c.Write(data)
		buf := make([]byte, 1024)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		// The broker still serves a new client.
		c2, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("broker stopped accepting: %v", err)
		}
		c2.Close()
		if bad := fuzzBrokerBad.Load(); bad != nil {
			t.Fatal(bad)
		}
		if s := fuzzBroker.Stats(); s.Rejected > s.Received {
			t.Fatalf("stats inconsistent: %+v", s)
		}
	})
}

package gateway

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// qos2Dev is a hand-written MQTT 3.1.1 device, so that the test sees (and
// decides) every packet of a QoS 2 exchange.
type qos2Dev struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func q2str(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

func q2packet(typeFlags byte, body []byte) []byte {
	out := []byte{typeFlags}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

func dialQoS2Dev(t *testing.T, addr, id string, clean bool) *qos2Dev {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d := &qos2Dev{t: t, c: c, r: bufio.NewReader(c)}
	flags := byte(0)
	if clean {
		flags = 0x02
	}
	body := append(q2str("MQTT"), 4, flags, 0, 60)
	body = append(body, q2str(id)...)
	d.write(q2packet(0x10, body))
	if ack := d.read(0x20); ack[1] != 0 {
		t.Fatalf("CONNACK %x", ack)
	}
	return d
}

func (d *qos2Dev) write(p []byte) {
	d.t.Helper()
	if _, err := d.c.Write(p); err != nil {
		d.t.Fatal(err)
	}
}

// next reads one packet: its first byte and its body.
func (d *qos2Dev) next(timeout time.Duration) (byte, []byte, error) {
	_ = d.c.SetReadDeadline(time.Now().Add(timeout))
	h, err := d.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		b, err := d.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(d.r, body); err != nil {
		return 0, nil, err
	}
	return h, body, nil
}

// read returns the body of the next packet of type want (high nibble),
// skipping others.
func (d *qos2Dev) read(want byte) []byte {
	d.t.Helper()
	for {
		h, body, err := d.next(10 * time.Second)
		if err != nil {
			d.t.Fatalf("reading packet type %x: %v", want>>4, err)
		}
		if h&0xf0 == want&0xf0 {
			return body
		}
	}
}

func q2id(id uint16) []byte { return binary.BigEndian.AppendUint16(nil, id) }

// A device (persistent session, MQTT 3.1.1) publishes a QoS 2 message and
// completes the exchange (PUBREC, PUBREL, PUBCOMP); moongate is killed
// right after the PUBCOMP. After the restart the device, which holds
// nothing for the packet id any more, publishes a new QoS 2 message with
// the same id (no DUP): it must be delivered like any message.
func TestQoS2CompletedInboundIDSurvivesSIGKILL(t *testing.T) {
	const tries = 8
	dataDir, fnDir := t.TempDir(), t.TempDir()
	cfgPath, url := childConfig(t, dataDir, fnDir)
	addr := strings.TrimPrefix(url, "tcp://")
	c := startChild(t, cfgPath)
	var lost []int
	for try := range tries {
		id := fmt.Sprintf("dev-%d", try)
		topic := "devices/" + id + "/telemetry"
		d := dialQoS2Dev(t, addr, id, false)
		d.write(q2packet(0x34, append(append(q2str(topic), q2id(1)...), "first"...)))
		d.read(0x50) // PUBREC
		d.write(q2packet(0x62, q2id(1)))
		d.read(0x70) // PUBCOMP: the broker owns the message, id 1 is free again
		c.kill()
		d.c.Close()

		c = startChild(t, cfgPath)
		var mu sync.Mutex
		var got []string
		obs := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("obs-" + id).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectTimeout(10 * time.Second))
		if tok := obs.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("observer connect: %v", tok.Error())
		}
		if tok := obs.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
			mu.Lock()
			got = append(got, string(m.Payload()))
			mu.Unlock()
		}); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("observer subscribe: %v", tok.Error())
		}

		d = dialQoS2Dev(t, addr, id, false)
		d.write(q2packet(0x34, append(append(q2str(topic), q2id(1)...), "second"...)))
		d.read(0x50) // PUBREC
		d.write(q2packet(0x62, q2id(1)))
		d.read(0x70) // PUBCOMP: the device takes "second" as delivered
		ok := poll(3*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, p := range got {
				if p == "second" {
					return true
				}
			}
			return false
		})
		t.Logf("try %d: second message delivered: %v", try, ok)
		if !ok {
			lost = append(lost, try)
		}
		d.c.Close()
		obs.Disconnect(0)
	}
	c.kill()
	if len(lost) > 0 {
		t.Fatalf("%d of %d tries: a QoS 2 message the broker answered with PUBREC and PUBCOMP was never delivered (tries %v)", len(lost), tries, lost)
	}
}

// A device (persistent session, MQTT 3.1.1) receives a QoS 2 command and
// completes it (PUBREC, then PUBREL received, PUBCOMP sent); moongate is
// killed right after. After the restart the device must not get the
// command again as a new PUBLISH (it released the packet id at the
// PUBREL, so it would take it as a second command).
func TestQoS2CompletedOutboundNotRedeliveredAfterSIGKILL(t *testing.T) {
	const tries = 8
	dataDir, fnDir := t.TempDir(), t.TempDir()
	cfgPath, url := childConfig(t, dataDir, fnDir)
	addr := strings.TrimPrefix(url, "tcp://")
	c := startChild(t, cfgPath)
	var dup []int
	for try := range tries {
		id := fmt.Sprintf("dev-%d", try)
		topic := "devices/" + id + "/cmd"
		d := dialQoS2Dev(t, addr, id, false)
		d.write(q2packet(0x82, append(append(q2id(1), q2str(topic)...), 2)))
		if ack := d.read(0x90); ack[2] != 2 {
			t.Fatalf("SUBACK %x", ack)
		}
		p := connect(t, url, "pub-"+id, true)
		publish(t, p, topic, 2, []byte("cmd-"+id))
		pk := d.read(0x30)
		pid := binary.BigEndian.Uint16(pk[2+len(topic):])
		d.write(q2packet(0x50, q2id(pid))) // PUBREC
		d.read(0x60)                       // PUBREL: the command is the device's; it forgets pid
		d.write(q2packet(0x70, q2id(pid))) // PUBCOMP
		c.kill()
		d.c.Close()
		p.Disconnect(0)

		c = startChild(t, cfgPath)
		d = dialQoS2Dev(t, addr, id, false)
		again := 0
		for {
			h, body, err := d.next(2 * time.Second)
			if err != nil {
				break // nothing more
			}
			switch h & 0xf0 {
			case 0x30:
				again++
				d.write(q2packet(0x50, body[2+len(topic):4+len(topic)]))
			case 0x60:
				d.write(q2packet(0x70, body[:2]))
			}
		}
		t.Logf("try %d: command delivered again as a new PUBLISH %d times", try, again)
		if again > 0 {
			dup = append(dup, try)
		}
		d.c.Close()
	}
	c.kill()
	if len(dup) > 0 {
		t.Fatalf("%d of %d tries: a QoS 2 command the device had completed (PUBREL received, PUBCOMP sent) was delivered again after the restart (tries %v)", len(dup), tries, dup)
	}
}

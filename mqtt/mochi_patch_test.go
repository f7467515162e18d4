package mqtt

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Tests of the two changes moongate makes to mochi
// (mqtt/third_party/mochi/README.moongate.md): packet ids of the two
// directions are separate spaces, and messages in flight are resent in the
// order they were queued.

// publishID returns the packet id of a QoS 1 PUBLISH body on topic.
func publishID(body []byte, topic string) uint16 {
	return binary.BigEndian.Uint16(body[2+len(topic):])
}

// A device's own QoS 1 publish, SUBSCRIBE and UNSUBSCRIBE reuse the packet
// id of a command in flight to it (device ids count from 1 after every
// reconnect, the broker's too: collisions are the rule). The command stays
// in flight and is resent on the next connection; the device's packets are
// answered normally.
func TestPacketIDSpacesAreSeparate(t *testing.T) {
	ctx := context.Background()
	b := openSessionBroker(t, t.TempDir())
	c := dialRaw311(t, b.e, "dev1", false)
	c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("cmd/dev1")...), 1)))
	if ack := c.read(0x90); ack[2] != 1 {
		t.Fatalf("SUBACK %x", ack)
	}
	if err := b.e.Publish(ctx, "cmd/dev1", []byte("on"), 1, false); err != nil {
		t.Fatal(err)
	}
	id := publishID(c.read(0x30), "cmd/dev1") // not acknowledged
	idb := binary.BigEndian.AppendUint16(nil, id)

	// A QoS 1 publish with the same id: acknowledged, command untouched.
	c.write(rawPacket(0x32, append(append(rawString("devices/dev1/telemetry"), idb...), "21.5"...)))
	if ack := c.read(0x40); binary.BigEndian.Uint16(ack) != id {
		t.Fatalf("PUBACK %x, want id %d", ack, id)
	}
	// A SUBSCRIBE with the same id: granted.
	c.write(rawPacket(0x82, append(append(append([]byte{}, idb...), rawString("cfg/dev1")...), 1)))
	if ack := c.read(0x90); binary.BigEndian.Uint16(ack) != id || ack[2] != 1 {
		t.Fatalf("SUBACK %x, want id %d granted QoS 1", ack, id)
	}
	// An UNSUBSCRIBE with the same id: done.
	c.write(rawPacket(0xa2, append(append([]byte{}, idb...), rawString("cfg/dev1")...)))
	c.read(0xb0)
	cl, _ := b.e.srv.Clients.Get("dev1")
	if _, kept := cl.State.Subscriptions.Get("cfg/dev1"); kept {
		t.Fatal("UNSUBSCRIBE refused: its id was taken for the command's")
	}
	if pk, ok := cl.State.Inflight.Get(id); !ok || string(pk.Payload) != "on" {
		t.Fatalf("command in flight = %+v %v, want it kept", pk, ok)
	}
	c.conn.Close()

	// The command comes again on the next connection, and from the store
	// after a restart.
	c = dialRaw311(t, b.e, "dev1", false)
	if body := c.read(0x30); publishID(body, "cmd/dev1") != id || string(body[2+len("cmd/dev1")+2:]) != "on" {
		t.Fatalf("resent %x, want the command", body)
	}
	c.conn.Close()
	if n := b.items(t); n[kindInflight] != 1 || n[kindSub] != 1 {
		t.Fatalf("stored items by kind: %v, want the command and one subscription", n)
	}
}

// An inbound QoS 2 flow and an outbound QoS 1 delivery with the same packet
// id live side by side, in mochi and in the store, and each completes.
func TestPacketIDSpacesQoS2(t *testing.T) {
	ctx := context.Background()
	b := openSessionBroker(t, t.TempDir())
	c := dialRaw311(t, b.e, "dev2", false)
	c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("cmd/dev2")...), 1)))
	c.read(0x90)
	if err := b.e.Publish(ctx, "cmd/dev2", []byte("on"), 1, false); err != nil {
		t.Fatal(err)
	}
	id := publishID(c.read(0x30), "cmd/dev2")
	idb := binary.BigEndian.AppendUint16(nil, id)
	c.write(rawPacket(0x34, append(append(rawString("devices/dev2/telemetry"), idb...), "1"...)))
	if rec := c.read(0x50); binary.BigEndian.Uint16(rec) != id {
		t.Fatalf("PUBREC %x", rec)
	}
	if n := b.items(t); n[kindInflight] != 2 {
		t.Fatalf("stored items by kind: %v, want the command and the PUBREC", n)
	}
	c.write(rawPacket(0x62, idb)) // PUBREL
	if comp := c.read(0x70); binary.BigEndian.Uint16(comp) != id {
		t.Fatalf("PUBCOMP %x", comp)
	}
	c.write(rawPacket(0x40, idb)) // PUBACK of the command
	cl, _ := b.e.srv.Clients.Get("dev2")
	waitFor(t, "the command's PUBACK", 5e9, func() bool { return cl.State.Inflight.Len() == 0 })
	if n := b.items(t); n[kindInflight] != 0 {
		t.Fatalf("stored items by kind: %v, want nothing in flight", n)
	}
}

// Commands queued for an offline device within the same second come back
// in the order they were published, on reconnection and after a restart of
// the broker (mochi sorted them by their creation second, unstably).
func TestQueuedMessagesKeepOrder(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			b := openSessionBroker(t, dir)
			c := dialRaw311(t, b.e, "dev3", false)
			c.write(rawPacket(0x82, append(append([]byte{0, 1}, rawString("cmd/dev3")...), 1)))
			c.read(0x90)
			c.conn.Close()
			cl, _ := b.e.srv.Clients.Get("dev3")
			waitFor(t, "the disconnection", 5e9, cl.Closed)
			const n = 60
			var want, got []string
			for i := range n {
				if err := b.e.Publish(ctx, "cmd/dev3", []byte(fmt.Sprint(i)), 1, false); err != nil {
					t.Fatal(err)
				}
				want = append(want, fmt.Sprint(i))
			}
			if restart {
				b.close()
				b = openSessionBroker(t, dir)
			}
			c = dialRaw311(t, b.e, "dev3", false)
			for range n {
				got = append(got, string(c.read(0x30)[2+len("cmd/dev3")+2:]))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("received %q,\nwant %q", got, want)
			}
		})
	}
}

// The order survives packet ids wrapping past 65535 and the ids freed by
// acknowledged messages being reused.
func TestInflightOrderAcrossIDReuse(t *testing.T) {
	in := mochi.NewInflights()
	for _, id := range []uint16{65534, 65535, 1, 2} {
		in.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id, Created: 1})
	}
	in.Delete(65535)
	in.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 65535, Created: 1})
	// A PUBREL replacing its PUBLISH keeps the place of the PUBLISH.
	in.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: 1, Created: 1})
	var got []uint16
	for _, pk := range in.GetAll(false) {
		got = append(got, pk.PacketID)
	}
	if fmt.Sprint(got) != fmt.Sprint([]uint16{65534, 1, 2, 65535}) {
		t.Fatalf("order %v", got)
	}
}

// Messages stored before in-flight items had a direction and an order (key
// without the direction byte, mochi's encoding alone) are restored,
// delivered, and stored again in the current form.
func TestSessionsLegacyInflightItems(t *testing.T) {
	dir := t.TempDir()
	st := openSessionStore(t, dir)
	items := map[string]string{
		string(clientPrefix(kindClient, "dev4")): `{"id":"dev4","clean":false,"protocolVersion":4}`,
		string(subKey("dev4", "cmd/dev4")):       `{"client":"dev4","filter":"cmd/dev4","qos":1}`,
	}
	for i := uint16(1); i <= 3; i++ {
		k := binary.BigEndian.AppendUint16(clientPrefix(kindInflight, "dev4"), i)
		items[string(k)] = fmt.Sprintf(`{"client":"dev4","packet_id":%d,"fixedheader":{"type":3,"qos":1},"topic_name":"cmd/dev4","payload":"%s"}`,
			i, base64.StdEncoding.EncodeToString([]byte(fmt.Sprint("old", i))))
	}
	for k, v := range items {
		if err := st.SetSession([]byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	b := openSessionBroker(t, dir)
	if got := b.items(t)[kindInflight]; got != 3 {
		t.Fatalf("%d in-flight items after start, want 3", got)
	}
	n := 0
	err := b.st.LoadSessions(context.Background(), func(k, v []byte) error {
		if k[0] == kindInflight {
			if len(k) != 1+digestLen+3 || v[0] != orderedVersion {
				t.Errorf("in-flight item %x = %q not in the current form", k, v)
			}
			n++
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("in-flight items after start: %d, %v; want 3", n, err)
	}
	dev := newInbox()
	c := dialPersistent(t, b.e, "dev4", dev)
	defer c.Disconnect(250)
	got := dev.wait(t, 3)
	slices.Sort(got) // they had no order
	if fmt.Sprint(got) != "[cmd/dev4=old1 cmd/dev4=old2 cmd/dev4=old3]" {
		t.Fatalf("received %q", got)
	}
}

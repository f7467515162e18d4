package mqtt

import (
	"bytes"
	"errors"
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// streamConn is a net.Conn that reads from r (a broker's byte stream).
type streamConn struct {
	net.Conn
	r      io.Reader
	closed bool
}

func (c *streamConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *streamConn) Close() error               { c.closed = true; return nil }
func (c *streamConn) SetReadDeadline(time.Time) error {
	return nil
}

func encode(t testing.TB, cps ...packets.ControlPacket) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, cp := range cps {
		if err := cp.Write(&b); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func publishPacket(topic string, qos byte, pid uint16, payload []byte, dup, retain bool) *packets.PublishPacket {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName, p.Qos, p.MessageID, p.Payload, p.Dup, p.Retain = topic, qos, pid, payload, dup, retain
	return p
}

type clip struct {
	topic string
	pid   uint16
	qos   byte
	size  int
}

// TestClipConn: payloads over keep bytes reach the reader cut to keep
// bytes, in a PUBLISH that keeps its flags, topic and packet id; every
// other packet passes as it is, whatever the reads' sizes.
func TestClipConn(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 100_000) // 1 MB
	longTopic := strings.Repeat("t", 60_000)
	in := []packets.ControlPacket{
		packets.NewControlPacket(packets.Connack),
		publishPacket("a/b", 1, 7, []byte("small"), false, false),
		publishPacket("a/big", 1, 8, big, true, false),
		publishPacket("a/big0", 0, 0, big, false, true),
		packets.NewControlPacket(packets.Pingresp),
		publishPacket(longTopic, 2, 9, big[:5000], false, false),
		publishPacket("a/exact", 1, 10, big[:100], false, false),
		publishPacket("a/one-more", 1, 11, big[:101], false, false),
		publishPacket("a/empty", 0, 0, nil, false, false),
	}
	stream := encode(t, in...)
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			var clips []clip
			c := newClipConn(&streamConn{r: wrap(bytes.NewReader(stream))}, 100, 1024, func(topic string, pid uint16, qos byte, size int) {
				clips = append(clips, clip{topic, pid, qos, size})
			})
			var r io.Reader = c
			if name == "one byte" {
				r = iotest.OneByteReader(c)
			}
			for i, want := range in {
				got, err := packets.ReadPacket(r)
				if err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				if wp, ok := want.(*packets.PublishPacket); ok && len(wp.Payload) > 100 {
					cut := *wp
					cut.Payload = wp.Payload[:100]
					want = &cut
				}
				if !samePacket(got, want) {
					t.Fatalf("packet %d: %v, want %v", i, got, want)
				}
			}
			if _, err := packets.ReadPacket(r); !errors.Is(err, io.EOF) {
				t.Fatalf("after the stream: %v", err)
			}
			want := []clip{{"a/big", 8, 1, len(big)}, {"a/big0", 0, 0, len(big)}, {longTopic, 9, 2, 5000}, {"a/one-more", 11, 1, 101}}
			if len(clips) != len(want) {
				t.Fatalf("clips %v, want %v", clips, want)
			}
			for i := range want {
				if clips[i] != want[i] {
					t.Fatalf("clips %v, want %v", clips, want)
				}
			}
		})
	}
}

// samePacket compares two packets, a PUBLISH without its remaining length
// (which a cut payload changes).
func samePacket(got, want packets.ControlPacket) bool {
	gp, gok := got.(*packets.PublishPacket)
	wp, wok := want.(*packets.PublishPacket)
	if !gok || !wok {
		return gok == wok && got.String() == want.String()
	}
	return gp.Dup == wp.Dup && gp.Qos == wp.Qos && gp.Retain == wp.Retain && gp.TopicName == wp.TopicName &&
		gp.MessageID == wp.MessageID && bytes.Equal(gp.Payload, wp.Payload)
}

// TestClipConnRefusesLargeControlPackets: a packet other than PUBLISH
// longer than maxOther, or a length of more than four bytes, closes the
// connection with ErrPacketTooLarge before anything is allocated for it.
func TestClipConnRefusesLargeControlPackets(t *testing.T) {
	for name, stream := range map[string][]byte{
		"suback of 200 MB": {0x90, 0x80, 0x80, 0x80, 0x60},
		"five-byte length": {0x30, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		sc := &streamConn{r: bytes.NewReader(stream)}
		c := newClipConn(sc, 100, 1024, nil)
		if _, err := packets.ReadPacket(c); !errors.Is(err, ErrPacketTooLarge) || !sc.closed {
			t.Errorf("%s: %v, closed %v", name, err, sc.closed)
		}
	}
}

// TestClipConnMemory: a 64 MiB payload read through the connection costs
// about the payload kept, not its size.
func TestClipConnMemory(t *testing.T) {
	const size = 64 << 20
	hdr := appendHeader(nil, 0x32, 2+3+2+size)
	hdr = append(hdr, 0, 3, 'a', '/', 'b', 0, 1)
	stream := io.MultiReader(bytes.NewReader(hdr), io.LimitReader(zeros{}, size), bytes.NewReader(encode(t, packets.NewControlPacket(packets.Pingresp))))
	c := newClipConn(&streamConn{r: stream}, 64<<10+1, 1024, nil)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p, err := packets.ReadPacket(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := packets.ReadPacket(c); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := len(p.(*packets.PublishPacket).Payload); got != 64<<10+1 {
		t.Fatalf("payload of %d bytes", got)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Fatalf("reading a 64 MiB publish allocated %d bytes", alloc)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// FuzzClipConn: without a limit the connection hands out exactly the bytes
// it reads, whatever they are; with one, what it hands out parses as the
// same packets, with PUBLISH payloads cut.
func FuzzClipConn(f *testing.F) {
	f.Add(encode(f, packets.NewControlPacket(packets.Connack), publishPacket("a/b", 1, 7, []byte("hello world"), false, false)))
	f.Add(encode(f, publishPacket("x", 0, 0, bytes.Repeat([]byte("y"), 300), false, true), packets.NewControlPacket(packets.Pingresp)))
	f.Add([]byte{0x30, 0x05, 0x00, 0x09, 'a'})
	f.Add([]byte{0x32, 0x03, 0x00, 0x01, 'a'})
	f.Add([]byte{0x30, 0x80})
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := newClipConn(&streamConn{r: bytes.NewReader(stream)}, math.MaxInt, math.MaxInt, nil)
		out, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrPacketTooLarge) {
			t.Fatalf("unclipped: %v", err)
		}
		if (err == nil && !bytes.Equal(out, stream)) || !bytes.HasPrefix(stream, out) {
			t.Fatalf("unclipped (%v): %x, want %x", err, out, stream)
		}

		const keep = 8
		orig := bytes.NewReader(stream)
		cut := newClipConn(&streamConn{r: bytes.NewReader(stream)}, keep, math.MaxInt, nil)
		for {
			want, werr := packets.ReadPacket(orig)
			got, gerr := packets.ReadPacket(cut)
			if werr != nil {
				return // the rest is malformed or gone: nothing to compare
			}
			if gerr != nil {
				t.Fatalf("clipped stream fails (%v) where the original parses (%v)", gerr, want)
			}
			if wp, ok := want.(*packets.PublishPacket); ok && len(wp.Payload) > keep {
				wp.Payload = wp.Payload[:keep]
			}
			if !samePacket(got, want) {
				t.Fatalf("clipped %v, want %v", got, want)
			}
		}
	})
}

package mqtt

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// clipConn is a connection to an external broker that never lets one
// inbound packet cost more memory than the gateway will keep of it. paho
// allocates a packet's whole announced length before reading it, and a
// broker accepts up to 256 MiB per message by default (mosquitto's
// message_size_limit is 0): one device publishing a large payload made the
// gateway allocate it, and a QoS 1 message came back after every restart.
//
// A PUBLISH whose payload is longer than keep bytes reaches paho with its
// first keep bytes (its remaining length rewritten); the rest is read and
// thrown away as it arrives. onClip learns its topic, packet id (QoS > 0),
// QoS and the payload's real length first. Any other packet longer than maxOther
// closes the connection (ErrPacketTooLarge): the broker sends nothing else
// that large. The zero value is not usable; Read is not safe for
// concurrent use (paho reads from one goroutine).
type clipConn struct {
	net.Conn
	r        *bufio.Reader
	keep     int
	maxOther int
	onClip   func(topic string, pid uint16, qos byte, size int)
	// onConnack, when set, learns the session present flag of the first
	// packet when it is a CONNACK accepting the connection, before the
	// packet is handed on; an error closes the connection.
	onConnack func(sessionPresent bool) error
	first     bool // the first packet was seen

	pending []byte // rewritten header bytes to hand out first
	pass    int    // bytes of the current packet to hand out as they are
	drop    int    // bytes of the current packet to throw away after pass
	hdr     []byte // scratch for pending
}

func newClipConn(c net.Conn, keep, maxOther int, onClip func(topic string, pid uint16, qos byte, size int)) *clipConn {
	// The buffer holds a PUBLISH's whole variable header: a topic of up to
	// 65,535 bytes and the length and packet id around it.
	return &clipConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10+8), keep: keep, maxOther: maxOther, onClip: onClip,
		hdr: make([]byte, 0, 5)}
}

func (c *clipConn) Read(p []byte) (int, error) {
	for {
		switch {
		case len(p) == 0:
			return 0, nil
		case len(c.pending) > 0:
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		case c.pass > 0:
			n, err := c.r.Read(p[:min(len(p), c.pass)])
			c.pass -= n
			return n, unexpected(err)
		case c.drop > 0:
			n, err := c.r.Discard(c.drop)
			c.drop -= n
			if err != nil {
				return 0, unexpected(err)
			}
		default:
			if err := c.next(); err != nil {
				return 0, err
			}
		}
	}
}

// next reads the next packet's fixed header (and a PUBLISH's variable
// header) and sets what Read hands out of it.
func (c *clipConn) next() error {
	typ, err := c.r.ReadByte()
	if err != nil {
		return err // io.EOF between packets
	}
	// The header as read: a packet passed whole is handed out byte for
	// byte (pending only once the header is whole).
	hdr := append(c.hdr[:0], typ)
	length := 0
	for mul := 1; ; mul *= 128 {
		b, err := c.r.ReadByte()
		if err != nil {
			return unexpected(err)
		}
		hdr = append(hdr, b)
		length += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		if len(hdr) == 5 {
			_ = c.Conn.Close()
			return fmt.Errorf("%w: malformed packet length", ErrPacketTooLarge)
		}
	}
	const publish, connack = 3, 2
	if !c.first {
		c.first = true
		if typ>>4 == connack && length == 2 && c.onConnack != nil {
			b, err := c.r.Peek(2)
			if err != nil {
				return unexpected(err)
			}
			if b[1] == 0 { // accepted
				if err := c.onConnack(b[0]&1 == 1); err != nil {
					_ = c.Conn.Close()
					return err
				}
			}
		}
	}
	if typ>>4 != publish {
		if length > c.maxOther {
			_ = c.Conn.Close()
			return fmt.Errorf("%w: packet of type %d of %d bytes, limit %d", ErrPacketTooLarge, typ>>4, length, c.maxOther)
		}
		c.pending, c.pass = hdr, length
		return nil
	}
	qos := typ >> 1 & 3
	// Topic length, topic, packet id (QoS > 0); MQTT 3.1.1 has no
	// properties (paho.mqtt.golang speaks 3.1.1).
	varLen := 0
	if length >= 2 {
		b, err := c.r.Peek(2)
		if err != nil {
			return unexpected(err)
		}
		varLen = 2 + int(binary.BigEndian.Uint16(b))
		if qos > 0 {
			varLen += 2
		}
	}
	if length < 2 || varLen > length || length-varLen <= c.keep {
		// Short enough, or malformed: as it is (paho judges).
		c.pending, c.pass = hdr, length
		return nil
	}
	size := length - varLen
	b, err := c.r.Peek(varLen)
	if err != nil {
		return unexpected(err)
	}
	var pid uint16
	if qos > 0 {
		pid = binary.BigEndian.Uint16(b[varLen-2:])
	}
	if c.onClip != nil {
		c.onClip(string(b[2:2+binary.BigEndian.Uint16(b)]), pid, qos, size)
	}
	c.pending = appendHeader(c.hdr[:0], typ, varLen+c.keep)
	c.pass = varLen + c.keep
	c.drop = size - c.keep
	return nil
}

// unexpected is err, io.ErrUnexpectedEOF for the end of the stream inside
// a packet.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendHeader appends a fixed header: the type byte and the remaining
// length.
func appendHeader(b []byte, typ byte, length int) []byte {
	b = append(b, typ)
	for {
		d := byte(length % 128)
		length /= 128
		if length > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if length == 0 {
			return b
		}
	}
}

var _ io.Reader = (*clipConn)(nil)

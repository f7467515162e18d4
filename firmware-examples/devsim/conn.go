package devsim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// maxIncoming bounds a packet read from the broker (commands are small).
const maxIncoming = 1 << 20

// errConnClosed is returned by writes on a connection whose reader stopped.
var errConnClosed = errors.New("connection closed")

// conn is one MQTT 3.1.1 connection of a device. Writes are serialised by
// wmu (the publisher and the reader both write); reads happen only in the
// reader goroutine.
type conn struct {
	nc           net.Conn
	br           *bufio.Reader
	writeTimeout time.Duration

	wmu  sync.Mutex
	wbuf bytes.Buffer
}

// dial opens a TCP connection, sends CONNECT and waits for the CONNACK.
func dial(ctx context.Context, addr string, timeout time.Duration, connect *packets.Packet) (*conn, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	c := &conn{nc: nc, br: bufio.NewReaderSize(nc, 512), writeTimeout: timeout}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()
	if err := c.write(connect); err != nil {
		nc.Close()
		return nil, false, err
	}
	pk, err := c.read()
	if err != nil {
		nc.Close()
		return nil, false, fmt.Errorf("read CONNACK: %w", err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		nc.Close()
		return nil, false, fmt.Errorf("expected CONNACK, got packet type %d", pk.FixedHeader.Type)
	}
	if pk.ReasonCode != 0 {
		nc.Close()
		return nil, false, fmt.Errorf("connection refused: CONNACK return code %d", pk.ReasonCode)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, pk.SessionPresent, nil
}

// write encodes and sends one packet.
func (c *conn) write(pk *packets.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf.Reset()
	pk.ProtocolVersion = 4
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&c.wbuf)
	case packets.Publish:
		err = pk.PublishEncode(&c.wbuf)
	case packets.Puback:
		err = pk.PubackEncode(&c.wbuf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&c.wbuf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&c.wbuf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&c.wbuf)
	default:
		err = fmt.Errorf("cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	_, err = c.nc.Write(c.wbuf.Bytes())
	return err
}

// read reads and decodes one packet.
func (c *conn) read() (packets.Packet, error) {
	var pk packets.Packet
	hb, err := c.br.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.br)
	if err != nil {
		return pk, err
	}
	if n > maxIncoming {
		return pk, fmt.Errorf("packet of %d bytes from the broker is over %d", n, maxIncoming)
	}
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = 4
	body := make([]byte, n)
	if _, err := io.ReadFull(c.br, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Pingresp:
		err = pk.PingrespDecode(body)
	case packets.Disconnect:
		err = errors.New("broker sent DISCONNECT")
	default:
		err = fmt.Errorf("unexpected packet type %d from the broker", pk.FixedHeader.Type)
	}
	return pk, err
}

func (c *conn) close() { _ = c.nc.Close() }

package sync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// A NATS server sends the target little: INFO, PING/PONG, +OK/-ERR and the
// acknowledgements of its publishes (MSG or HMSG of a hundred bytes). But
// nats.go allocates the size a MSG line announces before reading the
// payload, so one line announcing 600 MB from a hostile or broken upstream
// took 600 MB of a gateway that has 512. natsBoundedConn follows the
// server's side of the protocol and ends the connection instead.

// maxNATSInbound bounds a message the NATS server may send the target, and
// maxNATSLine a control line (an INFO with many cluster URLs is the
// longest legitimate one).
const (
	maxNATSInbound = 1 << 20
	maxNATSLine    = 64 << 10
)

// errNATSInbound is the error of a connection whose server sent more than
// the bounds allow.
var errNATSInbound = errors.New("nats: the server sent more than the target accepts")

// natsDialer dials plain TCP connections bounded by natsBoundedConn
// (nats.SetCustomDialer).
type natsDialer struct{ timeout time.Duration }

// Dial implements nats.CustomDialer.
func (d natsDialer) Dial(network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: d.timeout}).Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &natsBoundedConn{Conn: c, max: maxNATSInbound}, nil
}

// natsBoundedConn passes a NATS server's bytes through unchanged while it
// follows them: a MSG or HMSG announcing more than max bytes, a control
// line longer than maxNATSLine or one it cannot read fails the read (and
// the connection) before nats.go sees the line. Once the server's INFO
// asks for TLS, the bytes that follow are encrypted: they pass unread (the
// server is then one whose certificate was verified).
type natsBoundedConn struct {
	net.Conn
	max  int64
	line []byte // the control line read so far
	skip int64  // bytes of a message payload (and its CRLF) still to pass
	tls  bool   // passing through, unread
	seen bool   // a control line was read: only the first (the INFO of the connect) can start TLS
	eol  bool   // after a payload: the bytes up to the next '\n' pass unread (nats.go's MSG_END)
	err  error
}

func (c *natsBoundedConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 && !c.tls {
		if e := c.scan(p[:n]); e != nil {
			c.err = e
			_ = c.Conn.Close()
			return 0, e
		}
	}
	return n, err
}

// scan follows b, the next bytes of the server.
func (c *natsBoundedConn) scan(b []byte) error {
	for len(b) > 0 && !c.tls {
		if c.skip > 0 {
			k := min(c.skip, int64(len(b)))
			c.skip -= k
			b = b[k:]
			continue
		}
		if c.eol {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return nil
			}
			b, c.eol = b[i+1:], false
			continue
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(c.line)+len(b) > maxNATSLine {
				return fmt.Errorf("%w: a control line of more than %d bytes", errNATSInbound, maxNATSLine)
			}
			c.line = append(c.line, b...)
			return nil
		}
		if len(c.line)+i > maxNATSLine {
			return fmt.Errorf("%w: a control line of more than %d bytes", errNATSInbound, maxNATSLine)
		}
		c.line = append(c.line, b[:i]...)
		b = b[i+1:]
		if err := c.control(bytes.TrimRight(c.line, "\r")); err != nil {
			return err
		}
		c.line = c.line[:0]
	}
	return nil
}

// control checks one control line (without its line end). Fields are
// separated by spaces or tabs, as nats.go's parser takes them.
func (c *natsBoundedConn) control(line []byte) error {
	first := !c.seen
	c.seen = true
	f := bytes.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	if len(f) == 0 {
		return nil
	}
	switch string(bytes.ToUpper(f[0])) {
	case "MSG", "HMSG":
		size, err := strconv.ParseInt(string(f[len(f)-1]), 10, 64)
		// nats.go also splits on '\r' (and then drops the line's last
		// byte): a line with one inside is not what we read.
		if err != nil || size < 0 || len(f) < 4 || bytes.IndexByte(line, '\r') >= 0 {
			return fmt.Errorf("%w: a message line it cannot read: %.80q", errNATSInbound, line)
		}
		if size > c.max {
			return fmt.Errorf("%w: a message of %d bytes (at most %d)", errNATSInbound, size, c.max)
		}
		// As nats.go reads it: the payload, one byte taken unread, then
		// everything up to the next '\n' ignored (MSG_END). Skipping
		// exactly a CRLF read a line nats.go ignores as a message, whose
		// "payload" then hid the next line from the bound.
		c.skip, c.eol = size+1, true
	case "INFO":
		// What nats.go acts on: the top-level field of the JSON.
		var info struct {
			TLSRequired bool `json:"tls_required"`
		}
		js := bytes.TrimLeft(line, " \t")[len(f[0]):]
		if first && json.Unmarshal(bytes.Trim(js, " \t"), &info) == nil && info.TLSRequired {
			c.tls = true
		}
	}
	return nil
}

package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// ErrPacketTooLarge is returned (and the connection closed) when a broker
// announces a packet larger than the bound of a BoundedOpener connection.
var ErrPacketTooLarge = errors.New("mqtt: packet from the broker too large")

// BoundedOpener returns a paho connection opener (for
// ClientOptions.SetCustomOpenConnectionFn) that dials as paho does (tcp,
// mqtt, ssl, tls, mqtts, tcps, ws, wss; a proxy from the environment for
// tcp) and closes the connection, with ErrPacketTooLarge, when the broker
// announces a packet of more than maxPacket bytes. paho allocates a
// packet's whole announced length (up to 256 MiB) before reading it: one
// 5-byte header from a hostile or impersonated broker would otherwise cost
// that much memory.
func BoundedOpener(maxPacket int) paho.OpenConnectionFunc {
	return func(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
		conn, err := dialBroker(uri, &o)
		if err != nil {
			return nil, err
		}
		return &boundedConn{Conn: conn, max: maxPacket}, nil
	}
}

func dialBroker(uri *url.URL, o *paho.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	switch uri.Scheme {
	case "ws", "wss":
		u := *uri
		u.User = nil // gorilla refuses credentials in the URL (paho #623)
		tlsc := o.TLSConfig
		if uri.Scheme == "ws" {
			tlsc = nil
		}
		return paho.NewWebsocket(u.String(), tlsc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	case "mqtt", "tcp":
		return proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		if os.Getenv("all_proxy") == "" && os.Getenv("ALL_PROXY") == "" {
			return tls.DialWithDialer(dialer, "tcp", uri.Host, o.TLSConfig)
		}
		// Through the proxy, as paho does, but with the broker's name to
		// verify its certificate against (paho's handshake had none) and
		// the connect timeout on the handshake.
		raw, err := proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		tc := &tls.Config{}
		if o.TLSConfig != nil {
			tc = o.TLSConfig.Clone()
		}
		if tc.ServerName == "" {
			tc.ServerName = uri.Hostname()
		}
		conn := tls.Client(raw, tc)
		ctx, cancel := context.WithTimeout(context.Background(), o.ConnectTimeout)
		defer cancel()
		if o.ConnectTimeout <= 0 {
			ctx = context.Background()
		}
		if err := conn.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return conn, nil
	}
	return nil, fmt.Errorf("mqtt: unknown broker scheme %q", uri.Scheme)
}

// boundedConn follows the MQTT packets read through it (a fixed header: a
// type byte and a length of 1 to 4 bytes, then that many bytes) and fails
// the read that brings a length over max, before paho sees it.
type boundedConn struct {
	net.Conn
	max   int
	state int // 0: packet type, 1: length, 2: body
	n     int // length so far (1), bytes of the body left (2)
	mul   int
	lenB  int
}

func (c *boundedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for i := 0; i < n; {
		switch c.state {
		case 0:
			c.state, c.n, c.mul, c.lenB = 1, 0, 1, 0
			i++
		case 1:
			b := p[i]
			i++
			c.n += int(b&0x7f) * c.mul
			c.mul *= 128
			c.lenB++
			switch {
			case c.n > c.max:
				_ = c.Conn.Close()
				return 0, fmt.Errorf("%w: %d bytes announced, limit %d", ErrPacketTooLarge, c.n, c.max)
			case b&0x80 != 0 && c.lenB == 4:
				_ = c.Conn.Close()
				return 0, fmt.Errorf("%w: malformed packet length", ErrPacketTooLarge)
			case b&0x80 == 0:
				c.state = 2
				if c.n == 0 {
					c.state = 0
				}
			}
		case 2:
			k := min(c.n, n-i)
			i += k
			c.n -= k
			if c.n == 0 {
				c.state = 0
			}
		}
	}
	return n, err
}

package gateway

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// connLimitListener bounds the connections a listener holds open at once:
// a connection accepted beyond the bound is closed at once, unread, and
// counted, so that idle or slow sockets (each a goroutine and the HTTP
// server's buffers) cannot exhaust a small gateway's memory. Closing a
// connection gives its place back. Safe for concurrent use.
type connLimitListener struct {
	net.Listener
	slots chan struct{}
	log   *slog.Logger
	shed  atomic.Uint64
	// lastWarn (unix ns) limits the warning to one per 10 s.
	lastWarn atomic.Int64
}

func newConnLimitListener(ln net.Listener, n int, log *slog.Logger) *connLimitListener {
	return &connLimitListener{Listener: ln, slots: make(chan struct{}, n), log: log}
}

// Accept returns the next connection that finds a place; others are
// closed as they arrive.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, l: l}, nil
		default:
			n := l.shed.Add(1) // before the close the client sees
			_ = c.Close()
			now, last := time.Now().UnixNano(), l.lastWarn.Load()
			if now-last >= int64(10*time.Second) && l.lastWarn.CompareAndSwap(last, now) {
				l.log.Warn("api: too many connections: closed unread", "max_connections", cap(l.slots), "shed_total", n)
			}
		}
	}
}

// Shed is the number of connections closed for want of a place.
func (l *connLimitListener) Shed() uint64 { return l.shed.Load() }

// limitedConn gives its place back when closed (once).
type limitedConn struct {
	net.Conn
	l    *connLimitListener
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { <-c.l.slots })
	return c.Conn.Close()
}

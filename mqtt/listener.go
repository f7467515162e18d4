package mqtt

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// connectTimeout bounds the time between accepting a connection and
// receiving its CONNECT; after that mochi applies the client's keep-alive.
const connectTimeout = 10 * time.Second

// boundListener is what the TCP and WebSocket listeners share: an id, an
// address bound in Init (so ":0" reports its real port) and optional TLS.
type boundListener struct {
	id      string
	address string
	tlsCfg  *tls.Config
	ln      net.Listener
}

func (l *boundListener) ID() string { return l.id }

func (l *boundListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// bind listens on the address, with TLS when configured.
func (l *boundListener) bind() error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.tlsCfg != nil {
		ln = tls.NewListener(ln, l.tlsCfg)
	}
	l.ln = ln
	return nil
}

// tcpListener is the MQTT TCP (or TLS) listener. Unlike mochi's own, it
// tracks its connection goroutines so Close can wait for them (mochi adds to
// its WaitGroup inside the goroutine, which races with Server.Close), and it
// puts a deadline on the CONNECT packet so idle sockets cannot pile up.
type tcpListener struct {
	boundListener
	// connectTimeout bounds the wait for CONNECT (default connectTimeout).
	connectTimeout time.Duration

	log   *slog.Logger
	conns sync.WaitGroup
	end   atomic.Bool
}

func (l *tcpListener) Protocol() string {
	if l.tlsCfg != nil {
		return "tls"
	}
	return "tcp"
}

func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	return l.bind()
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if !l.end.Load() && !errors.Is(err, net.ErrClosed) {
				l.log.Error("MQTT listener stopped", "error", err)
			}
			return
		}
		if l.end.Load() {
			conn.Close()
			return
		}
		l.conns.Add(1)
		go func() {
			defer l.conns.Done()
			d := l.connectTimeout
			if d <= 0 {
				d = connectTimeout
			}
			_ = conn.SetDeadline(time.Now().Add(d))
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("MQTT client connection ended", "error", err)
			}
		}()
	}
}

// Close stops accepting; it calls closeClients only the first time.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		if l.ln != nil {
			_ = l.ln.Close()
		}
		closeClients(l.id)
	}
}

// wait blocks until every connection goroutine has returned.
func (l *tcpListener) wait() { l.conns.Wait() }

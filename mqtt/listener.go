package mqtt

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
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

// bind listens on the address, with TLS when configured. wrap, if not
// nil, wraps the TCP listener (beneath TLS).
func (l *boundListener) bind(wrap func(net.Listener) net.Listener) error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	if l.tlsCfg != nil {
		ln = tls.NewListener(ln, l.tlsCfg)
	}
	l.ln = ln
	return nil
}

// preauth bounds the connections of one listener that have not
// authenticated yet: from the accept (before the TLS handshake and the
// CONNECT are read) until the credentials are accepted or the connection
// ends. Until then a connection costs what its CONNECT claims (mochi
// allocates it before reading it), a goroutine, and its place in the queue
// for bcrypt; a flood of them must not exhaust memory or keep devices with
// valid credentials waiting. Connections from one address (an IPv4 address,
// an IPv6 /64) hold at most perAddr of the slots, so that one host cannot
// take them all. A connection that finds no slot is closed at once, unread.
// Safe for concurrent use.
type preauth struct {
	slots   chan struct{}
	perAddr int
	shed    func(why string) // called for each connection turned away

	mu     sync.Mutex
	held   map[net.Conn]*preauthSlot
	byAddr map[string]int // slots held per address key
}

// preauthSlot is one connection's slot; release is idempotent.
type preauthSlot struct {
	p    *preauth
	addr string
	once sync.Once
}

func (s *preauthSlot) release() {
	s.once.Do(func() {
		<-s.p.slots
		s.p.mu.Lock()
		if n := s.p.byAddr[s.addr] - 1; n > 0 {
			s.p.byAddr[s.addr] = n
		} else {
			delete(s.p.byAddr, s.addr)
		}
		s.p.mu.Unlock()
	})
}

// Reasons a connection is turned away before it authenticated (shed).
const (
	shedListenerFull = "too many connections not yet authenticated on the listener: closed unread"
	shedAddressFull  = "too many connections not yet authenticated from one address: closed unread"
)

func newPreauth(n, perAddr int, shed func(why string)) *preauth {
	return &preauth{slots: make(chan struct{}, n), perAddr: min(perAddr, n), shed: shed,
		held: map[net.Conn]*preauthSlot{}, byAddr: map[string]int{}}
}

// acquire takes a slot for a connection from remote (a net.Addr's String:
// "host:port"), or returns nil (and counts the connection as shed) when
// its address holds perAddr slots already or all are taken.
func (p *preauth) acquire(remote string) *preauthSlot {
	key := addrKey(remote)
	p.mu.Lock()
	if p.byAddr[key] >= p.perAddr {
		p.mu.Unlock()
		p.shed(shedAddressFull)
		return nil
	}
	select {
	case p.slots <- struct{}{}:
	default:
		p.mu.Unlock()
		p.shed(shedListenerFull)
		return nil
	}
	p.byAddr[key]++
	p.mu.Unlock()
	return &preauthSlot{p: p, addr: key}
}

// addrKey is the address a connection from remote ("host:port") counts
// against: its IPv4 address (an IPv4-mapped IPv6 address is its IPv4
// address), or its IPv6 /64, the block one host is usually given. A remote
// that does not parse counts as itself.
func addrKey(remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return ip.String()
	}
	return netip.PrefixFrom(ip.WithZone(""), 64).Masked().String()
}

// bind ties s to c, the net.Conn mochi's client holds, so that
// authenticated can find it.
func (p *preauth) bind(c net.Conn, s *preauthSlot) {
	p.mu.Lock()
	p.held[c] = s
	p.mu.Unlock()
}

// authenticated releases c's slot, if it holds one: the connection has
// authenticated.
func (p *preauth) authenticated(c net.Conn) {
	p.mu.Lock()
	s := p.held[c]
	delete(p.held, c)
	p.mu.Unlock()
	if s != nil {
		s.release()
	}
}

// closeAll closes every connection that has not authenticated (Close
// uses it: such a connection would otherwise hold the broker's shutdown
// until its CONNECT deadline).
func (p *preauth) closeAll() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.held))
	for c := range p.held {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// preauthListener takes a preauth slot for each connection it accepts,
// before anything is read from it (the WebSocket listener's HTTP server
// would otherwise hold any number of connections while it reads their
// request headers); a connection that gets none is closed at once and
// Accept goes on. Closing a connection releases its slot if it still
// holds one.
type preauthListener struct {
	net.Listener
	pre *preauth
}

func (l preauthListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		slot := l.pre.acquire(c.RemoteAddr().String())
		if slot == nil {
			_ = c.Close() // unread
			continue
		}
		return &slotConn{Conn: c, slot: slot}, nil
	}
}

// slotConn is a connection accepted by a preauthListener, with its slot.
type slotConn struct {
	net.Conn
	slot *preauthSlot
}

func (c *slotConn) Close() error {
	c.slot.release()
	return c.Conn.Close()
}

// slotOf returns the slot of a connection accepted by a preauthListener
// (under TLS or not), or nil.
func slotOf(c net.Conn) *preauthSlot {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if sc, ok := c.(*slotConn); ok {
		return sc.slot
	}
	return nil
}

// ended releases the slot of a connection that ended (whether or not it
// authenticated).
func (p *preauth) ended(c net.Conn, s *preauthSlot) {
	p.mu.Lock()
	delete(p.held, c)
	p.mu.Unlock()
	s.release()
}

// tcpListener is the MQTT TCP (or TLS) listener. Unlike mochi's own, it
// tracks its connection goroutines so Close can wait for them (mochi adds to
// its WaitGroup inside the goroutine, which races with Server.Close), it
// puts a deadline on the CONNECT packet so idle sockets cannot pile up, and
// it bounds the connections not yet authenticated (preauth).
type tcpListener struct {
	boundListener
	// connectTimeout bounds the wait for CONNECT (default connectTimeout).
	connectTimeout time.Duration
	pre            *preauth

	log   *slog.Logger
	conns sync.WaitGroup
	end   atomic.Bool

	stopMu   sync.Mutex
	stop     chan struct{} // closed by Close (made on first use)
	stopOnce sync.Once
}

func (l *tcpListener) Protocol() string {
	if l.tlsCfg != nil {
		return "tls"
	}
	return "tcp"
}

func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	return l.bind(nil)
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or kernel memory for a moment (EMFILE,
			// ENFILE, ENOBUFS): the listener waits and accepts again, as
			// net/http does. Returning left the socket open, the kernel
			// completing handshakes that nobody read, until a restart.
			if backoff == 0 {
				backoff = acceptBackoffMin
				l.log.Error("MQTT listener cannot accept connections; retrying", "error", err)
			} else {
				backoff = min(2*backoff, acceptBackoffMax)
			}
			if !l.sleep(backoff) {
				return
			}
			continue
		}
		if backoff != 0 {
			l.log.Info("MQTT listener accepts connections again")
			backoff = 0
		}
		if l.end.Load() {
			conn.Close()
			return
		}
		slot := l.pre.acquire(conn.RemoteAddr().String())
		if slot == nil {
			conn.Close() // unread: no TLS handshake, no CONNECT
			continue
		}
		l.pre.bind(conn, slot)
		l.conns.Add(1)
		go func() {
			defer l.conns.Done()
			defer l.pre.ended(conn, slot)
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
		l.stopOnce.Do(func() { close(l.stopped()) })
		if l.ln != nil {
			_ = l.ln.Close()
		}
		closeClients(l.id)
	}
}

// acceptBackoffMin and acceptBackoffMax bound the wait after a failed
// accept; it doubles while accepts keep failing.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// stopped returns the channel Close closes.
func (l *tcpListener) stopped() chan struct{} {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.stop == nil {
		l.stop = make(chan struct{})
	}
	return l.stop
}

// sleep waits d, or less if the listener closes; it reports whether the
// listener is still open.
func (l *tcpListener) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return !l.end.Load()
	case <-l.stopped():
		return false
	}
}

// wait blocks until every connection goroutine has returned.
func (l *tcpListener) wait() { l.conns.Wait() }

package mqtt

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// wsListener is an MQTT-over-WebSocket listener that binds in Init, so a
// ":0" address reports its real port (mochi's own listener binds in Serve).
type wsListener struct {
	boundListener
	readLimit int64
	pre       *preauth // connections not yet authenticated

	srv       *http.Server
	log       *slog.Logger
	establish listeners.EstablishFn
	end       atomic.Bool
	conns     sync.WaitGroup
}

func (l *wsListener) Protocol() string {
	if l.tlsCfg != nil {
		return "wss"
	}
	return "ws"
}

// slotKey is the request context key of the connection's preauth slot.
type slotKey struct{}

// Init binds the listener. Each connection takes a preauth slot when it is
// accepted (before the TLS handshake and the HTTP request are read) and
// keeps it until the MQTT client on it has authenticated or it ends.
func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	if err := l.bind(func(ln net.Listener) net.Listener { return preauthListener{Listener: ln, pre: l.pre} }); err != nil {
		return err
	}
	up := &websocket.Upgrader{Subprotocols: []string{"mqtt"}, CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if l.end.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		slot, _ := r.Context().Value(slotKey{}).(*preauthSlot)
		if slot == nil {
			http.Error(w, "connection without a slot", http.StatusInternalServerError) // not reached: every connection has one
			return
		}
		l.conns.Add(1)
		defer l.conns.Done()
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(l.readLimit)
		_ = c.UnderlyingConn().SetDeadline(time.Now().Add(connectTimeout))
		wc := &wsConn{Conn: c.UnderlyingConn(), c: c}
		l.pre.bind(wc, slot)
		defer l.pre.ended(wc, slot)
		if err := l.establish(l.id, wc); err != nil {
			l.log.Debug("websocket client ended", "error", err)
		}
	})
	l.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// Only the upgrade request is HTTP: a connection idle after a
		// refused one is closed soon (it holds a preauth slot).
		IdleTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, slotKey{}, slotOf(c))
		},
	}
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !l.end.Load() {
		l.log.Error("websocket listener failed", "error", err)
	}
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if l.srv != nil {
			if l.srv.Shutdown(ctx) != nil {
				_ = l.srv.Close() // connections still reading a request
			}
		}
		closeClients(l.id)
	}
}

// wait blocks until every connection goroutine has returned.
func (l *wsListener) wait() { l.conns.Wait() }

// wsConn adapts a WebSocket connection carrying binary MQTT frames to
// net.Conn.
type wsConn struct {
	net.Conn
	c *websocket.Conn
	r io.Reader // reader of the current message, or nil
	// wdl is the write deadline (unix ns, 0 for none) for the next frames.
	wdl atomic.Int64
}

var errWSText = errors.New("mqtt: websocket message is not binary")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errWSText
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// SetWriteDeadline sets the deadline of the writes: on the connection, for
// a frame being written, and for the next frames (the websocket package
// sets its own deadline on the connection at each frame; Write hands it
// this one). Safe to call while a Write is in progress.
func (ws *wsConn) SetWriteDeadline(t time.Time) error {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	ws.wdl.Store(ns)
	return ws.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read and write deadlines.
func (ws *wsConn) SetDeadline(t time.Time) error {
	if err := ws.SetWriteDeadline(t); err != nil {
		return err
	}
	return ws.c.SetReadDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (ws *wsConn) SetReadDeadline(t time.Time) error { return ws.c.SetReadDeadline(t) }

func (ws *wsConn) Write(p []byte) (int, error) {
	var t time.Time
	if ns := ws.wdl.Load(); ns != 0 {
		t = time.Unix(0, ns)
	}
	_ = ws.c.SetWriteDeadline(t) // writes are not concurrent (mochi's writeMu)
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

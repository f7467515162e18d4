package sync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	gosync "sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/moongate-edge/moongate/store"
)

// NATSConfig configures a nats target: one JetStream publish per record
// (the AppendRecord object) with the Nats-Msg-Id header set to the record
// id, so that the stream's duplicate window drops re-sent records. The
// stream that captures Subject must exist upstream.
type NATSConfig struct {
	URL string // nats://host:4222 (comma-separated for a cluster); tls:// for TLS
	// Subject is the subject template (default "gateways.{gateway}.{stream}");
	// {gateway}, {stream}, {function} and {device} are replaced (an empty
	// value becomes "_"; '.', '*', '>' and white space in a value become '_').
	Subject   string
	Username  string
	Password  string
	Token     string
	CredsFile string // NATS credentials file (JWT + NKey)
	TLS       TLSConfig
}

// DefaultNATSSubject is the default subject template of nats targets.
const DefaultNATSSubject = "gateways.{gateway}.{stream}"

func init() {
	mustRegister(Module{ID: ModulePrefix + "nats", New: newNATSTarget})
}

type natsTarget struct {
	cfg   TargetConfig
	env   Env
	nopts []nats.Option
	tpl   *template

	mu   gosync.Mutex
	nc   *nats.Conn
	js   jetstream.JetStream
	link *natsLink // what Deliver watches of nc

	prepMu gosync.Mutex
	prep   *preparedMsgs
	closed bool
	stop   chan struct{}
}

func newNATSTarget(cfg TargetConfig, env Env) (Target, error) {
	n := cfg.NATS
	if n.URL == "" {
		return nil, fmt.Errorf("%w: nats url is required", ErrInvalidConfig)
	}
	if n.Subject == "" {
		n.Subject = DefaultNATSSubject
	}
	if strings.ContainsAny(n.Subject, "*> \t\r\n\x00") {
		return nil, fmt.Errorf("%w: nats subject %q contains a wildcard or white space", ErrInvalidConfig, n.Subject)
	}
	cfg.NATS = n
	opts := []nats.Option{
		nats.Name("moongate-sync-" + env.GatewayID + "-" + cfg.Name),
		nats.NoReconnect(), // the manager reconnects with its own backoff
		nats.Timeout(cfg.AckTimeout),
		// nats.go flushes to the socket under its connection lock when its
		// buffer fills: bound that write like an acknowledgement.
		nats.FlusherTimeout(cfg.AckTimeout),
	}
	if n.Username != "" {
		opts = append(opts, nats.UserInfo(n.Username, n.Password))
	}
	if n.Token != "" {
		opts = append(opts, nats.Token(n.Token))
	}
	if n.CredsFile != "" {
		// nats.go reads the file at each connect: check it now, as a
		// TLS CA file is, rather than fail every connect for ever.
		if err := checkNATSCreds(n.CredsFile); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(n.CredsFile))
	}
	tlsCfg, err := n.TLS.build("")
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		opts = append(opts, nats.Secure(tlsCfg))
	} else if plainNATS(n.URL) {
		// What the server sends is bounded (natsconn.go) while it is
		// readable: up to an INFO asking for TLS.
		opts = append(opts, nats.SetCustomDialer(natsDialer{timeout: cfg.AckTimeout}))
	}
	return &natsTarget{cfg: cfg, env: env, nopts: opts, tpl: parseTemplate(n.Subject, cleanNATS), stop: make(chan struct{})}, nil
}

// checkNATSCreds checks that a NATS credentials file can be read and
// holds a user JWT and an NKey seed, as nats.UserCredentials reads it at
// each connect (the seed from the path as is).
func checkNATSCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: nats creds_file: %w", ErrInvalidConfig, err)
	}
	defer clear(b)
	if jwt, _ := nkeys.ParseDecoratedJWT(b); strings.TrimSpace(jwt) == "" {
		return fmt.Errorf("%w: nats creds_file %s: no user JWT", ErrInvalidConfig, path)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return fmt.Errorf("%w: nats creds_file %s: no usable NKey seed: %w", ErrInvalidConfig, path, err)
	}
	kp.Wipe()
	return nil
}

// plainNATS reports whether every server of urls (comma-separated) is a
// plain-text NATS one (nats:// or no scheme): not tls://, ws:// or wss://,
// whose bytes natsBoundedConn cannot follow.
func plainNATS(urls string) bool {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if scheme, _, ok := strings.Cut(u, "://"); ok && !strings.EqualFold(scheme, "nats") {
			return false
		}
	}
	return true
}

func (t *natsTarget) subject(r *store.Record) string { return t.tpl.expand(t.env.GatewayID, r) }

// Connected reports whether the connection is up.
func (t *natsTarget) Connected() bool {
	t.mu.Lock()
	nc, link := t.nc, t.link
	t.mu.Unlock()
	if nc == nil {
		return false
	}
	// Not nc.IsConnected: it waits for the lock a blocked write holds.
	select {
	case <-link.dead:
		return false
	default:
		return true
	}
}

// Connect connects unless connected.
func (t *natsTarget) Connect(ctx context.Context) error {
	_, _, err := t.conn(ctx)
	return err
}

// conn returns the open connection or makes a new one, without holding mu
// while connecting (Close never waits for it).
func (t *natsTarget) conn(ctx context.Context) (jetstream.JetStream, *natsLink, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, nil, ErrClosed
	}
	if t.nc != nil && t.nc.IsConnected() {
		js, link := t.js, t.link
		t.mu.Unlock()
		return js, link, nil
	}
	if t.nc != nil {
		t.nc.Close()
		t.nc, t.js = nil, nil
	}
	t.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	// Pending acknowledgements are not failed when a connection without
	// reconnects closes: Deliver watches the link instead.
	link := newNATSLink()
	opts := append(t.nopts[:len(t.nopts):len(t.nopts)],
		nats.ClosedHandler(func(*nats.Conn) { link.gone(nil) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { link.gone(err) }),
		// The server's -ERR that do not close the connection (a
		// permissions violation: the publish is dropped, and its
		// acknowledgement never comes).
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { link.report(err) }))
	// nats.Connect cannot be interrupted: wait for it in a goroutine so
	// that a stop does not wait for a connect to a silent server.
	type connResult struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan connResult, 1)
	go func() {
		nc, err := nats.Connect(t.cfg.NATS.URL, opts...)
		ch <- connResult{nc, err}
	}()
	var r connResult
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, nil, ctx.Err()
	case <-t.stop:
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, nil, ErrClosed
	}
	nc, err := r.nc, r.err
	if err != nil {
		return nil, nil, fmt.Errorf("nats connect: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*t.cfg.Inflight), jetstream.WithPublishAsyncTimeout(t.cfg.AckTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nats jetstream: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		nc.Close()
		return nil, nil, ErrClosed
	}
	t.nc, t.js, t.link = nc, js, link
	return js, link, nil
}

func (t *natsTarget) drop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nc != nil {
		t.nc.Close()
		t.nc, t.js = nil, nil
	}
}

func (t *natsTarget) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	close(t.stop)
	if t.nc != nil {
		t.nc.Close()
		t.nc, t.js = nil, nil
	}
	return nil
}

// preparedMsgs is a batch turned into messages ahead by Prepare.
type preparedMsgs struct {
	key  batchKey
	msgs []*nats.Msg
}

func (t *natsTarget) msg(r *store.Record) *nats.Msg {
	m := nats.NewMsg(t.subject(r))
	m.Data = AppendRecord(make([]byte, 0, 256+len(r.Data)), t.env.GatewayID, r)
	m.Header.Set(jetstream.MsgIDHeader, r.ID)
	return m
}

// Prepare builds the messages of the batch likely delivered next (see
// Preparer).
func (t *natsTarget) Prepare(batch []store.OutboxEntry) {
	if len(batch) == 0 {
		return
	}
	msgs := make([]*nats.Msg, len(batch))
	for i := range batch {
		msgs[i] = t.msg(&batch[i].Record)
	}
	t.prepMu.Lock()
	t.prep = &preparedMsgs{key: keyOf(batch), msgs: msgs}
	t.prepMu.Unlock()
}

func (t *natsTarget) prepared(batch []store.OutboxEntry) []*nats.Msg {
	t.prepMu.Lock()
	defer t.prepMu.Unlock()
	p := t.prep
	if p != nil && len(p.msgs) == len(batch) && p.key == keyOf(batch) {
		t.prep = nil
		return p.msgs
	}
	return nil
}

func (t *natsTarget) Deliver(ctx context.Context, batch []store.OutboxEntry) (Result, error) {
	js, link, err := t.conn(ctx)
	if err != nil {
		return Result{}, err
	}
	pre := t.prepared(batch)
	win := t.cfg.Inflight
	futs := make([]jetstream.PubAckFuture, win)
	refused := make([]string, win) // reason of a message refused at publish
	timer := time.NewTimer(t.cfg.AckTimeout)
	defer timer.Stop()
	var res Result
	next := 0
	fail := func(err error) (Result, error) {
		t.drop()
		return res, err
	}
	reject := func(reason string) {
		res.Rejected = append(res.Rejected, Rejection{Index: res.Done, Reason: reason})
		res.Done++
	}
	for res.Done < len(batch) {
		for next < len(batch) && next-res.Done < win {
			var m *nats.Msg
			if pre != nil {
				m = pre[next]
			} else {
				m = t.msg(&batch[next].Record)
			}
			f, err := js.PublishMsgAsync(m)
			switch {
			case errors.Is(err, nats.ErrMaxPayload):
				// Refused by the client before it is sent: the server's
				// max_payload is below the message, on every retry.
				refused[next%win] = fmt.Sprintf("nats publish: record of %d bytes over the server's max_payload of %d bytes: %v",
					len(m.Data), js.Conn().MaxPayload(), err)
			case err != nil:
				return fail(fmt.Errorf("nats publish: %w", err))
			default:
				futs[next%win] = f
			}
			next++
		}
		i := res.Done % win
		if refused[i] != "" {
			reject(refused[i])
			refused[i] = ""
			continue
		}
		f := futs[i]
		timer.Reset(t.cfg.AckTimeout)
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if errors.Is(err, nats.ErrConnectionClosed) && ctx.Err() != nil {
				return res, ctx.Err()
			}
			if permanentPubError(err) {
				// The stream refuses this message for good; the
				// connection and the messages after it are fine.
				futs[i] = nil
				reject(fmt.Sprintf("nats publish ack: %v", err))
				continue
			}
			return fail(fmt.Errorf("nats publish ack: %w", err))
		case <-link.denied:
			// Nothing this connection publishes (or the subscription
			// for its acknowledgements) is allowed: no acknowledgement
			// comes. Retried with the backoff, like an HTTP 403.
			return fail(fmt.Errorf("nats publish: %w", link.err()))
		case <-timer.C:
			return fail(link.wrap(ErrAckTimeout))
		case <-link.dead:
			return fail(link.wrap(ErrConnectionLost))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-t.stop:
			return res, ErrClosed
		}
		futs[i] = nil
		res.Done++
	}
	return res, nil
}

// natsLink is what Deliver watches of one connection: its end, and the
// errors its server reported asynchronously (nats.go gives them only to
// callbacks, and the target reported a permissions violation as an
// acknowledgement timeout).
type natsLink struct {
	dead   chan struct{} // closed when the connection disconnects or closes
	denied chan struct{} // closed at the server's first permissions violation

	deadOnce, deniedOnce gosync.Once
	mu                   gosync.Mutex
	last                 error // the server's last asynchronous error
}

func newNATSLink() *natsLink {
	return &natsLink{dead: make(chan struct{}), denied: make(chan struct{})}
}

// report records an asynchronous error of the server.
func (l *natsLink) report(err error) {
	if err == nil {
		return
	}
	l.mu.Lock()
	l.last = err
	l.mu.Unlock()
	if errors.Is(err, nats.ErrPermissionViolation) {
		l.deniedOnce.Do(func() { close(l.denied) })
	}
}

// gone marks the connection lost, with the error that ended it if any.
func (l *natsLink) gone(err error) {
	l.report(err)
	l.deadOnce.Do(func() { close(l.dead) })
}

func (l *natsLink) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// wrap adds the last asynchronous error of the connection, if any, to err.
func (l *natsLink) wrap(err error) error {
	if last := l.err(); last != nil {
		return fmt.Errorf("%w (%v)", err, last)
	}
	return err
}

// permanentPubError reports whether a JetStream publish acknowledgement
// refuses the message itself, so that sending it again can never succeed:
// a message larger than the stream's max_msg_size (10054, "maximum
// message size exceeded").
func permanentPubError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

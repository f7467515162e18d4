// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
type ReadFn func(*Client, packets.Packet) error

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	clients := make([]*Client, 0, cl.Len())
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn     net.Conn      // the net.Conn used to establish the connection
	bconn    *bufio.Reader // a buffered net.Conn for reading packets
	outbuf   *bytes.Buffer // a buffer for writing packets
	Remote   string        // the remote address of the client
	Listener string        // listener id of the client
	Inline   bool          // if true, the client is the built-in 'inline' embedded client
	// moongate: writeMu serializes the writes to Conn (and outbuf). It is
	// not the client's lock: publishers take that one for a packet id, and
	// a write blocked on a client that stopped reading blocked them all.
	writeMu sync.Mutex
	// moongate: closing is the deadline (unix ns) of every write once the
	// server is disconnecting the client (DisconnectClient); 0 otherwise.
	closing atomic.Int64
	// moongate: ended is set, under writeMu, once the server's DISCONNECT
	// is written: nothing may follow it [MQTT-3.14.4-1].
	ended bool
}

// ClientProperties contains the properties which define the client behaviour.
type ClientProperties struct {
	Props           packets.Properties
	Will            Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
type ClientState struct {
	TopicAliases    TopicAliases       // a map of topic aliases
	stopCause       atomic.Value       // reason for stopping
	Inflight        *Inflight          // a map of in-flight qos messages
	Subscriptions   *Subscriptions     // a map of the subscription filters a client maintains
	disconnected    int64              // the time the client disconnected in unix time, for calculating expiry
	outbound        *sendQueue         // moongate: queue for pending outbound packets (see sendQueue)
	endOnce         sync.Once          // only end once
	isTakenOver     atomic.Bool        // used to identify orphaned clients
	packetID        uint32             // the current highest packetID
	open            context.Context    // indicate that the client is open for packet exchange
	cancelOpen      context.CancelFunc // cancel function for open context
	outboundQty     int32              // number of messages currently in the outbound queue
	outboundBytes   int64              // moongate: PacketBytes of the messages in the outbound queue or being written
	Keepalive       uint16             // the number of seconds the connection can wait
	ServerKeepalive bool               // keepalive was set by the server

	// moongate: retained messages matched by a new subscription that wait
	// for room in flight (see Server.drainRetained).
	retainedMu     sync.Mutex
	retainedQ      []retainedItem
	retainedQueued map[string]struct{} // topics in retainedQ: each at most once
	retainedN      atomic.Int32

	// moongate: the client ended the connection with a normal DISCONNECT
	// (its will is discarded, whatever stopped the client first).
	cleanDisconnect atomic.Bool

	// moongate: the session expiry interval in effect (SessionExpiry),
	// which a DISCONNECT may change while other goroutines read it: the
	// interval in the low 32 bits, bit 32 set when the client gave one, bit
	// 33 once it is set at all (a client made otherwise, as mochi's own
	// tests do, is read from Props).
	sessionExpiry atomic.Uint64
	// moongate: ParseConnect lowered the interval the client asked for to
	// the server's maximum; SendConnack tells the client.
	expiryClamped bool
	// moongate: the CONNACK reason code when OnConnectAuthenticate refuses
	// the client (RefuseConnect); zero: bad user name or password.
	connectRefusal packets.Code
}

// RefuseConnect sets the reason code of the CONNACK the server sends when
// an OnConnectAuthenticate hook refuses the client, for a refusal that is
// not about the credentials (the server is busy, for instance); without it
// the CONNACK says bad user name or password. MQTT 3.1.1 clients get the
// matching return code (packets.V5CodesToV3). Call it from
// OnConnectAuthenticate only, on the connection's own goroutine.
// (moongate)
func (cl *Client) RefuseConnect(code packets.Code) { cl.State.connectRefusal = code }

// SessionExpiry returns the session expiry interval in effect for the
// client, in seconds, and whether the client gave one (MQTT 5). It starts
// as the CONNECT's, lowered to the server's maximum, and a DISCONNECT may
// change it. Safe for concurrent use, unlike Properties.Props, whose
// SessionExpiryInterval stays the connection's first. (moongate)
func (cl *Client) SessionExpiry() (interval uint32, set bool) {
	v := cl.State.sessionExpiry.Load()
	if v&(1<<33) == 0 {
		return cl.Properties.Props.SessionExpiryInterval, cl.Properties.Props.SessionExpiryIntervalFlag
	}
	return uint32(v), v&(1<<32) != 0
}

// setSessionExpiry sets what SessionExpiry returns. (moongate)
func (cl *Client) setSessionExpiry(interval uint32, set bool) {
	v := uint64(interval) | 1<<33
	if set {
		v |= 1 << 32
	}
	cl.State.sessionExpiry.Store(v)
}

// queue returns the client's send queue: the packets its write loop
// writes to the connection. (moongate)
func (s *ClientState) queue() *sendQueue {
	return s.outbound
}

// releaseQueue drops the send queue's packets and memory once the
// connection has ended, so that a session kept for a device that went
// offline does not hold them (a new connection makes a new client, with a
// new queue). A push to the released queue fails; publishToClient then
// finds the client closed. (moongate)
func (s *ClientState) releaseQueue() {
	s.outbound.release()
}

// sendQueue is a client's queue of packets waiting to be written to its
// connection, at most max of them, in order. It is safe for concurrent use.
//
// moongate: mochi's queue was a channel of max packet pointers, and
// moongate's max_queued_per_client sets max: 512 KiB per client at 65535,
// all of it scanned by the garbage collector at every cycle whether the
// queue holds anything or not. Under moongate-bench (65535, for the one
// subscriber receiving every message) the queues of 65 clients were two
// thirds of the daemon's live heap. Here the channel carries slot numbers
// (4 bytes each, memory the collector does not scan) and the packets wait
// in slots that grow with what is queued and are given back once drained.
// The channel keeps mochi's semantics: its capacity is the bound, and the
// write loop blocks on it.
type sendQueue struct {
	mu       sync.Mutex
	ch       chan uint32       // slot numbers, in queue order; nil once released
	slots    []*packets.Packet // the waiting packets; nil in a free slot
	free     []uint32          // free slot numbers
	released bool
}

// sendQueueKeep is how many slots a drained queue keeps; above it, they are
// released.
const sendQueueKeep = 256

func newSendQueue(max int) *sendQueue {
	return &sendQueue{ch: make(chan uint32, max)}
}

// push appends pk, unless the queue holds max packets or was released.
func (q *sendQueue) push(pk *packets.Packet) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.released {
		return false
	}
	var i uint32
	if n := len(q.free); n > 0 {
		i, q.free = q.free[n-1], q.free[:n-1]
	} else {
		i = uint32(len(q.slots))
		q.slots = append(q.slots, nil)
	}
	select {
	case q.ch <- i: // under the lock: the channel's order is the pushes' order
		q.slots[i] = pk
		return true
	default:
		q.free = append(q.free, i)
		return false
	}
}

// channel returns the channel the write loop receives slot numbers from.
func (q *sendQueue) channel() chan uint32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ch
}

// take returns the packet in slot i, received from the channel, and frees
// the slot (nil if the queue was released meanwhile).
func (q *sendQueue) take(i uint32) *packets.Packet {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.released || int(i) >= len(q.slots) {
		return nil
	}
	pk := q.slots[i]
	q.slots[i] = nil
	q.free = append(q.free, i)
	if len(q.free) == len(q.slots) && cap(q.slots) > sendQueueKeep { // drained
		q.slots, q.free = nil, nil
	}
	return pk
}

// len returns the number of packets waiting.
func (q *sendQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ch)
}

// release drops what waits, the channel included, and refuses further
// pushes.
func (q *sendQueue) release() {
	q.mu.Lock()
	q.ch, q.slots, q.free, q.released = nil, nil, nil, true
	q.mu.Unlock()
}

type retainedItem struct {
	sub   packets.Subscription
	topic string
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			TopicAliases:  NewTopicAliases(o.options.Capabilities.TopicAliasMaximum),
			open:          ctx,
			cancelOpen:    cancel,
			Keepalive:     defaultKeepalive,
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}
	cl.State.outbound = newSendQueue(int(o.options.Capabilities.MaximumClientWritesPending))

	if c != nil {
		cl.Net = ClientConnection{
			Conn:   c,
			bconn:  bufio.NewReaderSize(c, o.options.ClientNetReadBufferSize),
			Remote: c.RemoteAddr().String(),
		}
	}

	return cl
}

// WriteLoop ranges over pending outbound messages and writes them to the client connection.
func (cl *Client) WriteLoop() {
	q := cl.State.queue() // moongate: a sendQueue (slot numbers on a channel)
	ch := q.channel()
	for {
		select {
		case i := <-ch:
			pk := q.take(i)
			if pk == nil {
				return // released: the connection has ended
			}
			if err := cl.WritePacket(*pk); err != nil {
				// TODO : Figure out what to do with error
				cl.ops.log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", pk)
				// moongate: a failed write stopped the client (writeConn).
			}
			atomic.AddInt32(&cl.State.outboundQty, -1)
			atomic.AddInt64(&cl.State.outboundBytes, -PacketBytes(*pk)) // moongate
		case <-cl.State.open.Done():
			return
		}
	}
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = bytes.Clone(pk.Connect.Username) // moongate: see cl.ID below
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props = pk.Properties.Copy(false)
	cl.Properties.Props.User = cloneUser(cl.Properties.Props.User) // moongate
	cl.Properties.Props.AuthenticationMethod = strings.Clone(cl.Properties.Props.AuthenticationMethod)
	cl.Properties.Props.AuthenticationData = bytes.Clone(cl.Properties.Props.AuthenticationData)

	// moongate: the session expiry is lowered to the server's maximum here,
	// before the client is shared; SendConnack did it after the client was
	// registered, racing with publishers whose hooks read it.
	if maxExpiry := cl.ops.options.Capabilities.MaximumSessionExpiryInterval; cl.Properties.Props.SessionExpiryInterval > maxExpiry {
		cl.Properties.Props.SessionExpiryInterval = maxExpiry
		cl.Properties.Props.SessionExpiryIntervalFlag = true
		cl.State.expiryClamped = true
	}
	cl.setSessionExpiry(cl.Properties.Props.SessionExpiryInterval, cl.Properties.Props.SessionExpiryIntervalFlag)

	if cl.Properties.Props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
		cl.Properties.Props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
	}

	if pk.Connect.Keepalive <= minimumKeepalive {
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", cl.ID,
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.Props.ReceiveMaximum))            // client receive max
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(cl.Properties.Props.TopicAliasMaximum)

	// moongate: the client id, and below the username and the will, point
	// into the CONNECT packet as decoded: cloned, so that a client (or its
	// offline session) does not keep the whole packet (user properties of
	// up to the packet size) alive.
	cl.ID = strings.Clone(pk.Connect.ClientIdentifier)
	if cl.ID == "" {
		cl.ID = xid.New().String() // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.Props.AssignedClientID = cl.ID
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = Will{
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           bytes.Clone(pk.Connect.WillPayload),
			TopicName:         strings.Clone(pk.Connect.WillTopic),
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              cloneUser(pk.Connect.WillProperties.User),
		}
		// moongate: a will waits at most as long as the session lasts
		// (MQTT 5 3.1.3.2.2: sent when its delay passes or the session
		// ends): the session expiry as the server lowered it above, 0 when
		// the client set none (the session ends with the connection). Only
		// an expiry the client sent shortened it, and to the value it asked
		// for: a will delayed for days parked its payload meanwhile.
		if expiry := cl.Properties.Props.SessionExpiryInterval; expiry < cl.Properties.Will.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = expiry
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read/write deadline for the net.Conn connection.
func (cl *Client) refreshDeadline(keepalive uint16) {
	var expiry time.Time // nil time can be used to disable deadline if keepalive = 0
	if keepalive > 0 {
		expiry = time.Now().Add(time.Duration(keepalive+(keepalive/2)) * time.Second) // [MQTT-3.1.2-22]
	}

	if cl.Net.Conn != nil {
		// moongate: the read deadline only. Writes have their own, set per
		// write (writeTimeout): a client that keeps sending packets but
		// does not read kept pushing back the deadline of a write stuck on
		// it, forever.
		_ = cl.Net.Conn.SetReadDeadline(expiry) // [MQTT-3.1.2-22]
	}
}

// noKeepaliveWriteTimeout bounds a write to a client without keepalive.
// (moongate)
const noKeepaliveWriteTimeout = 60 * time.Second

// writeTimeout is how long one write to the client may block: one and a
// half keepalive periods, as a silent client is given, or
// noKeepaliveWriteTimeout. A client that does not take a packet in that
// time is disconnected. (moongate)
func (cl *Client) writeTimeout() time.Duration {
	if ka := cl.State.Keepalive; ka > 0 {
		return time.Duration(ka) * 1500 * time.Millisecond
	}
	return noKeepaliveWriteTimeout
}

// writeChunk is how much of a packet a write deadline covers: a slow but
// working connection gets a new deadline every writeChunk bytes, a stuck
// one fails after one. (moongate)
const writeChunk = 16 << 10

// WriteError is returned by WritePacket when writing to the connection
// failed (its deadline passed, or it was reset): the stream may be broken
// in the middle of a packet, so the write loop stops the client with it,
// and a client stopped with it gets its will sent. (moongate)
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "write to client: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// writeConn writes b to the connection, writeChunk bytes at a time, each
// with a deadline of writeTimeout (or the closing deadline, if sooner). A
// failure stops the client with a WriteError, unless the server is
// disconnecting it (DisconnectClient stops it with its own reason): the
// stream may be broken in the middle of a packet. (moongate)
func (cl *Client) writeConn(b []byte) (int64, error) {
	timeout := cl.writeTimeout()
	var n int64
	for len(b) > 0 {
		c := b[:min(len(b), writeChunk)]
		deadline := time.Now().Add(timeout)
		_ = cl.Net.Conn.SetWriteDeadline(deadline)
		if closing := cl.Net.closing.Load(); closing != 0 && closing < deadline.UnixNano() {
			// After the set: DisconnectClient sets the closing deadline,
			// then the connection's; either order ends at the earlier.
			_ = cl.Net.Conn.SetWriteDeadline(time.Unix(0, closing))
		}
		m, err := cl.Net.Conn.Write(c)
		n += int64(m)
		if err != nil {
			werr := &WriteError{Err: err}
			if cl.Net.closing.Load() == 0 {
				cl.Stop(werr)
			}
			return n, werr
		}
		b = b[len(c):]
	}
	return n, nil
}

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
func (cl *Client) NextPacketID() (i uint32, err error) {
	cl.Lock()
	defer cl.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if _, ok := cl.State.Inflight.Get(uint16(i)); !ok {
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	if cl.State.Inflight.Len() == 0 {
		return nil
	}
	return cl.resendInflight(cl.State.Inflight.GetAll(false))
}

// resendInflight resends the messages of list (moongate: a snapshot taken
// before the client could receive new messages, which its write loop
// sends; see Server.attachClient).
func (cl *Client) resendInflight(list []packets.Packet) error {
	if len(list) == 0 {
		return nil
	}

	for _, tk := range list {
		if _, ok := cl.State.Inflight.Order(tk); !ok {
			continue // completed or expired since the snapshot
		}
		if tk.FixedHeader.Type == packets.Publish {
			tk.FixedHeader.Dup = true // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
		}

		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 0)
		err := cl.WritePacket(tk)
		if err != nil {
			return err
		}

		if tk.FixedHeader.Type == packets.Puback || tk.FixedHeader.Type == packets.Pubcomp {
			if ok := cl.State.Inflight.DeletePacket(tk); ok { // moongate: by direction
				cl.ops.hooks.OnQosComplete(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
			}
		}
	}

	return nil
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.DeletePacket(tk); ok { // moongate: by direction
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	for _, tk := range cl.State.Inflight.GetAll(false) {
		expired := tk.ProtocolVersion == 5 && tk.Expiry > 0 && tk.Expiry < now // [MQTT-3.3.2-5]

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := maximumExpiry > 0 && now-tk.Created > maximumExpiry

		if expired || enforced {
			if ok := cl.State.Inflight.DeletePacket(tk); ok { // moongate: by direction
				cl.ops.hooks.OnQosDropped(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
				deleted = append(deleted, tk.PacketID)
			}
		}
	}

	return deleted
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
func (cl *Client) Read(packetHandler ReadFn) error {
	var err error

	for {
		if cl.Closed() {
			// moongate: stopped by a failed write, the connection ended
			// in error: the caller sends the will, unless the client
			// itself ended it with a normal DISCONNECT.
			var we *WriteError
			if cause := cl.StopCause(); errors.As(cause, &we) && !cl.State.cleanDisconnect.Load() {
				return cause
			}
			return nil
		}

		cl.refreshDeadline(cl.State.Keepalive)
		fh := new(packets.FixedHeader)
		err = cl.ReadFixedHeader(fh)
		if err != nil {
			return err
		}

		pk, err := cl.ReadPacket(fh)
		if err != nil {
			return err
		}

		err = packetHandler(cl, pk) // Process inbound packet.
		if err != nil {
			return err
		}
	}
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {

		if cl.Net.Conn != nil {
			// moongate: a connection the server is disconnecting, or whose
			// write failed, may take nothing more: close it without the
			// TLS close-notify (which waits up to 5 s for it).
			var we *WriteError
			if cl.Net.closing.Load() != 0 || errors.As(err, &we) {
				closeHard(cl.Net.Conn)
			} else {
				_ = cl.Net.Conn.Close() // omit close error
			}
		}

		if err != nil {
			cl.State.stopCause.Store(err)
		}

		if cl.State.cancelOpen != nil {
			cl.State.cancelOpen()
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
	})
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if cl.State.stopCause.Load() == nil {
		return nil
	}
	return cl.State.stopCause.Load().(error)
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// closeHard closes c, and first the connection under it when it has one
// (TLS), so that nothing more is written to it. (moongate)
func closeHard(c net.Conn) {
	if n, ok := c.(interface{ NetConn() net.Conn }); ok {
		_ = n.NetConn().Close()
	}
	_ = c.Close()
}

// Disconnecting reports whether the server is disconnecting the client
// (DisconnectClient has begun). (moongate)
func (cl *Client) Disconnecting() bool { return cl.Net.closing.Load() != 0 }

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	return cl.State.open == nil || cl.State.open.Err() != nil
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.isTakenOver.Load()
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	if cl.Net.bconn == nil {
		return ErrConnectionClosed
	}

	b, err := cl.Net.bconn.ReadByte()
	if err != nil {
		return err
	}

	err = fh.Decode(b)
	if err != nil {
		return err
	}

	var bu int
	fh.Remaining, bu, err = packets.DecodeLength(cl.Net.bconn)
	if err != nil {
		return err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (pk packets.Packet, err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh
	p := make([]byte, pk.FixedHeader.Remaining)
	n, err := io.ReadFull(cl.Net.bconn, p)
	if err != nil {
		return pk, err
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(n))

	// Decode the remaining packet values using a fresh copy of the bytes,
	// otherwise the next packet will change the data of this one.
	px := append([]byte{}, p[:]...)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq:
	case packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err != nil {
		return pk, err
	}

	pk, err = cl.ops.hooks.OnPacketRead(cl, pk)
	return
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	return cl.writePacket(pk, false)
}

// writePacket is WritePacket; held tells that the caller holds writeMu.
// (moongate)
func (cl *Client) writePacket(pk packets.Packet, held bool) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	}

	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || cl.Properties.Props.RequestResponseInfo == 0x1 || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}

	pk = cl.ops.hooks.OnPacketEncode(cl, pk)

	var err error
	buf := new(bytes.Buffer)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	default:
		err = fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()) > pk.Mods.MaxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}

	n, err := func() (int64, error) {
		if !held {
			cl.Net.writeMu.Lock() // moongate: not cl.Lock (see writeMu)
			defer cl.Net.writeMu.Unlock()
		}
		if cl.Net.ended {
			return 0, ErrConnectionClosed // moongate: after the server's DISCONNECT
		}
		if cl.State.queue().len() == 0 {
			if cl.Net.outbuf == nil {
				return cl.writeConn(buf.Bytes())
			}

			// first write to buffer, then flush buffer
			n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
			err = cl.flushOutbuf()
			return int64(n), err
		}

		// there are more writes in the queue
		if cl.Net.outbuf == nil {
			if buf.Len() >= cl.ops.options.ClientNetWriteBufferSize {
				return cl.writeConn(buf.Bytes())
			}
			cl.Net.outbuf = new(bytes.Buffer)
		}

		n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
		if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
			return int64(n), nil
		}

		err = cl.flushOutbuf()
		return int64(n), err
	}()
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}

	cl.ops.hooks.OnPacketSent(cl, pk, buf.Bytes())

	return err
}

func (cl *Client) flushOutbuf() (err error) {
	if cl.Net.outbuf == nil {
		return
	}

	_, err = cl.writeConn(cl.Net.outbuf.Bytes()) // moongate: in pieces with deadlines
	if err == nil {
		cl.Net.outbuf = nil
	}
	return
}

// cloneUser copies user properties with their strings (moongate): decoded
// ones point into the packet they came in.
func cloneUser(u []packets.UserProperty) []packets.UserProperty {
	if u == nil {
		return nil
	}
	out := make([]packets.UserProperty, len(u))
	for i, p := range u {
		out[i] = packets.UserProperty{Key: strings.Clone(p.Key), Val: strings.Clone(p.Val)}
	}
	return out
}

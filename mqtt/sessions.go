package mqtt

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SessionStore keeps what the embedded broker must not forget across a
// restart: the sessions of clients whose session outlives their connection
// (MQTT 3 clean session off, MQTT 5 session expiry above zero), their
// subscriptions and the QoS 1/2 messages queued or in flight for them, and
// retained messages. store.Store implements it.
//
// The broker calls SetSession and DeleteSession from its own goroutines, in
// the order the changes happen; they must keep that order, must not wait
// for the disk, and must make every write queued after them durable only
// together with them or later (so a local publish acknowledged after the
// broker queued it for an offline device is never lost in between).
// LoadSessions is called once, when the broker starts.
type SessionStore interface {
	SetSession(key, value []byte) error
	DeleteSession(key []byte) error
	LoadSessions(ctx context.Context, fn func(key, value []byte) error) error
}

// SessionFlusher is implemented by a SessionStore whose queued writes can
// be waited for: FlushSessions returns once every write queued before the
// call is durable. With it, the broker acknowledges a QoS 1/2 publish only
// once the copies it queued for persistent-session subscribers (and its
// retained message) are durable, and a SUBSCRIBE once its subscriptions
// are: a crash right after the acknowledgement loses neither (the sender,
// acknowledged, would not send again). store.Store implements it.
type SessionFlusher interface {
	FlushSessions(ctx context.Context) error
}

// flushTimeout bounds the wait for session writes before an
// acknowledgement; past it the connection is closed unacknowledged.
const flushTimeout = 30 * time.Second

// Session item keys: a kind byte, then fixed-size digests, so that any
// client id, filter or topic fits in a short key and the client an item
// belongs to can be read from its key.
const (
	kindClient   = 'C' // + client digest
	kindSub      = 'S' // + client digest + filter digest
	kindInflight = 'I' // + client digest + direction + packet id (2 bytes)
	kindRetained = 'R' // + topic digest
)

const digestLen = 16

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:digestLen]
}

func clientPrefix(kind byte, id string) []byte {
	return append([]byte{kind}, digest(id)...)
}

func subKey(id, filter string) []byte {
	return append(clientPrefix(kindSub, id), digest(filter)...)
}

// The direction byte of an in-flight item: each side numbers its own
// packets, so a message to the client and the acknowledgement of one from
// it may have the same packet id (the patched mochi keeps them apart too).
const (
	dirOut = 'o' // the broker's message to the client: PUBLISH, then PUBREL
	dirIn  = 'i' // the broker's acknowledgement of the client's message: PUBREC
)

// inflightRef names one in-flight item of a client.
type inflightRef struct {
	dir byte
	id  uint16
}

// refOf is the item pk is, by its type (as mochi's Inflight.Set files it).
func refOf(pk packets.Packet) inflightRef {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		return inflightRef{dirIn, pk.PacketID}
	}
	return inflightRef{dirOut, pk.PacketID}
}

func inflightKey(id string, r inflightRef) []byte {
	return binary.BigEndian.AppendUint16(append(clientPrefix(kindInflight, id), r.dir), r.id)
}

// orderedMessage is the stored value of an in-flight item: a version byte,
// the item's place in the order messages were queued (8 bytes), then the
// message as mochi encodes it. mochi resends a session's messages in the
// order it was given them, and it is given them in this order at start.
type orderedMessage struct {
	seq uint64
	m   *storage.Message
}

const orderedVersion = 1

// MarshalBinary implements encoding.BinaryMarshaler.
func (o orderedMessage) MarshalBinary() ([]byte, error) {
	b, err := o.m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return append(binary.BigEndian.AppendUint64([]byte{orderedVersion}, o.seq), b...), nil
}

// unmarshalOrdered decodes a stored in-flight item. Items stored before the
// order was kept (mochi's encoding alone, a JSON object) have order 0.
func unmarshalOrdered(v []byte) (orderedMessage, error) {
	o := orderedMessage{m: &storage.Message{}}
	if len(v) > 0 && v[0] == orderedVersion {
		if len(v) < 9 {
			return o, errors.New("short in-flight item")
		}
		o.seq, v = binary.BigEndian.Uint64(v[1:9]), v[9:]
	}
	return o, o.m.UnmarshalBinary(v)
}

func retainedKey(topic string) []byte { return append([]byte{kindRetained}, digest(topic)...) }

// persists reports whether cl's session outlives its connection, the
// condition under which mochi keeps it after a disconnect.
func persists(cl *mochi.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		iv, _ := cl.SessionExpiry() // not Props: a DISCONNECT may change it meanwhile
		return iv > 0
	}
	return !cl.Properties.Clean
}

// sessionHook mirrors mochi's session state into a SessionStore and gives
// it back when the broker starts. Only clients whose session persists are
// written: clean-session clients cost no write, and neither do the
// acknowledgements of the QoS 1 messages devices publish. It keeps an index
// of what is stored (known), so that forgetting a client removes exactly
// its items, in order with everything else, without scanning or waiting.
type sessionHook struct {
	mochi.HookBase
	st  SessionStore
	log *slog.Logger

	once   sync.Once
	loaded sessionSet
	err    error

	mu    sync.Mutex
	known map[string]*storedClient // by client digest
	// base is added to mochi's order of an in-flight item to give its
	// stored order: one more than the highest order loaded at start, so
	// that items stored by this process come after the ones restored.
	base uint64

	// retained returns the topic's retained message in mochi (set by
	// NewEmbedded).
	retained func(topic string) (packets.Packet, bool)
	// connected reports whether a client of that id is connected (set by
	// NewEmbedded; nil: every client is taken as connected).
	connected func(id string) bool

	// queued counts the session writes queued so far; durable is how
	// many of them are known to be durable (SessionFlusher).
	queued, durable atomic.Uint64
	// owed holds, by client id, the value of queued after the last write
	// made for something that client sent and that is not acknowledged yet
	// (copies of its publish, its retained message, its QoS 2 PUBREC, its
	// subscriptions): beforeAck waits until that much is durable. h.mu.
	owed map[string]uint64
}

// storedClient is what the store holds for one client.
type storedClient struct {
	subs     map[string]bool        // filter digests
	inflight map[inflightRef]uint64 // in-flight items and their order
}

func newStoredClient() *storedClient {
	return &storedClient{subs: map[string]bool{}, inflight: map[inflightRef]uint64{}}
}

// client returns the index entry of id, creating it. h.mu must be held.
func (h *sessionHook) client(id string) *storedClient {
	if h.known == nil {
		h.known = map[string]*storedClient{}
	}
	d := string(digest(id))
	c := h.known[d]
	if c == nil {
		c = newStoredClient()
		h.known[d] = c
	}
	return c
}

// takenOver reports whether cl's session has moved to a new connection of
// the same client id: the old connection's events must not touch the store
// (mochi clears the old client's subscriptions and messages after copying
// them to the new one).
func takenOver(cl *mochi.Client) bool {
	return cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver)
}

// sessionSet is the decoded content of a SessionStore.
type sessionSet struct {
	clients  []storage.Client
	subs     []storage.Subscription
	inflight []storage.Message
	retained []storage.Message
}

// ID implements mochi.Hook.
func (h *sessionHook) ID() string { return "moongate-sessions" }

// Provides implements mochi.Hook.
func (h *sessionHook) Provides(b byte) bool {
	return bytes.IndexByte([]byte{
		mochi.OnSessionEstablish, mochi.OnSessionEstablished, mochi.OnDisconnect, mochi.OnSubscribed, mochi.OnUnsubscribed,
		mochi.OnRetainMessage, mochi.OnWillSent, mochi.OnQosPublish, mochi.OnQosComplete,
		mochi.OnQosDropped, mochi.OnClientExpired, mochi.OnRetainedExpired,
		mochi.StoredClients, mochi.StoredInflightMessages, mochi.StoredRetainedMessages, mochi.StoredSubscriptions,
	}, b) >= 0
}

func (h *sessionHook) set(what string, key []byte, v interface{ MarshalBinary() ([]byte, error) }) {
	b, err := v.MarshalBinary()
	if err == nil {
		err = h.st.SetSession(key, b)
	}
	if err != nil {
		h.log.Error("broker session not saved", "item", what, "err", err)
		return
	}
	h.queued.Add(1)
}

func (h *sessionHook) del(what string, key []byte) {
	if err := h.st.DeleteSession(key); err != nil {
		h.log.Error("broker session item not removed", "item", what, "err", err)
		return
	}
	h.queued.Add(1)
}

// owe records that the acknowledgement of what client id sent waits for
// the session writes queued so far. Nothing is recorded for a client that
// is not connected (a publisher gone before its message was resent to a
// returning subscriber, a delayed will): no acknowledgement will wait, and
// the entry would stay for ever. h.mu must be held.
func (h *sessionHook) owe(id string) {
	if h.connected != nil && !h.connected(id) {
		return
	}
	if h.owed == nil {
		h.owed = map[string]uint64{}
	}
	h.owed[id] = h.queued.Load()
}

// beforeAck is mochi's Options.BeforeAck: it returns once the session
// writes made for what cl sent are durable (at once when there were none,
// the usual case: no persistent-session subscriber).
func (h *sessionHook) beforeAck(cl *mochi.Client) error {
	f, ok := h.st.(SessionFlusher)
	if !ok {
		return nil
	}
	if h.queued.Load() <= h.durable.Load() {
		// Everything queued is durable (the usual case: no persistent
		// subscriber got a copy): no lock on the publish path. A stale
		// owed entry left for cl is durable too.
		return nil
	}
	h.mu.Lock()
	g := h.owed[cl.ID]
	delete(h.owed, cl.ID)
	h.mu.Unlock()
	if g == 0 || h.durable.Load() >= g {
		return nil
	}
	at := h.queued.Load() // every write counted here is queued before the flush
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := f.FlushSessions(ctx); err != nil {
		h.log.Warn("broker session writes not made durable: the client's message is not acknowledged", "client", cl.ID, "err", err)
		return err
	}
	for d := h.durable.Load(); d < at && !h.durable.CompareAndSwap(d, at); d = h.durable.Load() {
	}
	return nil
}

// forget removes everything stored for client id. h.mu must be held.
func (h *sessionHook) forget(id string) {
	d := string(digest(id))
	c := h.known[d]
	if c == nil {
		return // nothing stored: the usual case of a clean-session client
	}
	delete(h.known, d)
	h.del("client", clientPrefix(kindClient, id))
	for f := range c.subs {
		h.del("subscription", append(clientPrefix(kindSub, id), f...))
	}
	for r := range c.inflight {
		h.del("queued message", inflightKey(id, r))
	}
}

// saveClient stores cl's session. h.mu must be held.
func (h *sessionHook) saveClient(cl *mochi.Client) {
	h.client(cl.ID)
	props := cl.Properties.Props.Copy(false)
	props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = cl.SessionExpiry()
	h.set("client", clientPrefix(kindClient, cl.ID), &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag,
			AuthenticationMethod:      props.AuthenticationMethod,
			AuthenticationData:        props.AuthenticationData,
			RequestProblemInfo:        props.RequestProblemInfo,
			RequestProblemInfoFlag:    props.RequestProblemInfoFlag,
			RequestResponseInfo:       props.RequestResponseInfo,
			ReceiveMaximum:            props.ReceiveMaximum,
			TopicAliasMaximum:         props.TopicAliasMaximum,
			User:                      props.User,
			MaximumPacketSize:         props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	})
}

// OnSessionEstablished implements mochi.Hook: a session that is new (clean
// start) or will not persist drops what was stored for the client id; a
// persistent one is saved.
//
// mochi calls it after sending CONNACK, so a new connection of the same id
// may already have taken the session over: then this one does nothing.
func (h *sessionHook) OnSessionEstablished(cl *mochi.Client, pk packets.Packet) {
	if takenOver(cl) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if pk.Connect.Clean || !persists(cl) {
		h.forget(cl.ID)
	}
	if persists(cl) {
		h.saveClient(cl)
	}
}

// OnSessionEstablish implements mochi.Hook: called before mochi takes over
// or discards the previous session, and before CONNACK.
func (h *sessionHook) OnSessionEstablish(cl *mochi.Client, pk packets.Packet) {
	if !pk.Connect.Clean {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forget(cl.ID)
}

// OnWillSent implements mochi.Hook (the will is cleared once sent).
func (h *sessionHook) OnWillSent(cl *mochi.Client, pk packets.Packet) {
	if !persists(cl) || takenOver(cl) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.saveClient(cl)
}

// OnDisconnect implements mochi.Hook.
func (h *sessionHook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	if takenOver(cl) {
		return // the session lives on in the new connection
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.owed, cl.ID)
	switch {
	case expire:
		h.forget(cl.ID)
	case persists(cl):
		h.saveClient(cl)
	}
}

// OnClientExpired implements mochi.Hook.
func (h *sessionHook) OnClientExpired(cl *mochi.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forget(cl.ID)
}

// OnSubscribed implements mochi.Hook.
func (h *sessionHook) OnSubscribed(cl *mochi.Client, pk packets.Packet, reasonCodes []byte) {
	if !persists(cl) || takenOver(cl) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.client(cl.ID)
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= 0x80 {
			continue // refused
		}
		c.subs[string(digest(f.Filter))] = true
		h.set("subscription", subKey(cl.ID, f.Filter), &storage.Subscription{
			T: storage.SubscriptionKey, ID: cl.ID + ":" + f.Filter, Client: cl.ID, Qos: reasonCodes[i], Filter: f.Filter,
			Identifier: f.Identifier, NoLocal: f.NoLocal, RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		})
	}
	h.owe(cl.ID) // the SUBACK waits for them
}

// OnUnsubscribed implements mochi.Hook.
func (h *sessionHook) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.known[string(digest(cl.ID))]
	if c == nil {
		return
	}
	for _, f := range pk.Filters {
		fd := string(digest(f.Filter))
		if _, kept := cl.State.Subscriptions.Get(f.Filter); kept {
			continue // refused (packet id in use)
		}
		if c.subs[fd] {
			delete(c.subs, fd)
			h.del("subscription", subKey(cl.ID, f.Filter))
		}
	}
}

func message(pk packets.Packet) *storage.Message {
	props := pk.Properties.Copy(false)
	return &storage.Message{
		T: storage.InflightKey, Origin: pk.Origin, PacketID: pk.PacketID, FixedHeader: pk.FixedHeader,
		TopicName: pk.TopicName, Payload: pk.Payload, Created: pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat: props.PayloadFormat, PayloadFormatFlag: props.PayloadFormatFlag,
			MessageExpiryInterval: props.MessageExpiryInterval, ContentType: props.ContentType,
			ResponseTopic: props.ResponseTopic, CorrelationData: props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier, User: props.User,
		},
	}
}

// OnQosPublish implements mochi.Hook: a QoS 1/2 message queued or sent to
// a client with a persistent session (or, inbound, the acknowledgement of
// one it published: a QoS 1 PUBACK is not stored, it lives a moment; a
// QoS 2 PUBREC is, until the PUBREL).
func (h *sessionHook) OnQosPublish(cl *mochi.Client, pk packets.Packet, sent int64, resends int) {
	// Only IsTakenOver, not takenOver: a message published to the old
	// client after the new connection disconnected it but before mochi
	// copied its messages in flight is copied, and must be stored (under
	// the same id) like the others.
	if pk.FixedHeader.Type == packets.Puback || !persists(cl) || cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if pk.FixedHeader.Type == packets.Pubrel {
		h.pubrel(cl, pk)
		return
	}
	// The stored order is mochi's (given when the item entered its map,
	// under its lock): two publishers racing to one client are stored in
	// the order mochi will resend them. An item no longer in flight was
	// completed before this call (its done found nothing to remove): not
	// stored.
	order, live := cl.State.Inflight.Order(pk)
	if !live {
		return
	}
	c, r, seq := h.client(cl.ID), refOf(pk), h.base+order
	c.inflight[r] = seq
	m := message(pk)
	m.Client, m.Sent = cl.ID, sent
	h.set("queued message", inflightKey(cl.ID, r), orderedMessage{seq, m})
	// The acknowledgement of the message waits for this write: its
	// sender's (a PUBREC is the publisher's own; a copy for a subscriber
	// names its origin).
	if pk.FixedHeader.Type == packets.Pubrec {
		h.owe(cl.ID)
	} else if pk.Origin != "" {
		h.owe(pk.Origin)
	}
}

// OnQosComplete implements mochi.Hook.
func (h *sessionHook) OnQosComplete(cl *mochi.Client, pk packets.Packet) { h.done(cl, pk.PacketID) }

// OnQosDropped implements mochi.Hook.
func (h *sessionHook) OnQosDropped(cl *mochi.Client, pk packets.Packet) { h.done(cl, pk.PacketID) }

// done removes the stored in-flight items with packet id id that mochi no
// longer holds. (The packet mochi reports is not always the item: a PUBREC
// from the client ends the broker's message, a PUBREL the broker's PUBREC;
// mochi removes the item before it calls the hooks, so what is gone says
// which one ended.)
func (h *sessionHook) done(cl *mochi.Client, id uint16) {
	if cl.IsTakenOver() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.known[string(digest(cl.ID))]
	if c == nil {
		return
	}
	for _, r := range [2]inflightRef{{dirOut, id}, {dirIn, id}} {
		if _, stored := c.inflight[r]; !stored {
			continue
		}
		get := cl.State.Inflight.Get
		if r.dir == dirIn {
			get = cl.State.Inflight.GetInbound
		}
		if _, live := get(id); live {
			continue // the id was reused (or the drop was reported twice)
		}
		delete(c.inflight, r)
		h.del("queued message", inflightKey(cl.ID, r))
		if r.dir == dirIn {
			// The PUBCOMP waits for the removal of the PUBREC (patched
			// mochi): a restart that restored it would take the client's
			// next message with this packet id for a resend and drop it.
			h.owe(cl.ID)
		}
	}
}

// pubrel stores the PUBREL that replaced a QoS 2 message in flight to cl
// once cl answered it with PUBREC (the patched mochi reports it through
// OnQosPublish and waits for the write, BeforeAck, before sending it): a
// restart then resends the PUBREL, not the message, which cl, having
// released the packet id at the PUBREL, would take as new. h.mu must be
// held.
func (h *sessionHook) pubrel(cl *mochi.Client, pk packets.Packet) {
	c := h.known[string(digest(cl.ID))]
	if c == nil {
		return
	}
	r := inflightRef{dirOut, pk.PacketID}
	seq, stored := c.inflight[r]
	if !stored {
		return // the message was not stored (completed, dropped)
	}
	m := message(pk)
	m.Client = cl.ID
	h.set("queued message", inflightKey(cl.ID, r), orderedMessage{seq, m})
	h.owe(cl.ID)
}

// OnRetainMessage implements mochi.Hook: a retained message set, replaced
// or cleared (empty payload).
//
// mochi calls it after releasing its topic lock, so two retained publishes
// to one topic may call it in the other order: what is stored is the
// topic's retained message as mochi holds it now, read under h.mu, so the
// last call stores the last state whatever the order.
func (h *sessionHook) OnRetainMessage(cl *mochi.Client, pk packets.Packet, r int64) {
	topic := pk.TopicName
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.retained != nil {
		pk, _ = h.retained(topic) // zero: none retained now
	}
	defer h.owe(cl.ID) // its acknowledgement waits for the write
	if len(pk.Payload) == 0 {
		h.del("retained message", retainedKey(topic))
		return
	}
	m := message(pk)
	m.T, m.Client = storage.RetainedKey, cl.ID
	h.set("retained message", retainedKey(topic), m)
}

// OnRetainedExpired implements mochi.Hook.
func (h *sessionHook) OnRetainedExpired(topic string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.retained != nil {
		if pk, ok := h.retained(topic); ok && len(pk.Payload) > 0 {
			m := message(pk)
			m.T, m.Client = storage.RetainedKey, pk.Origin
			h.set("retained message", retainedKey(topic), m)
			return
		}
	}
	h.del("retained message", retainedKey(topic))
}

// load reads the store once, when mochi asks for the first part of it.
// Undecodable items and items of a client that is not stored (left by a
// crash during a removal) are logged and removed.
func (h *sessionHook) load() (sessionSet, error) {
	h.once.Do(func() {
		var set sessionSet
		clients := map[string]*storedClient{} // by client digest
		var orphans [][]byte
		type item struct {
			key []byte
			v   []byte
		}
		var items []item
		var inflight, legacy []orderedMessage
		var legacyKeys [][]byte
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		h.err = h.st.LoadSessions(ctx, func(k, v []byte) error {
			items = append(items, item{bytes.Clone(k), bytes.Clone(v)})
			return nil
		})
		if h.err != nil {
			h.err = fmt.Errorf("load broker sessions: %w", h.err)
			return
		}
		// Keys come in order, and kindClient sorts before kindInflight and
		// kindSub: a client's items are seen after the client.
		mismatch := errors.New("item does not match its key")
		for _, it := range items {
			k := it.key
			var err error
			switch {
			case len(k) == 1+digestLen && k[0] == kindClient:
				var c storage.Client
				if err = c.UnmarshalBinary(it.v); err == nil && string(digest(c.ID)) != string(k[1:]) {
					err = mismatch
				}
				if err == nil {
					set.clients = append(set.clients, c)
					clients[string(k[1:])] = newStoredClient()
				}
			case len(k) == 1+2*digestLen && k[0] == kindSub && clients[string(k[1:1+digestLen])] != nil:
				var s storage.Subscription
				if err = s.UnmarshalBinary(it.v); err == nil && !bytes.Equal(k, subKey(s.Client, s.Filter)) {
					err = mismatch
				}
				if err == nil {
					set.subs = append(set.subs, s)
					clients[string(k[1:1+digestLen])].subs[string(k[1+digestLen:])] = true
				}
			case (len(k) == 1+digestLen+3 || len(k) == 1+digestLen+2) && k[0] == kindInflight && clients[string(k[1:1+digestLen])] != nil:
				var o orderedMessage
				o, err = unmarshalOrdered(it.v)
				if err != nil {
					break
				}
				r := refOf(o.m.ToPacket())
				if len(k) == 1+digestLen+2 {
					// Stored before items had a direction and an order
					// (the first release with sessions): stored again in
					// the current form, then removed.
					if !bytes.Equal(k, binary.BigEndian.AppendUint16(clientPrefix(kindInflight, o.m.Client), o.m.PacketID)) {
						err = mismatch
						break
					}
					legacy = append(legacy, o)
					legacyKeys = append(legacyKeys, k)
					break
				}
				if !bytes.Equal(k, inflightKey(o.m.Client, r)) {
					err = mismatch
					break
				}
				inflight = append(inflight, o)
				clients[string(k[1:1+digestLen])].inflight[r] = o.seq
			case len(k) == 1+digestLen && k[0] == kindRetained:
				var m storage.Message
				if err = m.UnmarshalBinary(it.v); err == nil && !bytes.Equal(k, retainedKey(m.TopicName)) {
					err = mismatch
				}
				if err == nil {
					set.retained = append(set.retained, m)
				}
			default:
				err = errors.New("no stored client for it, or unknown key")
			}
			if err != nil {
				h.log.Warn("removing a stored broker session item", "key", fmt.Sprintf("%x", k), "err", err)
				orphans = append(orphans, k)
			}
		}
		for _, k := range orphans {
			h.del("orphan", k)
		}
		h.mu.Lock()
		var last uint64
		for _, o := range inflight {
			last = max(last, o.seq)
		}
		// Legacy items go after the others, by creation time then packet
		// id (all the order they had); one whose current form is stored
		// too is only removed. Each is written in its new form before its
		// old key is removed: the writes land in order, so a crash in
		// between leaves at worst both forms, never neither.
		slices.SortStableFunc(legacy, func(a, b orderedMessage) int {
			return cmp.Or(cmp.Compare(a.m.Created, b.m.Created), cmp.Compare(a.m.PacketID, b.m.PacketID))
		})
		for _, o := range legacy {
			c, r := clients[string(digest(o.m.Client))], refOf(o.m.ToPacket())
			if _, dup := c.inflight[r]; dup {
				continue
			}
			last++
			o.seq = last
			c.inflight[r] = o.seq
			h.set("queued message", inflightKey(o.m.Client, r), o)
			inflight = append(inflight, o)
		}
		for _, k := range legacyKeys {
			h.del("queued message in the old form", k)
		}
		h.base = last + 1
		h.known = clients
		h.mu.Unlock()
		// mochi resends a session's messages in the order it is given
		// them: the order they were first queued in.
		slices.SortStableFunc(inflight, func(a, b orderedMessage) int { return cmp.Compare(a.seq, b.seq) })
		for _, o := range inflight {
			set.inflight = append(set.inflight, *o.m)
		}
		h.loaded = set
	})
	return h.loaded, h.err
}

// StoredClients implements mochi.Hook.
func (h *sessionHook) StoredClients() ([]storage.Client, error) {
	s, err := h.load()
	return s.clients, err
}

// StoredSubscriptions implements mochi.Hook.
func (h *sessionHook) StoredSubscriptions() ([]storage.Subscription, error) {
	s, err := h.load()
	return s.subs, err
}

// StoredInflightMessages implements mochi.Hook.
func (h *sessionHook) StoredInflightMessages() ([]storage.Message, error) {
	s, err := h.load()
	return s.inflight, err
}

// StoredRetainedMessages implements mochi.Hook. mochi asks for it last:
// the loaded items are not kept after it.
func (h *sessionHook) StoredRetainedMessages() ([]storage.Message, error) {
	s, err := h.load()
	h.loaded = sessionSet{}
	return s.retained, err
}

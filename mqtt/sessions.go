package mqtt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
// DeleteSessionPrefix returns once the removal is durable.
type SessionStore interface {
	SetSession(key, value []byte) error
	DeleteSession(key []byte) error
	DeleteSessionPrefix(ctx context.Context, prefix []byte) error
	LoadSessions(ctx context.Context, fn func(key, value []byte) error) error
}

// Session item keys: a kind byte, then fixed-size digests, so that every
// item of a client shares a prefix no other client's items have, whatever
// the characters and length of client ids, filters and topics.
const (
	kindClient   = 'C' // + client digest
	kindSub      = 'S' // + client digest + filter digest
	kindInflight = 'I' // + client digest + packet id (2 bytes)
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

func inflightKey(id string, packetID uint16) []byte {
	return binary.BigEndian.AppendUint16(clientPrefix(kindInflight, id), packetID)
}

func retainedKey(topic string) []byte { return append([]byte{kindRetained}, digest(topic)...) }

// persists reports whether cl's session outlives its connection, the
// condition under which mochi keeps it after a disconnect.
func persists(cl *mochi.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// sessionHook mirrors mochi's session state into a SessionStore and gives
// it back when the broker starts. Only clients whose session persists are
// written: the per-message writes (a queued QoS 1 message, its PUBACK) are
// never paid for clean-session clients.
type sessionHook struct {
	mochi.HookBase
	st  SessionStore
	log *slog.Logger

	once   sync.Once
	loaded sessionSet
	err    error

	mu    sync.Mutex
	known map[string]bool // digests of the clients with stored items
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
		mochi.OnSessionEstablished, mochi.OnDisconnect, mochi.OnSubscribed, mochi.OnUnsubscribed,
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
	}
}

func (h *sessionHook) del(what string, key []byte) {
	if err := h.st.DeleteSession(key); err != nil {
		h.log.Error("broker session item not removed", "item", what, "err", err)
	}
}

// forget removes everything stored for client id.
func (h *sessionHook) forget(id string) {
	d := string(digest(id))
	h.mu.Lock()
	known := h.known[d]
	delete(h.known, d)
	h.mu.Unlock()
	if !known {
		return // nothing stored: the usual case of a clean-session client
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h.del("client", clientPrefix(kindClient, id))
	for _, kind := range []byte{kindSub, kindInflight} {
		if err := h.st.DeleteSessionPrefix(ctx, clientPrefix(kind, id)); err != nil {
			h.log.Error("broker session not removed", "client", id, "err", err)
		}
	}
}

func (h *sessionHook) saveClient(cl *mochi.Client) {
	h.mu.Lock()
	if h.known == nil {
		h.known = map[string]bool{}
	}
	h.known[string(digest(cl.ID))] = true
	h.mu.Unlock()
	props := cl.Properties.Props.Copy(false)
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

// OnSessionEstablished implements mochi.Hook: a clean start drops what was
// stored for the client id; a persistent session is saved.
func (h *sessionHook) OnSessionEstablished(cl *mochi.Client, pk packets.Packet) {
	if pk.Connect.Clean {
		h.forget(cl.ID)
	}
	if persists(cl) {
		h.saveClient(cl)
	}
}

// OnWillSent implements mochi.Hook (the will is cleared once sent).
func (h *sessionHook) OnWillSent(cl *mochi.Client, pk packets.Packet) {
	if persists(cl) {
		h.saveClient(cl)
	}
}

// OnDisconnect implements mochi.Hook.
func (h *sessionHook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	switch {
	case expire && !errors.Is(cl.StopCause(), packets.ErrSessionTakenOver):
		h.forget(cl.ID)
	case !expire && persists(cl):
		h.saveClient(cl)
	}
}

// OnClientExpired implements mochi.Hook.
func (h *sessionHook) OnClientExpired(cl *mochi.Client) { h.forget(cl.ID) }

// OnSubscribed implements mochi.Hook.
func (h *sessionHook) OnSubscribed(cl *mochi.Client, pk packets.Packet, reasonCodes []byte) {
	if !persists(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= 0x80 {
			continue // refused
		}
		h.set("subscription", subKey(cl.ID, f.Filter), &storage.Subscription{
			T: storage.SubscriptionKey, ID: cl.ID + ":" + f.Filter, Client: cl.ID, Qos: reasonCodes[i], Filter: f.Filter,
			Identifier: f.Identifier, NoLocal: f.NoLocal, RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		})
	}
}

// OnUnsubscribed implements mochi.Hook.
func (h *sessionHook) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	if !persists(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.del("subscription", subKey(cl.ID, f.Filter))
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
// a client with a persistent session.
func (h *sessionHook) OnQosPublish(cl *mochi.Client, pk packets.Packet, sent int64, resends int) {
	if !persists(cl) {
		return
	}
	m := message(pk)
	m.Client, m.Sent = cl.ID, sent
	h.set("queued message", inflightKey(cl.ID, pk.PacketID), m)
}

// OnQosComplete implements mochi.Hook.
func (h *sessionHook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if persists(cl) {
		h.del("queued message", inflightKey(cl.ID, pk.PacketID))
	}
}

// OnQosDropped implements mochi.Hook.
func (h *sessionHook) OnQosDropped(cl *mochi.Client, pk packets.Packet) { h.OnQosComplete(cl, pk) }

// OnRetainMessage implements mochi.Hook. An empty payload clears the
// topic's retained message (r is then -1 if there was one, else 0).
func (h *sessionHook) OnRetainMessage(cl *mochi.Client, pk packets.Packet, r int64) {
	if r == -1 || len(pk.Payload) == 0 {
		h.del("retained message", retainedKey(pk.TopicName))
		return
	}
	m := message(pk)
	m.T, m.Client = storage.RetainedKey, cl.ID
	h.set("retained message", retainedKey(pk.TopicName), m)
}

// OnRetainedExpired implements mochi.Hook.
func (h *sessionHook) OnRetainedExpired(topic string) { h.del("retained message", retainedKey(topic)) }

// load reads the store once, when mochi asks for the first part of it.
// Undecodable items and items of a client that is not stored (left by a
// crash during a removal) are logged and removed.
func (h *sessionHook) load() (sessionSet, error) {
	h.once.Do(func() {
		var set sessionSet
		clients := map[string]bool{} // client digest -> stored
		var orphans [][]byte
		type item struct {
			key []byte
			v   []byte
		}
		var items []item
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		h.err = h.st.LoadSessions(ctx, func(k, v []byte) error {
			items = append(items, item{bytes.Clone(k), bytes.Clone(v)})
			if len(k) == 1+digestLen && k[0] == kindClient {
				clients[string(k[1:])] = true
			}
			return nil
		})
		if h.err != nil {
			h.err = fmt.Errorf("load broker sessions: %w", h.err)
			return
		}
		for _, it := range items {
			k := it.key
			var err error
			switch {
			case len(k) == 1+digestLen && k[0] == kindClient:
				var c storage.Client
				if err = c.UnmarshalBinary(it.v); err == nil {
					set.clients = append(set.clients, c)
				}
			case len(k) == 1+2*digestLen && k[0] == kindSub && clients[string(k[1:1+digestLen])]:
				var s storage.Subscription
				if err = s.UnmarshalBinary(it.v); err == nil {
					set.subs = append(set.subs, s)
				}
			case len(k) == 1+digestLen+2 && k[0] == kindInflight && clients[string(k[1:1+digestLen])]:
				var m storage.Message
				if err = m.UnmarshalBinary(it.v); err == nil {
					set.inflight = append(set.inflight, m)
				}
			case len(k) == 1+digestLen && k[0] == kindRetained:
				var m storage.Message
				if err = m.UnmarshalBinary(it.v); err == nil {
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
		h.known = clients
		h.mu.Unlock()
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

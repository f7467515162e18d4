// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
//
// moongate: the server's messages to the client (PUBLISH, then PUBREL) and
// the server's acknowledgements of the client's messages (PUBACK, PUBREC,
// PUBCOMP) are kept apart, because each side numbers its own packets: a
// client reusing the id of a message in flight to it must not replace,
// delete or refuse it (MQTT 3.1.1 section 2.3.1, MQTT 5 section 2.2.1). Get
// and Delete address the server's messages; GetInbound and DeleteInbound
// the acknowledgements; Set and DeletePacket tell them apart by packet type.
// Every entry keeps the place it was first set at, and GetAll returns them
// in that order (MQTT-4.6.0-1: resend in the order first sent).
type Inflight struct {
	sync.RWMutex
	internal            map[uint32]int32 // moongate: index in entries of the inflight packets, by inflightKey
	entries             []inflightEntry  // moongate: the packets; a deleted one's slot is zeroed and reused (free)
	free                []int32          // moongate: unused indexes in entries
	peak                int              // moongate: most entries in flight since the set was last empty
	next                uint64           // order of the next new entry
	receiveQuota        int32            // remaining inbound qos quota for flow control
	sendQuota           int32            // remaining outbound qos quota for flow control
	maximumReceiveQuota int32            // maximum allowed receive quota
	maximumSendQuota    int32            // maximum allowed send quota
	bytes               int64            // moongate: payload and topic bytes held (PacketBytes)
}

// inflightEntry is a packet in flight and its place in the order.
//
// moongate: the entries live in a slice whose slots are reused, and the map
// holds only their indexes. A map of the packets themselves (about 800
// bytes each) was reallocated as entries came and went, several times a
// second per busy client: about a tenth of the bytes the broker allocated
// under load.
type inflightEntry struct {
	pk    packets.Packet
	order uint64
}

// inflightKeepSlots is how many slots an Inflight always keeps once empty;
// above it, the slots are released when the last busy spell used less than
// a quarter of them (a client that had a large backlog does not hold its
// memory forever, and one that regularly has many messages in flight does
// not reallocate its slots each time it catches up). (moongate)
const inflightKeepSlots = 64

// inboundKey marks the keys of acknowledgements of the client's messages.
const inboundKey = 1 << 16

// isInbound reports whether pk acknowledges a message of the client.
func isInbound(pk packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		return true
	}
	return false
}

func inflightKey(pk packets.Packet) uint32 {
	if isInbound(pk) {
		return inboundKey | uint32(pk.PacketID)
	}
	return uint32(pk.PacketID)
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint32]int32{},
	}
}

// Set adds or updates an inflight packet by packet id. An update keeps the
// place of the packet it replaces.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	k := inflightKey(m)
	j, ok := i.internal[k]
	if !ok {
		if n := len(i.free); n > 0 {
			j, i.free = i.free[n-1], i.free[:n-1]
		} else {
			j = int32(len(i.entries))
			i.entries = append(i.entries, inflightEntry{})
		}
		i.internal[k] = j
		i.entries[j].order = i.next
		i.next++
		i.peak = max(i.peak, len(i.internal))
	}
	e := &i.entries[j]
	i.bytes += PacketBytes(m) - PacketBytes(e.pk) // moongate (zero for a new entry)
	e.pk = m
	return !ok
}

// PacketBytes is what a queued packet is counted for against
// Capabilities.MaximumClientQueuedBytes: its payload, topic and MQTT 5
// properties (user properties, content type, response topic, correlation
// data; 32 bytes more per user property for its structure). (moongate)
func PacketBytes(pk packets.Packet) int64 {
	return int64(len(pk.Payload)+len(pk.TopicName)) + PropertiesBytes(&pk.Properties)
}

// PropertiesBytes is the memory the variable-length MQTT 5 properties of a
// message hold. (moongate)
func PropertiesBytes(p *packets.Properties) int64 {
	n := len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData) + 32*len(p.User)
	for _, u := range p.User {
		n += len(u.Key) + len(u.Val)
	}
	return int64(n)
}

// Bytes returns the payload and topic bytes of the packets in flight.
// (moongate)
func (i *Inflight) Bytes() int64 {
	i.RLock()
	defer i.RUnlock()
	return i.bytes
}

// Get returns the server's inflight message with packet id id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	return i.get(uint32(id))
}

// GetInbound returns the server's inflight acknowledgement of the client's
// message with packet id id.
func (i *Inflight) GetInbound(id uint16) (packets.Packet, bool) {
	return i.get(inboundKey | uint32(id))
}

func (i *Inflight) get(k uint32) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if j, ok := i.internal[k]; ok {
		return i.entries[j].pk, true
	}

	return packets.Packet{}, false
}

// Order returns the place of the entry pk is (a message or an
// acknowledgement, by its type) in the order entries were first set, and
// whether it is in flight. (moongate: a hook storing in-flight messages
// stores this order, so that what it restores matches what mochi holds.)
func (i *Inflight) Order(pk packets.Packet) (uint64, bool) {
	i.RLock()
	defer i.RUnlock()
	j, ok := i.internal[inflightKey(pk)]
	if !ok {
		return 0, false
	}
	return i.entries[j].order, true
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, j := range i.internal {
		c.internal[k] = int32(len(c.entries))
		c.entries = append(c.entries, i.entries[j])
	}
	c.next = i.next
	c.bytes = i.bytes // moongate
	return c
}

// GetAll returns all the inflight messages, in the order they were first set.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	es := make([]inflightEntry, 0, len(i.internal))
	for _, j := range i.internal {
		if v := i.entries[j]; !immediate || (immediate && v.pk.Expiry < 0) {
			es = append(es, v)
		}
	}

	sort.Slice(es, func(i, j int) bool {
		return es[i].order < es[j].order
	})

	m := make([]packets.Packet, len(es))
	for j := range es {
		m[j] = es[j].pk
	}
	return m
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	// moongate: GetAll takes the read lock; taking it here too could
	// deadlock behind a waiting writer.
	m := i.GetAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// Delete removes the server's in-flight message with packet id id. Returns
// true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	return i.delete(uint32(id))
}

// DeleteInbound removes the server's in-flight acknowledgement of the
// client's message with packet id id. Returns true if it existed.
func (i *Inflight) DeleteInbound(id uint16) bool {
	return i.delete(inboundKey | uint32(id))
}

// DeletePacket removes the in-flight entry pk is (a message or an
// acknowledgement, by its type). Returns true if it existed.
func (i *Inflight) DeletePacket(pk packets.Packet) bool {
	return i.delete(inflightKey(pk))
}

func (i *Inflight) delete(k uint32) bool {
	i.Lock()
	defer i.Unlock()

	j, ok := i.internal[k]
	if !ok {
		return false
	}
	delete(i.internal, k)
	i.bytes -= PacketBytes(i.entries[j].pk) // moongate
	i.entries[j] = inflightEntry{}          // moongate: drop the packet's references
	i.free = append(i.free, j)
	if len(i.internal) == 0 {
		// moongate: every slot is free. Release them if the last busy spell
		// used less than a quarter (a large backlog has drained), else keep
		// them for the next one.
		if cap(i.entries) > inflightKeepSlots && i.peak < cap(i.entries)/4 {
			i.entries, i.free = nil, nil
		} else {
			i.entries, i.free = i.entries[:0], i.free[:0]
		}
		i.peak = 0
	}

	return true
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}

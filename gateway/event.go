package gateway

import (
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/moongate-edge/moongate/luavm"
)

// Events are kept in the inbox in a small binary form: a version byte, then
// length-prefixed fields. It is faster and smaller than JSON for binary
// payloads, and every field is bounds-checked when decoding.

// Event formats: V2 is V1 followed by the hop count (uvarint, at least 1)
// of a chained event; V3 is V2 followed by its chain budget (uvarint: the
// chained events it may still cause, see Options.MaxChainEvents). Events
// with no hops are still written as V1; chained events are written as V3
// (V2 is read: an event written before budgets has the whole budget).
const (
	eventFormatV1 = 1
	eventFormatV2 = 2
	eventFormatV3 = 3
)

// maxDecodedField bounds any one field of a stored event (a corrupted length
// must not allocate gigabytes).
const maxDecodedField = 64 << 20

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendMap(b []byte, m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m[k])
	}
	return b
}

// encodeEvent serialises ev for the inbox.
func encodeEvent(ev *luavm.Event) []byte { return encodeEventHops(ev, 0) }

// encodeEventHops serialises ev with its hop count (chained events).
func encodeEventHops(ev *luavm.Event, hops int) []byte {
	b := encodeEventV1(ev)
	if hops <= 0 {
		return b
	}
	b[0] = eventFormatV2
	return binary.AppendUvarint(b, uint64(hops))
}

// encodeChained serialises a chained event with its hop count (at least
// 1) and its chain budget.
func encodeChained(ev *luavm.Event, hops, budget int) []byte {
	b := encodeEventV1(ev)
	b[0] = eventFormatV3
	b = binary.AppendUvarint(b, uint64(hops))
	return binary.AppendUvarint(b, uint64(budget))
}

func encodeEventV1(ev *luavm.Event) []byte {
	size := 32 + len(ev.ID) + len(ev.Topic) + len(ev.Payload) + len(ev.Trigger)
	for k, v := range ev.Captures {
		size += len(k) + len(v) + 4
	}
	b := make([]byte, 0, size)
	b = append(b, eventFormatV1)
	b = appendString(b, ev.ID)
	b = appendString(b, ev.Topic)
	b = appendBytes(b, ev.Payload)
	b = appendString(b, ev.Trigger)
	b = binary.AppendVarint(b, ev.TS)
	b = append(b, ev.QoS)
	b = appendMap(b, ev.Captures)
	if ev.HTTP == nil {
		return append(b, 0)
	}
	h := ev.HTTP
	b = append(b, 1)
	b = appendString(b, h.Method)
	b = appendString(b, h.Path)
	b = appendMap(b, h.Headers)
	qkeys := make([]string, 0, len(h.Query))
	for k := range h.Query {
		qkeys = append(qkeys, k)
	}
	sort.Strings(qkeys)
	b = binary.AppendUvarint(b, uint64(len(qkeys)))
	for _, k := range qkeys {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(h.Query[k])))
		for _, v := range h.Query[k] {
			b = appendString(b, v)
		}
	}
	return appendBytes(b, h.Body)
}

type eventReader struct {
	b   []byte
	err error
}

func (r *eventReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated or corrupt %s", ErrBadEvent, what)
	}
}

func (r *eventReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *eventReader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *eventReader) bytes(what string) []byte {
	n := r.uvarint(what)
	if r.err != nil {
		return nil
	}
	if n > maxDecodedField || n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *eventReader) str(what string) string { return string(r.bytes(what)) }

func (r *eventReader) byte1(what string) byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *eventReader) count(what string) int {
	n := r.uvarint(what)
	// Every element takes at least one byte: a count above what is left is corrupt.
	if r.err == nil && n > uint64(len(r.b)) {
		r.fail(what)
		return 0
	}
	return int(n)
}

func (r *eventReader) strmap(what string) map[string]string {
	n := r.count(what)
	if n == 0 || r.err != nil {
		return nil
	}
	m := make(map[string]string, n)
	for i := 0; i < n && r.err == nil; i++ {
		k := r.str(what)
		m[k] = r.str(what)
	}
	return m
}

// decodeEvent parses what encodeEvent wrote. The payload and body alias b.
func decodeEvent(b []byte) (*luavm.Event, error) {
	ev, _, err := decodeEventHops(b)
	return ev, err
}

// decodeEventHops parses what encodeEventHops or encodeChained wrote,
// without the chain budget.
func decodeEventHops(b []byte) (*luavm.Event, int, error) {
	ev, hops, _, err := decodeEventChain(b)
	return ev, hops, err
}

// decodeEventChain parses any event format: the event, its hop count and
// its chain budget (-1 when it carries none: an origin, or a chained event
// written before budgets).
func decodeEventChain(b []byte) (*luavm.Event, int, int, error) {
	if len(b) == 0 || b[0] < eventFormatV1 || b[0] > eventFormatV3 {
		return nil, 0, 0, fmt.Errorf("%w: unknown format", ErrBadEvent)
	}
	r := &eventReader{b: b[1:]}
	ev := &luavm.Event{}
	ev.ID = r.str("id")
	ev.Topic = r.str("topic")
	ev.Payload = r.bytes("payload")
	ev.Trigger = r.str("trigger")
	ev.TS = r.varint("ts")
	ev.QoS = r.byte1("qos")
	ev.Captures = r.strmap("captures")
	switch r.byte1("http flag") {
	case 0:
	case 1:
		h := &luavm.HTTPRequest{}
		h.Method = r.str("method")
		h.Path = r.str("path")
		h.Headers = r.strmap("headers")
		if n := r.count("query"); n > 0 {
			h.Query = make(map[string][]string, n)
			for i := 0; i < n && r.err == nil; i++ {
				k := r.str("query key")
				m := r.count("query values")
				vs := make([]string, 0, m)
				for j := 0; j < m && r.err == nil; j++ {
					vs = append(vs, r.str("query value"))
				}
				h.Query[k] = vs
			}
		}
		h.Body = r.bytes("body")
		ev.HTTP = h
	default:
		r.fail("http flag")
	}
	hops, budget := 0, -1
	if b[0] >= eventFormatV2 {
		h := r.uvarint("hops")
		// maxHops+1: the event one hop past the largest MaxHops must decode,
		// to be dead-lettered as over the limit (ErrHopLimit), not as bad.
		if r.err == nil && (h == 0 || h > maxHops+1) {
			r.fail("hops")
		}
		hops = int(h)
	}
	if b[0] == eventFormatV3 {
		n := r.uvarint("chain budget")
		if r.err == nil && n > maxChainEvents {
			r.fail("chain budget")
		}
		budget = int(n)
	}
	if r.err != nil {
		return nil, 0, 0, r.err
	}
	if len(r.b) != 0 {
		return nil, 0, 0, fmt.Errorf("%w: %d trailing bytes", ErrBadEvent, len(r.b))
	}
	return ev, hops, budget, nil
}

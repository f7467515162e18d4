package mqtt

import (
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ackOrder releases QoS 1 acknowledgements to the broker in the order the
// messages arrived, whatever order their handlers finish in. MQTT asks a
// receiver to send PUBACKs in order (MQTT 3.1.1 section 4.6), and brokers
// rely on it: mosquitto reorders its later deliveries when acknowledgements
// come back out of order, which would break per-device order. Handlers
// still run in parallel across topics; only the acks wait for each other.
//
// A message that is not accepted holds back every later ack of its
// connection until the connection ends (the client then reconnects and the
// broker redelivers them all, in order). Slots belong to a connection
// generation: a new generation forgets the old slots.
type ackOrder struct {
	mu   sync.Mutex
	gen  uint64
	head []*ackSlot // arrival order, not yet released
}

// ackSlot is one message awaiting its acknowledgement.
type ackSlot struct {
	msg  paho.Message
	gen  uint64
	done bool
	ok   bool
}

// add registers an arrival of generation gen.
func (a *ackOrder) add(msg paho.Message, gen uint64) *ackSlot {
	a.mu.Lock()
	defer a.mu.Unlock()
	if gen != a.gen {
		clear(a.head)
		a.head = a.head[:0]
		a.gen = gen
	}
	s := &ackSlot{msg: msg, gen: gen}
	a.head = append(a.head, s)
	return s
}

// finish records the outcome of s and sends every acknowledgement that is
// now due, in arrival order.
func (a *ackOrder) finish(s *ackSlot, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s.gen != a.gen {
		return // its connection is gone; the broker redelivers it
	}
	s.done, s.ok = true, ok
	n := 0
	for n < len(a.head) && a.head[n].done && a.head[n].ok {
		a.head[n].msg.Ack()
		a.head[n] = nil
		n++
	}
	a.head = a.head[n:]
}

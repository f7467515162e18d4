package mqtt

import (
	"sync"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// fakeMsg records its acknowledgement; it stands in for a paho delivery
// because the order of Ack calls is what is under test.
type fakeMsg struct {
	paho.Message
	id   uint16
	acks *[]uint16
	mu   *sync.Mutex
}

func (m *fakeMsg) Ack() {
	m.mu.Lock()
	*m.acks = append(*m.acks, m.id)
	m.mu.Unlock()
}

func TestAckOrderReleasesInArrivalOrder(t *testing.T) {
	var a ackOrder
	var acks []uint16
	var mu sync.Mutex
	msg := func(id uint16) *fakeMsg { return &fakeMsg{id: id, acks: &acks, mu: &mu} }
	s1, s2, s3 := a.add(msg(1), 0), a.add(msg(2), 0), a.add(msg(3), 0)
	a.finish(s3, true)
	a.finish(s2, true)
	if len(acks) != 0 {
		t.Fatalf("acked before the first finished: %v", acks)
	}
	a.finish(s1, true)
	if len(acks) != 3 || acks[0] != 1 || acks[1] != 2 || acks[2] != 3 {
		t.Fatalf("acks %v, want [1 2 3]", acks)
	}

	// A refused message holds back later acks of its connection.
	s4, s5 := a.add(msg(4), 0), a.add(msg(5), 0)
	a.finish(s5, true)
	a.finish(s4, false)
	if len(acks) != 3 {
		t.Fatalf("acked past a refused message: %v", acks)
	}
	// A new connection generation forgets the old slots.
	s6 := a.add(msg(6), 1)
	a.finish(s4, true) // stale: ignored
	a.finish(s6, true)
	if len(acks) != 4 || acks[3] != 6 {
		t.Fatalf("acks %v, want [1 2 3 6]", acks)
	}
}

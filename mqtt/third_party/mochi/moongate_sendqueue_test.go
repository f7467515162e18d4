// SPDX-License-Identifier: MIT

package mqtt

// Tests of moongate's send queue (README.moongate.md, section 11). They
// run with mochi's own suite: upstream-tests/run.sh (make test-mochi).

import (
	"sync"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// pop takes the next packet the way the write loop does, or nil when none
// waits.
func (q *sendQueue) pop() *packets.Packet {
	select {
	case i := <-q.channel():
		return q.take(i)
	default:
		return nil
	}
}

func TestMoongateSendQueueOrderAndBound(t *testing.T) {
	q := newSendQueue(3)
	pks := make([]*packets.Packet, 5)
	for i := range pks {
		pks[i] = &packets.Packet{PacketID: uint16(i + 1)}
	}
	for i, pk := range pks {
		if ok := q.push(pk); ok != (i < 3) {
			t.Fatalf("push %d = %v with %d waiting (max 3)", i, ok, q.len())
		}
	}
	if pk := q.pop(); pk != pks[0] {
		t.Fatalf("pop = %v, want the first", pk)
	}
	if !q.push(pks[3]) || q.push(pks[4]) {
		t.Fatal("a popped packet's room was not given back exactly once")
	}
	for _, want := range []*packets.Packet{pks[1], pks[2], pks[3]} {
		if pk := q.pop(); pk != want {
			t.Fatalf("pop = %v, want packet %d", pk, want.PacketID)
		}
	}
	if pk := q.pop(); pk != nil || q.len() != 0 {
		t.Fatal("pop from an empty queue")
	}
	q.push(pks[0])
	ch := q.channel()
	q.release()
	if i := <-ch; q.take(i) != nil {
		t.Fatal("a released queue gave a packet")
	}
	if q.push(pks[1]) || q.len() != 0 || q.channel() != nil {
		t.Fatal("a released queue took a packet or kept its channel")
	}
}

// A drained queue gives back the slots a backlog made it grow, and a
// steady backlog does not grow them beyond what waits.
func TestMoongateSendQueueMemory(t *testing.T) {
	q := newSendQueue(100000)
	pk := &packets.Packet{}
	for i := 0; i < 10000; i++ {
		q.push(pk)
	}
	for i := 0; i < 10000; i++ {
		q.pop()
	}
	if cap(q.slots) != 0 {
		t.Fatalf("a drained queue keeps %d slots", cap(q.slots))
	}
	for i := 0; i < 2000; i++ { // a steady backlog of 2000: push one, pop one
		q.push(pk)
	}
	for i := 0; i < 100000; i++ {
		q.push(pk)
		q.pop()
	}
	if c := cap(q.slots); c > 4096 {
		t.Fatalf("a steady backlog of 2,000 grew the slots to %d", c)
	}
}

// Concurrent publishers and one writer: every packet comes out once, in
// each publisher's order (run with -race).
func TestMoongateSendQueueConcurrent(t *testing.T) {
	const writers, each = 8, 5000
	q := newSendQueue(writers * each)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		w := w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if !q.push(&packets.Packet{PacketID: uint16(w), Created: int64(i)}) {
					t.Error("push refused below the bound")
					return
				}
			}
		}()
	}
	next := make([]int64, writers)
	ch := q.channel()
	for got := 0; got < writers*each; got++ {
		pk := q.take(<-ch)
		if pk == nil {
			t.Fatal("a pushed packet is missing")
		}
		if pk.Created != next[pk.PacketID] {
			t.Fatalf("publisher %d: packet %d after %d", pk.PacketID, pk.Created, next[pk.PacketID]-1)
		}
		next[pk.PacketID]++
	}
	wg.Wait()
}

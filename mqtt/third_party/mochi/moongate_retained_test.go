// SPDX-License-Identifier: MIT

package mqtt

import (
	"sync"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Retained messages set and cleared while subscribers' retained replays scan
// the index: run with -race (make test-mochi), which reported the bare read
// of retainPath in scanMessages before moongate's change.
func TestRetainedScanConcurrentWithRetain(t *testing.T) {
	x := NewTopicsIndex()
	topics := []string{"r/1", "r/2", "r/3", "r/a/b"}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			tp := topics[i%len(topics)]
			payload := []byte("v")
			if i%3 == 0 {
				payload = nil // clears it
			}
			x.RetainMessage(packets.Packet{TopicName: tp, Payload: payload, FixedHeader: packets.FixedHeader{Retain: true}})
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			for _, pk := range x.Messages("r/#") {
				if len(pk.Payload) == 0 {
					t.Errorf("retained replay of %s with an empty payload", pk.TopicName)
					return
				}
			}
			x.Messages("r/+")
			x.Messages("r/2")
		}
	}()
	wg.Wait()
}

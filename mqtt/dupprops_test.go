package mqtt

import (
	"strings"
	"testing"
)

// A queued copy of a message keeps the received packet alive through its
// topic (a string decoded without a copy), so what it holds is the whole
// packet; the queued-bytes bound counts only the properties' decoded
// values. A property repeated in one PUBLISH (a protocol error in MQTT 5,
// accepted by the decoder, which keeps the last) is not counted at all:
// 15 content types of 60,000 bytes followed by a 1-byte one count 1 byte.
// 100 such one-byte messages for one offline subscriber must not hold ~90
// MiB under max_queued_bytes_per_client 1 MiB (the same bound as
// TestQueuedUserPropertiesBounded).
func TestQueuedDuplicatePropertiesBounded(t *testing.T) {
	var props []byte
	big := strings.Repeat("c", 60000)
	for range 15 {
		props = append(props, 0x03) // content type
		props = append(props, rawString(big)...)
	}
	props = append(props, 0x03)
	props = append(props, rawString("a")...) // the one decoded and counted
	checkQueuedPropsBounded(t, props)
}

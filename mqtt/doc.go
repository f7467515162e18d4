// Package mqtt brings MQTT events into moongate and publishes messages back
// out, either through an embedded broker (github.com/mochi-mqtt/server/v2) or
// through an external broker such as Mosquitto (github.com/eclipse/paho.mqtt.golang).
// Both modes implement [Ingest], so the rest of the gateway does not know which
// one is in use.
//
// # Delivery contract
//
// Every inbound publish whose topic matches one of the filters given to
// [Ingest.SetFilters] is passed to the [Handler]. The message is acknowledged
// to its sender (PUBACK for QoS 1, PUBREC for QoS 2) only after the Handler
// returned nil, so "acknowledged" means "durable" when the Handler returns nil
// only once the message is durable. A Handler error means "not accepted":
//
//   - Embedded mode: the publishing client is disconnected without an
//     acknowledgement (MQTT v5 clients first receive DISCONNECT with reason code
//     0x80, or 0x8B while the broker shuts down). A client with a persistent
//     session (clean session off / session expiry > 0) resends the unacknowledged
//     publish after it reconnects; that is the standard MQTT retry path for
//     both protocol versions. QoS 0 publishes cannot be retried and are dropped.
//   - External mode: the message is not acknowledged. Intake stops taking new
//     messages, the in-flight handlers finish, then the client reconnects with
//     its persistent session and the broker redelivers every unacknowledged
//     message.
//
// A Handler error wrapping [ErrReject] refuses a message for good instead:
// it is acknowledged and dropped (MQTT v5 clients get a PUBACK/PUBREC with
// reason code 0x83), so it is never redelivered.
//
// Delivery is at least once: after a reconnect a message whose acknowledgement
// was lost is delivered again, so the consumer must de-duplicate.
//
// # Flow control
//
// A Handler may block. In embedded mode each client connection is read by one
// goroutine that calls the Handler synchronously, so a blocking Handler stops
// reading from that connection and TCP flow control stalls the device; memory
// does not grow. In external mode unacknowledged messages count against the
// broker's in-flight window (Mosquitto: max_inflight_messages), so the broker
// stops sending and queues on its side.
//
// # Topic rules
//
// Package [github.com/moongate-edge/moongate/mqtt/topics] implements the
// MQTT 3.1.1/5.0 topic and filter rules this package applies, including the
// rule that filters starting with a wildcard do not match topics starting
// with '$'. [ErrInvalidTopic] and [ErrInvalidFilter] are its sentinels.
package mqtt

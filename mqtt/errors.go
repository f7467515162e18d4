package mqtt

import (
	"errors"
	"fmt"

	"github.com/moongate-edge/moongate/mqtt/topics"
)

// Sentinel errors. Errors returned by this package wrap one of these, so
// callers can branch with errors.Is.
var (
	// ErrInvalidTopic reports a topic name that breaks the MQTT rules
	// (empty, too long, invalid UTF-8, NUL, or a wildcard character). It is
	// topics.ErrInvalidTopic: errors.Is matches either.
	ErrInvalidTopic = topics.ErrInvalidTopic
	// ErrInvalidFilter reports a topic filter that breaks the MQTT rules. It
	// is topics.ErrInvalidFilter.
	ErrInvalidFilter = topics.ErrInvalidFilter
	// ErrConfig reports an invalid configuration.
	ErrConfig = errors.New("mqtt: invalid configuration")
	// ErrInsecureListener reports a non-loopback embedded listener without
	// users; it wraps ErrConfig.
	ErrInsecureListener = fmt.Errorf("%w: a non-loopback listener requires users (device authentication)", ErrConfig)
	// ErrNotStarted is returned by calls that need Start to have succeeded.
	ErrNotStarted = errors.New("mqtt: not started")
	// ErrAlreadyStarted is returned by a second call to Start.
	ErrAlreadyStarted = errors.New("mqtt: already started")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("mqtt: closed")
	// ErrNotConnected is returned by External.Publish while the client is
	// not connected to the broker.
	ErrNotConnected = errors.New("mqtt: not connected to broker")
	// ErrUnconfirmed is returned by External.Publish and PublishAll for a
	// QoS 1 or 2 message whose connection was lost before the broker's
	// acknowledgement was seen: paho completes such a message's token when
	// it resends the message on the next connection, without waiting for
	// that acknowledgement (paho#563), so the message may not have reached
	// the broker yet. Whoever keeps it in a durable outbox keeps it there
	// and publishes it again (at least once).
	ErrUnconfirmed = errors.New("mqtt: connection lost before the broker confirmed the message")
	// ErrInvalidQoS reports a QoS other than 0, 1 or 2.
	ErrInvalidQoS = errors.New("mqtt: invalid QoS")
	// ErrPublishTooLarge is returned by External.Publish and PublishAll for
	// a message over ExternalConfig.MaxPacketSize: the broker would
	// refuse it (MQTT 3.1.1 has no per-message refusal: it closes the
	// connection), so it fails the same way every time.
	ErrPublishTooLarge = errors.New("mqtt: publish payload over the broker's limit")
	// ErrSubscribe reports a subscription the broker refused.
	ErrSubscribe = errors.New("mqtt: subscription refused by broker")
	// ErrReject may be wrapped by a Handler's error to refuse a message for
	// good: the message is acknowledged and dropped instead of redelivered
	// (counted in Stats.RejectedHandler).
	ErrReject = errors.New("mqtt: message rejected by handler")
)

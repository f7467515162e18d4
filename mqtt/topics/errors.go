package topics

import "errors"

// Errors returned by the validation functions; the returned error wraps one
// and says what is wrong.
var (
	// ErrInvalidTopic reports a topic name that breaks the MQTT rules
	// (ValidName).
	ErrInvalidTopic = errors.New("mqtt: invalid topic")
	// ErrInvalidFilter reports a topic filter that breaks the MQTT rules
	// (ValidFilter).
	ErrInvalidFilter = errors.New("mqtt: invalid topic filter")
)

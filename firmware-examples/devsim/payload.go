package devsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Payload is the telemetry a simulated device publishes, in the fields of
// the device contract (firmware-examples/README.md). Seq and TS are what a
// consumer uses to check completeness and latency.
type Payload struct {
	// Seq is the device's message number: 1, 2, ... for each device and run.
	// A message resent after a reconnect keeps its number.
	Seq uint64 `json:"seq"`
	// TS is the first send time, milliseconds since the Unix epoch.
	TS int64 `json:"ts"`
	// Temp is the temperature in degrees Celsius, Hum the relative humidity
	// in percent.
	Temp float64 `json:"temp"`
	Hum  float64 `json:"hum"`
	// Pad fills the payload up to Config.PayloadBytes.
	Pad string `json:"pad,omitempty"`
}

// maxSeq is the largest Seq a Payload may carry: JSON numbers above 2^53
// lose precision in consumers that use floating point (Lua, JavaScript).
const maxSeq = 1 << 53

// appendPayload encodes p the way devices do: fixed field order, two decimals.
func appendPayload(b []byte, p *Payload) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, p.Seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, p.TS, 10)
	b = append(b, `,"temp":`...)
	b = strconv.AppendFloat(b, p.Temp, 'f', 2, 64)
	b = append(b, `,"hum":`...)
	b = strconv.AppendFloat(b, p.Hum, 'f', 2, 64)
	if p.Pad != "" {
		b = append(b, `,"pad":"`...)
		b = append(b, p.Pad...) // only 'x': no escaping needed
		b = append(b, '"')
	}
	return append(b, '}')
}

// ParsePayload decodes and checks a telemetry payload: a JSON object with an
// integer seq in 1..2^53, an integer ts >= 0 and numbers temp and hum (other
// fields are allowed and ignored). Errors wrap ErrPayload and say what is
// wrong.
func ParsePayload(data []byte) (Payload, error) {
	var raw struct {
		Seq  json.RawMessage `json:"seq"`
		TS   json.RawMessage `json:"ts"`
		Temp *float64        `json:"temp"`
		Hum  *float64        `json:"hum"`
		Pad  string          `json:"pad"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return Payload{}, fmt.Errorf("%w: %w", ErrPayload, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Payload{}, fmt.Errorf("%w: data after the JSON object", ErrPayload)
	}
	var p Payload
	switch {
	case len(raw.Seq) == 0:
		return p, fmt.Errorf("%w: missing seq", ErrPayload)
	case len(raw.TS) == 0:
		return p, fmt.Errorf("%w: missing ts", ErrPayload)
	case raw.Temp == nil || raw.Hum == nil:
		return p, fmt.Errorf("%w: missing temp or hum", ErrPayload)
	}
	// Integers as JSON numbers only: strconv refuses quotes, fractions,
	// exponents and signs where they do not belong.
	seq, err := strconv.ParseUint(string(raw.Seq), 10, 64)
	if err != nil || seq == 0 || seq > maxSeq {
		return p, fmt.Errorf("%w: seq %s: want an integer in 1..2^53", ErrPayload, clip(string(raw.Seq)))
	}
	ts, err := strconv.ParseInt(string(raw.TS), 10, 64)
	if err != nil || ts < 0 {
		return p, fmt.Errorf("%w: ts %s: want milliseconds since the epoch", ErrPayload, clip(string(raw.TS)))
	}
	if math.IsNaN(*raw.Temp) || math.IsNaN(*raw.Hum) {
		return p, fmt.Errorf("%w: temp or hum is not a number", ErrPayload)
	}
	return Payload{Seq: seq, TS: ts, Temp: *raw.Temp, Hum: *raw.Hum, Pad: raw.Pad}, nil
}

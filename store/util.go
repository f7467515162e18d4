package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

func formatSeq(seq uint64) string { return strconv.FormatUint(seq, 10) }

// parseJSONNumber parses a stored state value as a JSON number.
func parseJSONNumber(b []byte) (float64, error) {
	b = bytes.TrimSpace(b)
	// The values increments store are plain numbers: parse them without
	// encoding/json's validation and reflection (a fifth of a counter
	// increment's cost on the committer). Anything else (a quoted number,
	// which encoding/json also accepts, or not a number) takes the path
	// below, so the results are the same (FuzzParseJSONNumber).
	if isJSONNumber(b) {
		if f, err := strconv.ParseFloat(string(b), 64); err == nil {
			return f, nil
		}
	}
	return parseJSONNumberSlow(b)
}

func parseJSONNumberSlow(b []byte) (float64, error) {
	if !json.Valid(b) {
		return 0, fmt.Errorf("not JSON: %q", truncate(b, 32))
	}
	// Decoded into an interface, not into a json.Number: Unmarshal into a
	// json.Number also takes a string holding a number ("12"), and a JSON
	// string is no JSON number.
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return 0, fmt.Errorf("not JSON: %q", truncate(b, 32))
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("not a number: %q", truncate(b, 32))
	}
	return n.Float64()
}

// isJSONNumber reports whether b is a number in JSON's grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		digits()
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// formatJSONNumber writes f as the functions' JSON encoder does: an
// integer below 2^53 in magnitude without a fraction (a counter at
// 20971520 is not 2.097152e+07), otherwise the shortest representation.
func formatJSONNumber(f float64) []byte {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return strconv.AppendInt(nil, int64(f), 10)
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64)
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

func formatSeq(seq uint64) string { return strconv.FormatUint(seq, 10) }

// parseJSONNumber parses a stored state value as a JSON number.
func parseJSONNumber(b []byte) (float64, error) {
	b = bytes.TrimSpace(b)
	if !json.Valid(b) {
		return 0, fmt.Errorf("not JSON: %q", truncate(b, 32))
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return 0, fmt.Errorf("not a number: %q", truncate(b, 32))
	}
	return n.Float64()
}

func formatJSONNumber(f float64) []byte {
	return strconv.AppendFloat(nil, f, 'g', -1, 64)
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

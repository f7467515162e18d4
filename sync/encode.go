package sync

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/moongate-edge/moongate/store"
)

// AppendRecord appends the JSON object that represents r upstream (one
// NDJSON line for http, one message payload for mqtt and nats), without a
// trailing newline:
//
//	{"id":"gw-42","seq":42,"gateway":"gw","stream":"temps","function":"f",
//	 "device":"d1","event_id":"e1","event_ts":1700000000000,
//	 "processed_ts":1700000000005,"clock_synced":true,"data":{...}}
//
// id is stable (gateway id + "-" + record sequence): upstream consumers
// de-duplicate on it and order by seq. data is the record's JSON as
// stored; a value that is not valid JSON is sent as a JSON string.
func AppendRecord(dst []byte, gateway string, r *store.Record) []byte {
	dst = appendRecordMeta(dst, gateway, r)
	if len(r.Data) > 0 && json.Valid(r.Data) {
		dst = appendCompact(dst, r.Data)
	} else {
		dst = appendString(dst, string(r.Data))
	}
	return append(dst, '}')
}

// appendRecordHead appends the object of AppendRecord with the data cut to
// its first head bytes (at a UTF-8 boundary), always as a JSON string, and
// two more fields: "data_truncated":true and "data_size", the size of the
// whole data. At most 6 x head bytes of data (JSON escaping) plus the
// metadata: the dead letter of a refused record too large for one.
func appendRecordHead(dst []byte, gateway string, r *store.Record, head int) []byte {
	n := headLen(r.Data, head)
	dst = appendRecordMeta(dst, gateway, r)
	dst = appendString(dst, string(r.Data[:n]))
	dst = append(dst, `,"data_truncated":true,"data_size":`...)
	dst = strconv.AppendInt(dst, int64(len(r.Data)), 10)
	return append(dst, '}')
}

// headLen is the length of the head of at most head bytes of data that
// appendRecordHead keeps: cut before a rune that would not fit whole.
func headLen(data []byte, head int) int {
	n := min(max(head, 0), len(data))
	for n > 0 && n < len(data) && !utf8.RuneStart(data[n]) {
		n--
	}
	return n
}

// appendRecordMeta appends the object of AppendRecord up to its data:
// everything but the value of "data" and the closing brace.
func appendRecordMeta(dst []byte, gateway string, r *store.Record) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, r.ID)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, r.Seq, 10)
	dst = append(dst, `,"gateway":`...)
	dst = appendString(dst, gateway)
	dst = append(dst, `,"stream":`...)
	dst = appendString(dst, r.Stream)
	dst = append(dst, `,"function":`...)
	dst = appendString(dst, r.Function)
	dst = append(dst, `,"device":`...)
	dst = appendString(dst, r.Device)
	dst = append(dst, `,"event_id":`...)
	dst = appendString(dst, r.EventID)
	dst = append(dst, `,"event_ts":`...)
	dst = strconv.AppendInt(dst, r.EventTS, 10)
	dst = append(dst, `,"processed_ts":`...)
	dst = strconv.AppendInt(dst, r.ProcessedTS, 10)
	dst = append(dst, `,"clock_synced":`...)
	dst = strconv.AppendBool(dst, r.ClockSynced)
	return append(dst, `,"data":`...)
}

// appendCompact appends valid JSON without insignificant whitespace, so
// that a line never contains a newline.
func appendCompact(dst, data []byte) []byte {
	inStr, esc := false, false
	for _, c := range data {
		if inStr {
			dst = append(dst, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			inStr = true
		}
		dst = append(dst, c)
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaping like encoding/json
// (control characters, quote, backslash, <, >, &, U+2028/9) and replacing
// invalid UTF-8 with U+FFFD.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

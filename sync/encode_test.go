package sync

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/moongate-edge/moongate/store"
)

// FuzzAppendRecord: every record encodes to one line of valid JSON that
// decodes to the record's fields (strings as encoding/json would write
// them) and its data (compacted JSON, or the bytes as a string).
func FuzzAppendRecord(f *testing.F) {
	f.Add("gw-1", "temps", "d1", []byte(`{"a": [1, 2, {"b": "x y"}]}`))
	f.Add("gw-\n", "s\u2028", "<&>", []byte("not json\n\"\\"))
	f.Add("\xff\xfe", "\x00", "", []byte(` "str\ning" `))
	f.Add("", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, id, stream, device string, data []byte) {
		r := &store.Record{ID: id, Seq: 42, Stream: stream, Device: device, Function: "f", EventTS: -1, ProcessedTS: 1 << 62, ClockSynced: true, Data: data}
		line := AppendRecord(nil, "gw", r)
		if bytes.ContainsAny(line, "\n\r") {
			t.Fatalf("line contains a newline: %q", line)
		}
		var got struct {
			ID, Stream, Device, Function string
			Seq                          uint64
			EventTS                      int64 `json:"event_ts"`
			ProcessedTS                  int64 `json:"processed_ts"`
			ClockSynced                  bool  `json:"clock_synced"`
			Data                         json.RawMessage
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("invalid JSON %q: %v", line, err)
		}
		want := func(s string) string {
			var out string
			b, _ := json.Marshal(s)
			_ = json.Unmarshal(b, &out)
			return out
		}
		if got.ID != want(id) || got.Stream != want(stream) || got.Device != want(device) || got.Seq != 42 ||
			got.EventTS != -1 || got.ProcessedTS != 1<<62 || !got.ClockSynced {
			t.Fatalf("decoded %+v from %q", got, line)
		}
		if len(data) > 0 && json.Valid(data) {
			var c bytes.Buffer
			_ = json.Compact(&c, data)
			if !bytes.Equal(got.Data, c.Bytes()) {
				t.Fatalf("data %s, want %s", got.Data, c.Bytes())
			}
		} else {
			var s string
			if err := json.Unmarshal(got.Data, &s); err != nil || (utf8.Valid(data) && s != string(data)) {
				t.Fatalf("data %s for %q: %v", got.Data, data, err)
			}
		}
		// The escaping matches encoding/json's.
		std, _ := json.Marshal(stream)
		if !bytes.Contains(line, append([]byte(`"stream":`), std...)) {
			t.Fatalf("stream escaped differently from encoding/json: %q vs %s", line, std)
		}
	})
}

package luavm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestProtoDuration: the report's wall time is written as protobuf's JSON
// writes a Duration (the API's cost), not with the fewest digits ("1.5s").
func TestProtoDuration(t *testing.T) {
	for _, d := range []time.Duration{0, 1500 * time.Millisecond, 78927 * time.Nanosecond, time.Second, 2*time.Second + 10*time.Microsecond, 123456789 * time.Nanosecond, -1500 * time.Millisecond} {
		b, err := protojson.Marshal(durationpb.New(d))
		if err != nil {
			t.Fatal(err)
		}
		if want := string(b[1 : len(b)-1]); protoDuration(d) != want {
			t.Errorf("%v: %q, want %q", d, protoDuration(d), want)
		}
	}
}

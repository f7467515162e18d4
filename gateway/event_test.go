package gateway

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/moongate-edge/moongate/luavm"
)

func sampleEvents() []*luavm.Event {
	return []*luavm.Event{
		{ID: "e1", Topic: "devices/d1/telemetry", Payload: []byte(`{"temp":21.5}`), Trigger: "mqtt", TS: 1764160000000, QoS: 1,
			Captures: map[string]string{"device": "d1"}},
		{ID: "e2", Trigger: "timer", TS: -5},
		{ID: "e3", Trigger: "http", Payload: []byte{0, 1, 2, 0xff}, HTTP: &luavm.HTTPRequest{
			Method: "POST", Path: "/fn/x/y", Headers: map[string]string{"Content-Type": "application/json"},
			Query: map[string][]string{"a": {"1", "2"}, "b": {}}, Body: []byte("hello"),
		}},
	}
}

func TestEventRoundTrip(t *testing.T) {
	for _, ev := range sampleEvents() {
		got, err := decodeEvent(encodeEvent(ev))
		if err != nil {
			t.Fatalf("decode %s: %v", ev.ID, err)
		}
		if !reflect.DeepEqual(normalise(got), normalise(ev)) {
			t.Errorf("round trip of %s:\n got %#v\nwant %#v", ev.ID, got, ev)
		}
	}
}

// normalise maps empty and nil containers alike for comparison.
func normalise(ev *luavm.Event) luavm.Event {
	c := *ev
	if len(c.Captures) == 0 {
		c.Captures = nil
	}
	if len(c.Payload) == 0 {
		c.Payload = nil
	}
	if c.HTTP != nil {
		h := *c.HTTP
		for k, v := range h.Query {
			if len(v) == 0 {
				h.Query[k] = []string{}
			}
		}
		c.HTTP = &h
	}
	return c
}

func TestDecodeEventRejectsCorruptInput(t *testing.T) {
	good := encodeEvent(sampleEvents()[0])
	cases := map[string][]byte{
		"empty":          nil,
		"unknown format": append([]byte{9}, good[1:]...),
		"trailing bytes": append(append([]byte{}, good...), 0),
		"huge length":    {eventFormatV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"bad http flag":  append(append([]byte{}, good[:len(good)-1]...), 7),
	}
	for i := 1; i < len(good); i++ {
		cases["truncated"+string(rune('A'+i%26))+string(rune('0'+i/26))] = good[:i]
	}
	for name, b := range cases {
		if _, err := decodeEvent(b); !errors.Is(err, ErrBadEvent) {
			t.Errorf("%s: got %v, want ErrBadEvent", name, err)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	for _, ev := range sampleEvents() {
		f.Add(encodeEvent(ev))
	}
	f.Add([]byte{eventFormatV1})
	f.Add(encodeChained(sampleEvents()[0], 2, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ev, hops, budget, err := decodeEventChain(b); err == nil && b[0] == eventFormatV3 {
			// A chained event re-encodes to the same hop count and budget.
			if _, h, bu, err := decodeEventChain(encodeChained(ev, hops, budget)); err != nil || h != hops || bu != budget {
				t.Fatalf("chained re-decode: %d %d %v", h, bu, err)
			}
		}
		ev, err := decodeEvent(b)
		if err != nil {
			if !errors.Is(err, ErrBadEvent) {
				t.Fatalf("error not ErrBadEvent: %v", err)
			}
			return
		}
		// Whatever decodes must re-encode to a form that decodes to the same event.
		again, err := decodeEvent(encodeEvent(ev))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !bytes.Equal(encodeEvent(again), encodeEvent(ev)) {
			t.Fatalf("unstable encoding")
		}
	})
}

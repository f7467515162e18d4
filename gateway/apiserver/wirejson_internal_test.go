package apiserver

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// wireCorpus adds to jsonCorpus escapes in names and values and white
// space: the seeds of FuzzWireJSON.
var wireCorpus = append([]string{
	`{"a\"b":"\u00e9\ud83d\ude00\n","":[],"x":{"y":[null,true,false,-0,1e-400,12345678901234567890]}}`,
	` [ { } , [ ] , { "a" : { } } ] `,
}, jsonCorpus...)

// wireLarge are values whose encoding has lengths of two and three bytes,
// and the deepest scanJSON takes.
var wireLarge = []string{
	`[` + strings.Repeat(`1,`, 200) + `"` + strings.Repeat("é", 100) + `"]`,
	`{"` + strings.Repeat("k", 300) + `":{"` + strings.Repeat("k", 20000) + `":"` + strings.Repeat("v", 70000) + `"}}`,
	strings.Repeat(`{"a":[`, 1000) + strings.Repeat(`]}`, 1000),
	strings.Repeat(`[`, maxJSONDepth) + strings.Repeat(`]`, maxJSONDepth),
	strings.Repeat(`{"a":`, maxJSONDepth-1) + `{}` + strings.Repeat(`}`, maxJSONDepth-1),
}

// checkWire: a gRPC client decodes from wireValue and wireStruct exactly
// the messages jsonValue and jsonStruct build, and the encoding is the
// size the first pass found.
func checkWire(t *testing.T, in []byte) {
	t.Helper()
	roundTrip := func(m, into proto.Message) proto.Message {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("%q: marshal: %v", in, err)
		}
		if err := proto.Unmarshal(b, into); err != nil {
			t.Fatalf("%q: a client cannot decode the encoding: %v", in, err)
		}
		return into
	}
	want, got := jsonValue(in), wireValue(in)
	switch {
	case want == nil && got == nil:
	case want == nil || got == nil:
		t.Fatalf("%q: wireValue %v, jsonValue %v", in, got, want)
	default:
		if dec := roundTrip(got, &structpb.Value{}); !proto.Equal(dec, want) {
			t.Fatalf("%q: decoded %v, want %v", in, dec, want)
		}
	}
	ws, gs := jsonStruct(in), wireStruct(in)
	switch {
	case ws == nil && gs == nil:
	case ws == nil || gs == nil:
		t.Fatalf("%q: wireStruct %v, jsonStruct %v", in, gs, ws)
	default:
		if dec := roundTrip(gs, &structpb.Struct{}); !proto.Equal(dec, ws) {
			t.Fatalf("%q: decoded struct %v, want %v", in, dec, ws)
		}
	}
	if storedJSON(in) {
		for _, asStruct := range []bool{false, true} {
			if asStruct && !bytes.HasPrefix(bytes.TrimLeft(in, " \t\r\n"), []byte("{")) {
				continue
			}
			w := wireJSON{b: in}
			if out := w.encode(asStruct); len(out) != cap(out) {
				t.Fatalf("%q: encoded %d bytes, sized %d", in, len(out), cap(out))
			}
		}
	}
}

func TestWireJSONAgreesWithStructpb(t *testing.T) {
	for _, in := range append(wireCorpus, wireLarge...) {
		checkWire(t, []byte(in))
	}
}

// The encoding of an answer as a whole: unknown fields nested in a
// response's messages reach the client as the Values they stand for.
func TestWireJSONInResponse(t *testing.T) {
	rec := `{"device":"d1","temp":21.5,"tags":["a","b"],"n":null}`
	resp := &structpb.ListValue{Values: []*structpb.Value{wireValue([]byte(rec)), structpb.NewStringValue("x"), wireValue([]byte(`[1,{"a":[]}]`))}}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got := &structpb.ListValue{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	want := &structpb.ListValue{Values: []*structpb.Value{jsonValue([]byte(rec)), structpb.NewStringValue("x"), jsonValue([]byte(`[1,{"a":[]}]`))}}
	if !proto.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// FuzzWireJSON compares the wire encoding with structpb on any input.
func FuzzWireJSON(f *testing.F) {
	for _, in := range wireCorpus {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if bytes.Count(in, []byte("["))+bytes.Count(in, []byte("{")) > maxJSONDepth {
			return // deeper than scanJSON takes, not protojson
		}
		checkWire(t, in)
	})
}

// BenchmarkNativeValue: a 60 KB record of small objects and a record of
// numbers and strings, answered to a gRPC client as Value messages
// (jsonValue, then proto.Marshal as grpc-go does) and as their encoding
// (wireValue).
func BenchmarkNativeValue(b *testing.B) {
	inputs := map[string][]byte{
		"objects": []byte(`{"f":[` + strings.Repeat(`{},`, 20000) + `{}]}`),
		"reading": []byte(`{"device":"d17","temp":21.5,"hum":40,"ok":true,"tags":["a","b"],"ts":1796014131630}`),
	}
	for name, in := range inputs {
		for _, enc := range []struct {
			name string
			fn   func([]byte) *structpb.Value
		}{{"structpb", jsonValue}, {"wire", wireValue}} {
			b.Run(name+"/"+enc.name, func(b *testing.B) {
				b.SetBytes(int64(len(in)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := proto.Marshal(enc.fn(in)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

// jsonCorpus is JSON text, valid and not, for checkJSON: the seeds of its
// fuzz test too.
var jsonCorpus = []string{
	`1`, `-0`, `0.5`, `1.50`, `1E5`, `1e+5`, `-1.5e-3`, `12345678901234567890`, `1e308`, `1e-400`,
	`true`, `false`, `null`, `""`, `"a"`, `"é"`, `"\u00e9"`, `"\ud83d\ude00"`, `"\"\\\/\b\f\n\r\t"`,
	`[]`, `{}`, `[1,2,[3,[]],{}]`, ` { "a" : [ 1 , { "b" : null } ] } `, "\t[\n1\r]\n",
	`{"a":1,"b":{"a":2}}`, `[{"a":1},{"a":1}]`, `{"\u0000":1}`, `{"a<b":"&"}`,
	// Refused.
	``, ` `, `{`, `}`, `[1,]`, `[,1]`, `{"a":1,}`, `{"a"}`, `{"a" 1}`, `{a:1}`, `{'a':1}`, `[1 2]`,
	`01`, `-`, `+1`, `.5`, `1.`, `1e`, `1e+`, `0x10`, `NaN`, `Infinity`, `-Infinity`, `1e400`, `-1e400`,
	`tru`, `nul`, `truex`, `"a`, `"\x"`, `"\u12"`, `"\u12g4"`, `"\ud800"`, `"\udc00"`, `"\ud800\u0041"`,
	`"\ud800x"`, "\"\x01\"", "\"\xff\"", "\xef\xbb\xbf1", `{"a":1,"a":2}`, `{"a":1,"\u0061":2}`,
	`[1] [2]`, `1 2`, `"a" x`, `{"a":1}}`, `[1]]`,
}

// TestCheckJSONAgreesWithProtojson: checkJSON accepts what protojson
// decodes into a google.protobuf.Value and nothing else, and what it
// returns is the same value without white space.
func TestCheckJSONAgreesWithProtojson(t *testing.T) {
	for _, in := range jsonCorpus {
		checkAgainstProtojson(t, []byte(in))
	}
	deep := func(n int, open, close string) []byte {
		return []byte(strings.Repeat(open, n) + "1" + strings.Repeat(close, n))
	}
	if _, err := checkJSON(deep(maxJSONDepth, `{"a":`, "}")); err != nil {
		t.Errorf("%d levels: %v", maxJSONDepth, err)
	}
	if _, err := checkJSON(deep(maxJSONDepth+1, "[", "]")); err == nil {
		t.Errorf("%d levels accepted", maxJSONDepth+1)
	}
	if _, err := checkJSON(deep(maxJSONDepth+1, `{"a":`, "}")); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Errorf("%d levels: %v", maxJSONDepth+1, err)
	}
	if _, err := checkJSON(deep(1_000_000, "[", "]")); err == nil {
		t.Error("a million levels accepted")
	}
}

func checkAgainstProtojson(t *testing.T, in []byte) {
	t.Helper()
	out, err := checkJSON(in)
	want := &structpb.Value{}
	perr := protojson.Unmarshal(in, want)
	switch {
	case perr != nil && err == nil:
		t.Fatalf("checkJSON(%q) accepted what protojson refuses (%v)", in, perr)
	case perr == nil && err != nil:
		t.Fatalf("checkJSON(%q): %v; protojson accepts it", in, err)
	case err != nil:
		if !strings.HasPrefix(err.Error(), "invalid JSON at byte ") && err.Error() != "not valid UTF-8" {
			t.Fatalf("checkJSON(%q): unclear error %q", in, err)
		}
		return
	}
	got := &structpb.Value{}
	if err := protojson.Unmarshal(out, got); err != nil {
		t.Fatalf("checkJSON(%q) = %q, which protojson refuses: %v", in, out, err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("checkJSON(%q) = %q: a different value", in, out)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, in); err != nil || !bytes.Equal(out, compact.Bytes()) {
		t.Fatalf("checkJSON(%q) = %q, want %q (%v)", in, out, compact.Bytes(), err)
	}
}

// FuzzCheckJSON compares checkJSON with protojson on any input.
func FuzzCheckJSON(f *testing.F) {
	for _, in := range jsonCorpus {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if bytes.Count(in, []byte("["))+bytes.Count(in, []byte("{")) > maxJSONDepth {
			return // deeper than checkJSON takes, not protojson
		}
		checkAgainstProtojson(t, in)
	})
}

func rawValueOf(s string) *structpb.Value {
	v := &structpb.Value{}
	setRaw(v, []byte(s))
	return v
}

func rawStructOf(s string) *structpb.Struct {
	v := &structpb.Struct{}
	setRaw(v, []byte(s))
	return v
}

// TestRawMarshalerSplices: raw Values and Structs anywhere in a response
// (fields, lists, oneofs, a stream chunk's map) come out as their text;
// structpb values as before.
func TestRawMarshalerSplices(t *testing.T) {
	m := Marshaler()
	// A stored text holding the stand-in's look, without the process's mark.
	tricky := `{"s":"\u0000:0","t":"{\"x\":null}"}`
	resp := &v1.InvokeFunctionResponse{
		InvocationId: "i1",
		Result:       rawValueOf(`{"n":12345678901234567890,"f":1.50}`),
		Effects: []*v1.Effect{
			{Kind: &v1.Effect_Emit{Emit: &v1.EmitEffect{Stream: "s", Record: rawValueOf(`[1,2,3]`)}}},
			{Kind: &v1.Effect_Emit{Emit: &v1.EmitEffect{Stream: "t", Record: structpb.NewStringValue("plain")}}},
			{Kind: &v1.Effect_Emit{Emit: &v1.EmitEffect{Stream: "u", Record: rawValueOf(tricky)}}},
		},
		State: []*v1.StateChange{{Op: "set", Key: "k", Value: rawValueOf(`"é"`)}},
		Logs: []*v1.LogLine{
			{Msg: "a", Fields: rawStructOf(`{"a":{"b":[true]}}`)},
			{Msg: "b", Fields: &structpb.Struct{Fields: map[string]*structpb.Value{"x": structpb.NewNumberValue(2)}}},
		},
	}
	out, err := m.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Result  json.RawMessage
		Effects []struct {
			Emit struct {
				Record json.RawMessage
			}
		}
		State []struct{ Value json.RawMessage }
		Logs  []struct{ Fields json.RawMessage }
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	for _, c := range []struct{ got, want string }{
		{string(got.Result), `{"n":12345678901234567890,"f":1.50}`},
		{string(got.Effects[0].Emit.Record), `[1,2,3]`},
		{string(got.Effects[1].Emit.Record), `"plain"`},
		{string(got.Effects[2].Emit.Record), tricky},
		{string(got.State[0].Value), `"é"`},
		{string(got.Logs[0].Fields), `{"a":{"b":[true]}}`},
		{strings.ReplaceAll(string(got.Logs[1].Fields), " ", ""), `{"x":2}`},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s\n(in %s)", c.got, c.want, out)
		}
	}

	// A stream chunk.
	chunk, err := m.Marshal(map[string]any{"result": &v1.LogLine{Msg: "c", Fields: rawStructOf(`{"z":[]}`)}})
	if err != nil {
		t.Fatal(err)
	}
	var line struct {
		Result struct{ Fields json.RawMessage }
	}
	if err := json.Unmarshal(chunk, &line); err != nil || string(line.Result.Fields) != `{"z":[]}` {
		t.Errorf("chunk %s: %v", chunk, err)
	}

	// A list response and a lone entry.
	list, err := m.Marshal(&v1.ListStateResponse{Entries: []*v1.StateEntry{{Key: "a", Value: rawValueOf(`1`)}, {Key: "b", Value: rawValueOf(`[{}]`)}}})
	if err != nil {
		t.Fatal(err)
	}
	var entries struct {
		Entries []struct{ Value json.RawMessage }
	}
	if err := json.Unmarshal(list, &entries); err != nil || len(entries.Entries) != 2 ||
		string(entries.Entries[0].Value) != `1` || string(entries.Entries[1].Value) != `[{}]` {
		t.Errorf("list %s: %v", list, err)
	}
}

// TestRawMarshalerDecoder: a body for a Value field becomes a raw Value
// unparsed; an empty one is no value; other targets decode as before.
func TestRawMarshalerDecoder(t *testing.T) {
	m := Marshaler()
	var v *structpb.Value
	if err := m.NewDecoder(strings.NewReader(` {"a": [1, 2]} `)).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if got := string(rawOf(v.ProtoReflect())); got != ` {"a": [1, 2]} ` || v.Kind != nil {
		t.Errorf("raw %q, kind %v", got, v.Kind)
	}
	var none *structpb.Value
	if err := m.NewDecoder(strings.NewReader(" \n")).Decode(&none); !errors.Is(err, io.EOF) || none != nil {
		t.Errorf("empty body: %v, %v", err, none)
	}
	var req v1.PutStateRequest
	if err := m.NewDecoder(strings.NewReader(`{"key": "k", "value": {"a": 1}}`)).Decode(&req); err != nil {
		t.Fatal(err)
	}
	if req.Key != "k" || req.Value.GetStructValue().GetFields()["a"].GetNumberValue() != 1 {
		t.Errorf("decoded %v", &req)
	}
	if err := m.NewDecoder(strings.NewReader(`{"nope": 1}`)).Decode(&req); err == nil {
		t.Error("unknown field accepted")
	}
}

// TestRawOf: a Value without the field, or with other unknown fields only,
// carries no text; the text survives a round trip through the wire.
func TestRawOf(t *testing.T) {
	if rawOf(structpb.NewNumberValue(1).ProtoReflect()) != nil {
		t.Error("plain value has raw text")
	}
	v := rawValueOf(`[1]`)
	wire, err := proto.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var back structpb.Value
	if err := proto.Unmarshal(wire, &back); err != nil {
		t.Fatal(err)
	}
	if got := rawOf(back.ProtoReflect()); string(got) != `[1]` {
		t.Errorf("after the wire: %q", got)
	}
	other := &structpb.Value{}
	other.ProtoReflect().SetUnknown([]byte{0x98, 0x06, 0x01}) // field 99, varint 1
	if rawOf(other.ProtoReflect()) != nil {
		t.Error("another unknown field read as raw text")
	}
	other.ProtoReflect().SetUnknown(append([]byte{0x98, 0x06, 0x01}, v.ProtoReflect().GetUnknown()...))
	if got := rawOf(other.ProtoReflect()); string(got) != `[1]` {
		t.Errorf("after another unknown field: %q", got)
	}
}

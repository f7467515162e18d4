package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// Stored JSON between the REST gateway and the services.
//
// Records' data, state values, invocation results and log fields are JSON
// text in the store. As google.protobuf.Value or Struct messages they cost
// 20 to 200 times their size in memory (a message and an interface per
// number, string and object), twice on the REST path (the service's
// response, then the gateway's decoded copy), and up to 5.5 times their
// size on the wire (an array of small numbers): a GET of a 320 KB state
// value of small objects allocated 60 MiB, and a PUT of a 900 KB array of
// numbers was refused as a gRPC message over the size limit.
//
// So calls that come from the REST gateway over the in-memory connection
// carry the JSON text as is: a Value or Struct message with no field set
// and one unknown field, number rawField, holding the text. The REST
// marshaler (rawMarshaler) writes that text where the message goes, and its
// decoder turns a PUT body into such a message; the service checks it
// (checkJSON) before storing it. gRPC clients over the network send
// ordinary structpb messages and get the protobuf encoding of the stored
// JSON (wirejson.go), which they decode as ordinary messages too; they
// never see the field.

// rawField is the field number of the JSON text in a raw Value or Struct:
// the largest valid one, which google.protobuf.Value and Struct do not use.
const rawField protowire.Number = protowire.MaxValidNumber

// setRaw makes m (a Value or Struct with no field set) carry the JSON text b.
func setRaw(m proto.Message, b []byte) {
	u := protowire.AppendTag(make([]byte, 0, len(b)+protowire.SizeTag(rawField)+protowire.SizeVarint(uint64(len(b)))), rawField, protowire.BytesType)
	m.ProtoReflect().SetUnknown(protowire.AppendBytes(u, b))
}

// rawOf returns the JSON text m carries, or nil when it carries none.
func rawOf(m protoreflect.Message) []byte {
	u := m.GetUnknown()
	for len(u) > 0 {
		num, typ, n := protowire.ConsumeTag(u)
		if n < 0 {
			return nil
		}
		u = u[n:]
		if num == rawField && typ == protowire.BytesType {
			b, n := protowire.ConsumeBytes(u)
			if n < 0 {
				return nil
			}
			return b
		}
		if n = protowire.ConsumeFieldValue(num, typ, u); n < 0 {
			return nil
		}
		u = u[n:]
	}
	return nil
}

// fromGateway reports whether the call came over the in-memory connection,
// i.e. from the REST gateway of this server.
func fromGateway(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	return ok && p.Addr != nil && p.Addr.Network() == "bufconn"
}

// jsonOut converts stored JSON into a response's Value and Struct fields:
// raw for the REST gateway, structpb for gRPC clients.
type jsonOut struct{ raw bool }

func jsonOutFor(ctx context.Context) jsonOut { return jsonOut{raw: fromGateway(ctx)} }

// value is jsonValue: the stored text as is for the REST gateway, its
// protobuf encoding for a gRPC client (wireValue). Text that is not JSON
// becomes a string as with jsonValue, null leaves the field out.
func (o jsonOut) value(b []byte) *structpb.Value {
	if !o.raw {
		return wireValue(b)
	}
	if !storedJSON(b) {
		return jsonValue(b)
	}
	if string(bytes.TrimSpace(b)) == "null" {
		return nil
	}
	v := &structpb.Value{}
	setRaw(v, b)
	return v
}

// cost bounds the memory the response field made of stored JSON b takes:
// b itself for the REST gateway (it goes out as it is), and for a gRPC
// client its protobuf encoding, at most 5.5 times b (wirejson.go).
func (o jsonOut) cost(b []byte) int {
	if o.raw {
		return len(b)
	}
	return len(b) * 11 / 2
}

// maxStructCost bounds the memory (jsonOut.cost) of the stored JSON one
// page of log lines converts for a gRPC client.
const maxStructCost = 8 << 20

// object is jsonStruct: the stored text as is for the REST gateway, its
// protobuf encoding for a gRPC client (wireStruct).
func (o jsonOut) object(b []byte) *structpb.Struct {
	if !o.raw {
		return wireStruct(b)
	}
	if !storedJSON(b) || !bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{")) {
		return jsonStruct(b)
	}
	s := &structpb.Struct{}
	setRaw(s, b)
	return s
}

// storedJSON reports whether stored text goes out as it is: when it is a
// value checkJSON accepts, which is when jsonValue makes a Value of it (so
// that REST and gRPC clients read the same). A function's JSON encoder can
// write an object with a name twice ({[5]=1, ["5"]=2}): that goes out as a
// string on both faces.
func storedJSON(b []byte) bool {
	_, err := scanJSON(b)
	return err == nil
}

// maxJSONDepth bounds the nesting of a JSON value written over the API.
// protojson decodes a Value of up to 9,999 levels, but as protobuf each
// level of objects is three nested messages (Value, Struct, map entry)
// and grpc-go decodes at most 10,000: gRPC clients could not read a value
// of more than 3,333 levels of objects.
const maxJSONDepth = 3000

// checkJSON checks that b is one JSON value as a google.protobuf.Value
// takes it (RFC 8259 syntax in UTF-8, no lone surrogate escapes, numbers
// that are finite as float64, no name twice in an object, at most
// maxJSONDepth levels) and returns it without insignificant white space.
// It keeps numbers and strings as they are written. Its memory is the
// names of the objects open at once (to find repeated ones), not the size
// of the value.
func checkJSON(b []byte) ([]byte, error) {
	space, err := scanJSON(b)
	if err != nil {
		return nil, err
	}
	if space {
		var buf bytes.Buffer
		buf.Grow(len(b))
		if err := json.Compact(&buf, b); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return b, nil
}

// scanJSON checks b as checkJSON does and reports whether it holds
// insignificant white space.
func scanJSON(b []byte) (space bool, err error) {
	if !utf8.Valid(b) {
		return false, errors.New("not valid UTF-8")
	}
	c := jsonCheck{b: b}
	if err := c.value(); err != nil {
		return false, err
	}
	return c.space, nil
}

// jsonCheck is the state of scanJSON: an iterative scanner, so that a
// deep value cannot grow the goroutine's stack.
type jsonCheck struct {
	b     []byte
	i     int
	open  []jsonFrame
	names [][]byte // names of the open objects, decoded, innermost last
	space bool     // white space seen
}

// jsonFrame is an open array or object.
type jsonFrame struct {
	array bool
	first int                 // index in names of the object's first name
	set   map[string]struct{} // its names, once it has more than smallObject
}

// smallObject is the number of names an object's names are compared with
// one by one (no allocation); a larger object gets a set.
const smallObject = 16

func (c *jsonCheck) errorf(format string, a ...any) error {
	return fmt.Errorf("invalid JSON at byte %d: %s", c.i, fmt.Sprintf(format, a...))
}

func (c *jsonCheck) skip() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
			c.space = true
		default:
			return
		}
	}
}

// eof is what peek returns at the end of the input.
const eof = -1

// peek skips white space and returns the next byte, or eof.
func (c *jsonCheck) peek() int {
	c.skip()
	if c.i == len(c.b) {
		return eof
	}
	return int(c.b[c.i])
}

// value checks the whole input: one value and nothing after it.
func (c *jsonCheck) value() error {
	for {
		if err := c.scalarOrOpen(); err != nil {
			return err
		}
		// After a value, or just inside an opened container: close what
		// ends here, then find the next value's start.
		next, err := c.afterValue()
		if err != nil {
			return err
		}
		if !next {
			if c.peek() != eof {
				return c.errorf("unexpected %q after the value", c.b[c.i])
			}
			return nil
		}
	}
}

// scalarOrOpen reads a scalar or an empty container, or opens arrays and
// objects (reading an object's first name) down to the first value that
// is neither.
func (c *jsonCheck) scalarOrOpen() error {
	for {
		switch ch := c.peek(); ch {
		case eof:
			return c.errorf("unexpected end of input")
		case '{', '[':
			if len(c.open) == maxJSONDepth {
				return c.errorf("nested deeper than %d levels", maxJSONDepth)
			}
			c.i++
			closer := int('}')
			if ch == '[' {
				closer = ']'
			}
			if c.peek() == closer {
				c.i++
				return nil
			}
			c.open = append(c.open, jsonFrame{array: ch == '[', first: len(c.names)})
			if ch == '{' {
				if err := c.name(); err != nil {
					return err
				}
			}
		case '"':
			_, err := c.str()
			return err
		case 't':
			return c.literal("true")
		case 'f':
			return c.literal("false")
		case 'n':
			return c.literal("null")
		default:
			return c.number()
		}
	}
}

// afterValue closes the containers that end after a value and reports
// whether another value follows (after a comma, and an object's name).
func (c *jsonCheck) afterValue() (bool, error) {
	for len(c.open) > 0 {
		top := &c.open[len(c.open)-1]
		switch ch := c.peek(); {
		case ch == ',':
			c.i++
			if top.array {
				return true, nil
			}
			return true, c.name()
		case top.array && ch == ']', !top.array && ch == '}':
			c.i++
			c.names = c.names[:top.first]
			c.open = c.open[:len(c.open)-1]
		case ch == eof:
			return false, c.errorf("unexpected end of input")
		default:
			return false, c.errorf("unexpected %q", c.b[c.i])
		}
	}
	return false, nil
}

// name reads an object's name and its colon, refusing a name the object
// already has.
func (c *jsonCheck) name() error {
	if c.peek() != '"' {
		return c.errorf("expected a name in double quotes")
	}
	start := c.i
	escaped, err := c.str()
	if err != nil {
		return err
	}
	name := c.b[start+1 : c.i-1]
	if escaped {
		var s string
		if err := json.Unmarshal(c.b[start:c.i], &s); err != nil {
			return c.errorf("name: %v", err)
		}
		name = []byte(s)
	}
	top := &c.open[len(c.open)-1]
	dup := false
	if top.set != nil {
		_, dup = top.set[string(name)]
		top.set[string(name)] = struct{}{}
	} else {
		own := c.names[top.first:]
		for _, n := range own {
			if bytes.Equal(n, name) {
				dup = true
				break
			}
		}
		if len(own) < smallObject {
			c.names = append(c.names, name)
		} else {
			top.set = make(map[string]struct{}, 2*smallObject)
			for _, n := range own {
				top.set[string(n)] = struct{}{}
			}
			top.set[string(name)] = struct{}{}
		}
	}
	if dup {
		return c.errorf("the name %q is repeated in an object", clip(string(name)))
	}
	if c.peek() != ':' {
		return c.errorf("expected a colon after a name")
	}
	c.i++
	return nil
}

// str reads a string (c.b[c.i] is its opening quote) and reports whether
// it holds escapes.
func (c *jsonCheck) str() (bool, error) {
	c.i++
	escaped := false
	for c.i < len(c.b) {
		switch ch := c.b[c.i]; {
		case ch == '"':
			c.i++
			return escaped, nil
		case ch < 0x20:
			return false, c.errorf("control character in a string")
		case ch == '\\':
			escaped = true
			if err := c.escape(); err != nil {
				return false, err
			}
		default:
			c.i++
		}
	}
	return false, c.errorf("unterminated string")
}

// escape reads one escape sequence; a \u escape of a UTF-16 surrogate must
// be a high one followed by a low one.
func (c *jsonCheck) escape() error {
	if c.i+1 >= len(c.b) {
		return c.errorf("unterminated string")
	}
	switch c.b[c.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		c.i += 2
		return nil
	case 'u':
	default:
		return c.errorf("invalid escape \\%c", c.b[c.i+1])
	}
	r, ok := c.hex4(c.i + 2)
	if !ok {
		return c.errorf("invalid \\u escape")
	}
	c.i += 6
	switch {
	case r >= 0xDC00 && r <= 0xDFFF:
		return c.errorf("lone low surrogate \\u%04x", r)
	case r >= 0xD800 && r <= 0xDBFF:
		if c.i+1 >= len(c.b) || c.b[c.i] != '\\' || c.b[c.i+1] != 'u' {
			return c.errorf("lone high surrogate \\u%04x", r)
		}
		if lo, ok := c.hex4(c.i + 2); !ok || lo < 0xDC00 || lo > 0xDFFF {
			return c.errorf("lone high surrogate \\u%04x", r)
		}
		c.i += 6
	}
	return nil
}

func (c *jsonCheck) hex4(at int) (rune, bool) {
	if at+4 > len(c.b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(c.b[at:at+4]), 16, 16)
	return rune(v), err == nil
}

func (c *jsonCheck) literal(word string) error {
	if !bytes.HasPrefix(c.b[c.i:], []byte(word)) {
		return c.errorf("invalid literal")
	}
	c.i += len(word)
	return nil
}

// number reads a number and refuses one that is infinite as a float64
// (protojson refuses those for a Value; 1e-400 is 0, as there).
func (c *jsonCheck) number() error {
	start := c.i
	digits := func() int {
		n := 0
		for c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9' {
			c.i++
			n++
		}
		return n
	}
	if c.i < len(c.b) && c.b[c.i] == '-' {
		c.i++
	}
	intStart := c.i
	n := digits()
	switch {
	case n == 0:
		c.i = start
		if c.i < len(c.b) {
			return c.errorf("unexpected %q", c.b[c.i])
		}
		return c.errorf("unexpected end of input")
	case n > 1 && c.b[intStart] == '0':
		return c.errorf("number with a leading zero")
	}
	if c.i < len(c.b) && c.b[c.i] == '.' {
		c.i++
		if digits() == 0 {
			return c.errorf("number without digits after its point")
		}
	}
	exp := false
	if c.i < len(c.b) && (c.b[c.i] == 'e' || c.b[c.i] == 'E') {
		exp = true
		c.i++
		if c.i < len(c.b) && (c.b[c.i] == '+' || c.b[c.i] == '-') {
			c.i++
		}
		if digits() == 0 {
			return c.errorf("number without digits in its exponent")
		}
	}
	// Without an exponent, fewer than 309 integer digits are finite.
	if exp || n >= 309 {
		f, _ := strconv.ParseFloat(string(c.b[start:c.i]), 64)
		if math.IsInf(f, 0) {
			return c.errorf("number %s is out of range", clip(string(c.b[start:c.i])))
		}
	}
	return nil
}

// rawMarshaler is the REST gateway's JSON marshaler (JSONPb inside): it
// writes the JSON text of raw Values and Structs where the messages go, and
// decodes a body sent for a Value field (PUT of a state value) into a raw
// Value without parsing it into messages.
type rawMarshaler struct {
	runtime.Marshaler
}

// rawMark starts the string that stands for a raw message while the rest
// is marshalled: a NUL (which protojson writes as \u0000) and a random
// number of this process, which no data can hold by chance.
var rawMark, rawMarkJSON = func() (string, []byte) {
	var n [16]byte
	_, _ = rand.Read(n[:])
	h := hex.EncodeToString(n[:])
	return "\x00" + h + ":", []byte(`"\u0000` + h + ":")
}()

// Marshal marshals v (a message, or the map a stream chunk is) with the
// JSON text of its raw messages in their places.
func (m rawMarshaler) Marshal(v any) ([]byte, error) {
	var raws [][]byte
	switch x := v.(type) {
	case proto.Message:
		raws = markRaw(x.ProtoReflect(), raws)
	case map[string]any:
		for _, e := range x {
			if pm, ok := e.(proto.Message); ok {
				raws = markRaw(pm.ProtoReflect(), raws)
			}
		}
	}
	out, err := m.Marshaler.Marshal(v)
	if err != nil || len(raws) == 0 {
		return out, err
	}
	return spliceRaw(out, raws)
}

// NewEncoder is an encoder that marshals with Marshal.
func (m rawMarshaler) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := m.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
}

// NewDecoder decodes a body into a Value field as a raw Value (the service
// checks the text); anything else as JSONPb does.
func (m rawMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		dst, ok := v.(**structpb.Value)
		if !ok {
			return m.Marshaler.NewDecoder(r).Decode(v)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(b)) == 0 {
			return io.EOF // no value: the service says one is required
		}
		*dst = &structpb.Value{}
		setRaw(*dst, b)
		return nil
	})
}

// markRaw replaces every raw Value and Struct under m with a stand-in
// (a string, or an object with one name) numbered by its place in raws,
// and returns raws with their texts appended.
func markRaw(m protoreflect.Message, raws [][]byte) [][]byte {
	switch x := m.Interface().(type) {
	case *structpb.Value:
		if b := rawOf(m); b != nil {
			x.Kind = &structpb.Value_StringValue{StringValue: rawMark + strconv.Itoa(len(raws))}
			m.SetUnknown(nil)
			return append(raws, b)
		}
		return raws // structpb only below
	case *structpb.Struct:
		if b := rawOf(m); b != nil {
			x.Fields = map[string]*structpb.Value{rawMark + strconv.Itoa(len(raws)): structpb.NewNullValue()}
			m.SetUnknown(nil)
			return append(raws, b)
		}
		return raws
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				raws = markRaw(l.Get(i).Message(), raws)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, e protoreflect.Value) bool {
					raws = markRaw(e.Message(), raws)
					return true
				})
			}
		default:
			raws = markRaw(v.Message(), raws)
		}
		return true
	})
	return raws
}

// spliceRaw puts the texts of raws in place of their stand-ins in out:
// "MARKi" for a Value, {"MARKi":null} for a Struct.
func spliceRaw(out []byte, raws [][]byte) ([]byte, error) {
	size := len(out)
	for _, r := range raws {
		size += len(r)
	}
	dst := make([]byte, 0, size)
	seen := 0
	for {
		k := bytes.Index(out, rawMarkJSON)
		if k < 0 {
			break
		}
		j := k + len(rawMarkJSON)
		e := j
		for e < len(out) && out[e] >= '0' && out[e] <= '9' {
			e++
		}
		idx, err := strconv.Atoi(string(out[j:e]))
		if err != nil || idx >= len(raws) || e == len(out) || out[e] != '"' {
			return nil, errors.New("apiserver: raw JSON stand-in not found whole")
		}
		start, end := k, e+1
		if tail := []byte(":null}"); k > 0 && out[k-1] == '{' && bytes.HasPrefix(out[end:], tail) {
			start, end = k-1, end+len(tail)
		}
		dst = append(dst, out[:start]...)
		dst = append(dst, raws[idx]...)
		out = out[end:]
		seen++
	}
	if seen != len(raws) {
		return nil, fmt.Errorf("apiserver: %d of %d raw JSON values placed", seen, len(raws))
	}
	return append(dst, out...), nil
}

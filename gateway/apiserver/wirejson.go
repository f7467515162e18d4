package apiserver

import (
	"encoding/binary"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/structpb"
)

// Stored JSON for native gRPC clients.
//
// Decoded into structpb messages, stored JSON takes 20 to 200 times its
// size in memory (a message and an interface per number, string and
// object): a page of 1 MiB of records was ~90 MB while its answer was
// built. A gRPC client only ever gets those messages' wire encoding, so the
// answer carries that encoding instead: a Value (or Struct) with no field
// set and, as its unknown fields, the bytes its fields would encode to.
// proto.Marshal writes unknown fields as they are, so the client decodes an
// ordinary Value. The encoding is at most 5.5 times the JSON (an array of
// one-digit numbers: 2 bytes of text, 11 of protobuf) and is built in two
// passes over the text (the first finds the size of every array and object,
// which protobuf writes before their contents) with 4 bytes per array or
// object besides the output.

// Field numbers and wire types of google.protobuf.Value, Struct, ListValue
// and Struct's map entries, as tags (one byte each: fieldSize counts one).
var (
	tagNull   = protowire.AppendTag(nil, 1, protowire.VarintType)  // Value.null_value
	tagNumber = protowire.AppendTag(nil, 2, protowire.Fixed64Type) // Value.number_value
	tagString = protowire.AppendTag(nil, 3, protowire.BytesType)   // Value.string_value
	tagBool   = protowire.AppendTag(nil, 4, protowire.VarintType)  // Value.bool_value
	tagStruct = protowire.AppendTag(nil, 5, protowire.BytesType)   // Value.struct_value
	tagList   = protowire.AppendTag(nil, 6, protowire.BytesType)   // Value.list_value
	tagField1 = protowire.AppendTag(nil, 1, protowire.BytesType)   // Struct.fields, ListValue.values, entry key
	tagEntryV = protowire.AppendTag(nil, 2, protowire.BytesType)   // entry value
)

// maxWireJSON bounds the stored JSON encoded (its encoding's sizes are
// 32-bit): anything longer goes the slow way (jsonValue), which nothing
// stored reaches (records, state values and log fields are far smaller).
const maxWireJSON = 256 << 20

// wireValue is jsonValue as a Value carrying its wire encoding.
func wireValue(b []byte) *structpb.Value {
	if len(b) > maxWireJSON || !storedJSON(b) {
		return jsonValue(b)
	}
	w := wireJSON{b: b}
	if w.firstByte() == 'n' {
		return nil // null: the field is left out
	}
	v := &structpb.Value{}
	v.ProtoReflect().SetUnknown(w.encode(false))
	return v
}

// wireStruct is jsonStruct as a Struct carrying its wire encoding.
func wireStruct(b []byte) *structpb.Struct {
	if len(b) > maxWireJSON || !storedJSON(b) {
		return jsonStruct(b)
	}
	w := wireJSON{b: b}
	if w.firstByte() != '{' {
		return nil
	}
	s := &structpb.Struct{}
	s.ProtoReflect().SetUnknown(w.encode(true))
	return s
}

// wireJSON encodes JSON text that scanJSON accepted.
type wireJSON struct {
	b     []byte
	i     int
	sizes []uint32 // the encoded size of each array's and object's contents, in order of opening
	out   []byte
}

// wireFrame is an open array or object.
type wireFrame struct {
	array bool
	idx   int    // its index in sizes
	size  int    // pass 1: its contents encoded so far
	key   []byte // an object's name for the value being read, as written (without quotes)
}

func (w *wireJSON) skip() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *wireJSON) firstByte() byte {
	w.i = 0
	w.skip()
	return w.b[w.i]
}

// encode returns the wire bytes of the value's fields: those of a Value,
// or of a Struct when asStruct (the value is then an object).
func (w *wireJSON) encode(asStruct bool) []byte {
	total := w.walk(false, asStruct)
	w.out = make([]byte, 0, total)
	w.walk(true, asStruct)
	return w.out
}

// walk goes over the value once (iteratively: a deep value does not grow
// the stack). The first pass (write false) records the size of every array
// and object in w.sizes and returns the whole encoding's size; the second
// appends the encoding to w.out.
func (w *wireJSON) walk(write, asStruct bool) int {
	w.i = 0
	var stack []wireFrame
	k := 0 // containers opened so far, in this pass
	total := 0
	for {
		// A value starts here (after an object's name).
		w.skip()
		c := w.b[w.i]
		if c == '{' || c == '[' {
			w.i++
			if !write {
				w.sizes = append(w.sizes, 0)
			} else {
				content := int(w.sizes[k])
				tag := tagList
				if c == '{' {
					tag = tagStruct
				}
				if len(stack) > 0 || !asStruct {
					w.header(stack, 1+protowire.SizeVarint(uint64(content))+content)
					w.out = protowire.AppendVarint(append(w.out, tag...), uint64(content))
				}
			}
			stack = append(stack, wireFrame{array: c == '[', idx: k})
			k++
			w.skip()
			if w.b[w.i] != ']' && w.b[w.i] != '}' {
				if c == '{' {
					w.name(&stack[len(stack)-1])
				}
				continue
			}
			// Empty: closed below.
		} else {
			scalar := w.scalar()
			vsize := scalarSize(scalar)
			if write {
				w.header(stack, vsize)
				w.appendScalar(scalar)
			} else {
				total = add(stack, vsize, total)
			}
		}
		// After a value: close what ends here, then go on to the next value.
		for {
			if len(stack) == 0 {
				return total
			}
			w.skip()
			top := &stack[len(stack)-1]
			if w.b[w.i] == ',' {
				w.i++
				if !top.array {
					w.name(top)
				}
				break
			}
			w.i++ // ']' or '}'
			content := top.size
			if !write {
				w.sizes[top.idx] = uint32(content)
			}
			stack = stack[:len(stack)-1]
			if !write {
				if len(stack) == 0 && asStruct {
					total = content
				} else {
					total = add(stack, 1+protowire.SizeVarint(uint64(content))+content, total)
				}
			}
		}
	}
}

// add counts a value of encoded size vsize into its container (the top of
// stack: an element of a ListValue, or a map entry of a Struct with the
// name read last), or returns it as the total when it is the whole value.
func add(stack []wireFrame, vsize, total int) int {
	if len(stack) == 0 {
		return vsize
	}
	top := &stack[len(stack)-1]
	top.size += fieldSize(entrySize(top, vsize))
	return total
}

// fieldSize is the size of a length-delimited field of n bytes with a
// one-byte tag.
func fieldSize(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// entrySize is the size of what a value of encoded size vsize is wrapped
// in within top: the Value itself in a ListValue, or a map entry (the
// name, then the Value) in a Struct.
func entrySize(top *wireFrame, vsize int) int {
	if top.array {
		return vsize
	}
	return fieldSize(unquotedLen(top.key)) + fieldSize(vsize)
}

// header appends what comes before a Value of size vsize in its container
// (nothing for the whole value).
func (w *wireJSON) header(stack []wireFrame, vsize int) {
	if len(stack) == 0 {
		return
	}
	top := &stack[len(stack)-1]
	w.out = protowire.AppendVarint(append(w.out, tagField1...), uint64(entrySize(top, vsize)))
	if top.array {
		return
	}
	w.out = protowire.AppendVarint(append(w.out, tagField1...), uint64(unquotedLen(top.key)))
	w.out = appendUnquoted(w.out, top.key)
	w.out = protowire.AppendVarint(append(w.out, tagEntryV...), uint64(vsize))
}

// name reads an object's name and its colon into top.key.
func (w *wireJSON) name(top *wireFrame) {
	w.skip()
	s := w.str()
	top.key = s
	w.skip()
	w.i++ // ':'
}

// str reads a string (w.b[w.i] is its opening quote) and returns its text
// as written, without the quotes.
func (w *wireJSON) str() []byte {
	w.i++
	start := w.i
	for w.b[w.i] != '"' {
		if w.b[w.i] == '\\' {
			w.i++
		}
		w.i++
	}
	w.i++
	return w.b[start : w.i-1]
}

// scalar reads a string, number or literal and returns it as written
// (a string with its quotes).
func (w *wireJSON) scalar() []byte {
	start := w.i
	switch w.b[w.i] {
	case '"':
		w.str()
	case 't', 'n':
		w.i += 4
	case 'f':
		w.i += 5
	default:
		for w.i < len(w.b) && isNumberByte(w.b[w.i]) {
			w.i++
		}
	}
	return w.b[start:w.i]
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

// scalarSize is the size of the Value a scalar encodes to.
func scalarSize(s []byte) int {
	switch s[0] {
	case '"':
		return fieldSize(unquotedLen(s[1 : len(s)-1]))
	case 't', 'f', 'n':
		return 2
	}
	return 9
}

func (w *wireJSON) appendScalar(s []byte) {
	switch s[0] {
	case '"':
		q := s[1 : len(s)-1]
		w.out = protowire.AppendVarint(append(w.out, tagString...), uint64(unquotedLen(q)))
		w.out = appendUnquoted(w.out, q)
	case 't':
		w.out = append(append(w.out, tagBool...), 1)
	case 'f':
		w.out = append(append(w.out, tagBool...), 0)
	case 'n':
		w.out = append(append(w.out, tagNull...), 0)
	default:
		// As protojson reads it (scanJSON refused what is out of range).
		f, _ := strconv.ParseFloat(unsafe.String(&s[0], len(s)), 64)
		w.out = binary.LittleEndian.AppendUint64(append(w.out, tagNumber...), math.Float64bits(f))
	}
}

// unquotedLen is the length of appendUnquoted(nil, q).
func unquotedLen(q []byte) int {
	n := 0
	for i := 0; i < len(q); {
		if q[i] != '\\' {
			n++
			i++
			continue
		}
		r, size := unescape(q[i:])
		n += utf8.RuneLen(r)
		i += size
	}
	return n
}

// appendUnquoted appends the UTF-8 text of a JSON string's contents q (as
// written, valid: scanJSON accepted it).
func appendUnquoted(dst, q []byte) []byte {
	for i := 0; i < len(q); {
		j := i
		for j < len(q) && q[j] != '\\' {
			j++
		}
		dst = append(dst, q[i:j]...)
		if i = j; i == len(q) {
			break
		}
		r, size := unescape(q[i:])
		dst = utf8.AppendRune(dst, r)
		i += size
	}
	return dst
}

// unescape decodes the escape sequence at the start of q (a \u escape of
// a high surrogate is followed by its low one) and returns its length.
func unescape(q []byte) (rune, int) {
	switch q[1] {
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r := hex4(q[2:6])
		if utf16.IsSurrogate(r) {
			return utf16.DecodeRune(r, hex4(q[8:12])), 12
		}
		return r, 6
	}
	return rune(q[1]), 2 // " \ /
}

func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

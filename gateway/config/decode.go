package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest YAML document [Unmarshal] accepts (4 MiB).
const MaxFileSize = 4 << 20

// MaxElements bounds the YAML elements of a document [Unmarshal] accepts,
// counted before it is decoded as the bytes that can start one (',', '-',
// ':', '[', '{' and line ends; an over-estimate). The decoder builds every
// node first, ~150 bytes each, and the values next: a 4 MiB flow list of
// one-digit numbers took 368 MiB. 100,000 is ~25 MiB at worst, and room for
// a configuration of 8,000 device accounts (12 per account).
const MaxElements = 100000

// countElements is the estimate MaxElements bounds (a lone carriage
// return is a YAML line break: "? 0\r" repeated counted nothing and built
// two million nodes).
func countElements(data []byte) int {
	n := 0
	for _, c := range data {
		switch c {
		// Line breaks are \n, \r, and NEL, LS, PS (their last UTF-8
		// bytes: 0x85, 0xA8, 0xA9, which other letters end with too: an
		// over-estimate); '?' starts an explicit key.
		case ',', '-', ':', '?', '[', '{', '\n', '\r', 0x85, 0xA8, 0xA9:
			n++
		}
	}
	return n
}

// Lines maps a dotted key path ("mqtt.embedded.listen", "users[1].username")
// to the 1-based line where that key (or sequence item) appears in the file.
// The root document is the empty path "". A nil Lines is valid and empty.
type Lines map[string]int

// At returns the line of path, or of its nearest ancestor present in the
// file, or 0 when neither is present.
func (l Lines) At(path string) int {
	for {
		if n, ok := l[path]; ok {
			return n
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// parentPath strips the last element of a dotted path: "a.b[2]" -> "a.b",
// "a.b" -> "a", "a" -> "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// NodeUnmarshaler is implemented by types that decode themselves from a
// YAML node under the strict rules of this package ([Size], [Duration]).
// An error returned that holds *Error values is passed on as is; any other
// error is reported at the node's line under path.
type NodeUnmarshaler interface {
	UnmarshalYAMLNode(file, path string, n *yaml.Node) error
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Unmarshal decodes one YAML document strictly into v (a pointer, usually to
// a struct already holding defaults: absent keys keep their values). It
// reports every problem it finds, joined, each an *Error naming file, line
// and key path: syntax errors, more than one document, aliases (not
// supported), duplicate or unknown keys, wrong types and values that do not
// parse. It returns the line of every key it saw, for later validation
// messages.
func Unmarshal(file string, data []byte, v any) (Lines, error) {
	return UnmarshalLimit(file, data, v, MaxElements)
}

// UnmarshalLimit is Unmarshal with another bound on the document's
// elements than MaxElements (a larger one for documents stored under
// earlier limits).
func UnmarshalLimit(file string, data []byte, v any, maxElements int) (Lines, error) {
	lines := Lines{}
	if len(data) > MaxFileSize {
		return lines, &Error{File: file, Msg: fmt.Sprintf("file is %d bytes, larger than the limit of %d", len(data), MaxFileSize)}
	}
	if n := countElements(data); n > maxElements {
		return lines, &Error{File: file, Msg: fmt.Sprintf("file has about %d YAML elements (counting ',', '-', ':', '?', '[', '{' and line breaks), more than the limit of %d", n, maxElements)}
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := decodeRecover(dec, &root); err != nil {
		if errors.Is(err, io.EOF) {
			return lines, nil // empty document: defaults
		}
		return lines, syntaxError(file, err)
	}
	var extra yaml.Node
	if err := decodeRecover(dec, &extra); err == nil {
		return lines, &Error{File: file, Line: extra.Line, Msg: "more than one YAML document in the file"}
	} else if !errors.Is(err, io.EOF) {
		return lines, syntaxError(file, err)
	}
	return lines, DecodeNode(file, "", &root, v, lines)
}

func decodeRecover(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml parser panic: %v", r)
		}
	}()
	return dec.Decode(n)
}

func syntaxError(file string, err error) error {
	msg := err.Error()
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return &Error{File: file, Line: line, Msg: "YAML syntax: " + msg, Err: err}
}

// DecodeNode decodes n strictly into v (a non-nil pointer), like
// [Unmarshal]; path is the key path of n (for messages), lines (may be nil)
// receives the line of every key seen.
func DecodeNode(file, path string, n *yaml.Node, v any, lines Lines) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("config: DecodeNode needs a non-nil pointer, got %T", v)
	}
	d := &decoder{file: file, lines: lines}
	if lines == nil {
		d.lines = Lines{}
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	if _, ok := d.lines[path]; !ok {
		d.lines[path] = n.Line
	}
	d.decode(n, path, rv.Elem(), 0)
	if d.dropped > 0 {
		d.errs = append(d.errs, &Error{File: file, Line: d.errs[len(d.errs)-1].(*Error).Line, Msg: fmt.Sprintf("%d more problems not shown", d.dropped)})
	}
	return errors.Join(d.errs...)
}

type decoder struct {
	file    string
	lines   Lines
	errs    []error
	dropped int // problems beyond MaxErrors
}

// MaxErrors is the most problems one decoding reports; the rest are
// counted in a final "more problems" error, so hostile input cannot make
// the error list huge.
const MaxErrors = 100

func (d *decoder) add(e *Error) {
	if len(d.errs) >= MaxErrors {
		d.dropped++
		return
	}
	d.errs = append(d.errs, e)
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	if len(d.errs) >= MaxErrors {
		d.dropped++
		return
	}
	d.add(&Error{File: d.file, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return fmt.Sprintf("string %q", clip(n.Value))
		case "!!int":
			return "integer " + clip(n.Value)
		case "!!float":
			return "number " + clip(n.Value)
		case "!!bool":
			return "boolean " + n.Value
		case "!!null":
			return "null"
		}
		return fmt.Sprintf("%s %q", n.Tag, clip(n.Value))
	}
	return "nothing"
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var nodeUnmarshalerType = reflect.TypeFor[NodeUnmarshaler]()

// maxDepth bounds recursion over hostile nesting.
const maxDepth = 200

func (d *decoder) decode(n *yaml.Node, path string, rv reflect.Value, depth int) {
	if depth > maxDepth {
		d.errorf(n, path, "nested deeper than %d levels", maxDepth)
		return
	}
	if n.Kind == yaml.AliasNode {
		d.errorf(n, path, "YAML aliases (*%s) are not supported", n.Value)
		return
	}
	if isNull(n) {
		return // absent value: keep the default
	}
	if rv.CanAddr() && rv.Addr().Type().Implements(nodeUnmarshalerType) {
		err := rv.Addr().Interface().(NodeUnmarshaler).UnmarshalYAMLNode(d.file, path, n)
		if err != nil {
			if es := Errors(err); len(es) > 0 {
				for _, e := range es {
					d.add(e)
				}
			} else {
				d.add(&Error{File: d.file, Line: n.Line, Path: path, Msg: err.Error(), Err: err})
			}
		}
		return
	}
	switch rv.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, path, rv, depth)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
			d.errorf(n, path, "expected a string, got %s", describe(n))
			return
		}
		rv.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			d.errorf(n, path, "expected true or false, got %s", describe(n))
			return
		}
		rv.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			d.errorf(n, path, "expected an integer, got %s", describe(n))
			return
		}
		if err := n.Decode(&i); err != nil || rv.OverflowInt(i) {
			d.errorf(n, path, "integer %s out of range", clip(n.Value))
			return
		}
		rv.SetInt(i)
	case reflect.Float32, reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.errorf(n, path, "expected a number, got %s", describe(n))
			return
		}
		rv.SetFloat(f)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(rv.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			if isNull(item) && s.Index(i).Kind() != reflect.Interface {
				d.errorf(item, p, "empty list item")
				continue
			}
			d.decode(item, p, s.Index(i), depth+1)
		}
		rv.Set(s)
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			d.errorf(n, path, "internal: unsupported map key type %s", rv.Type().Key())
			return
		}
		if n.Kind != yaml.MappingNode {
			d.errorf(n, path, "expected a mapping, got %s", describe(n))
			return
		}
		m := reflect.MakeMapWithSize(rv.Type(), len(n.Content)/2)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.Tag == "!!null" || k.Tag == "!!merge" {
				d.errorf(k, path, "keys must be plain strings, got %s", describe(k))
				continue
			}
			p := joinPath(path, k.Value)
			if seen[k.Value] {
				d.errorf(k, p, "duplicate key")
				continue
			}
			seen[k.Value] = true
			d.lines[p] = k.Line
			ev := reflect.New(rv.Type().Elem()).Elem()
			if isNull(val) && ev.Kind() == reflect.Interface {
				m.SetMapIndex(reflect.ValueOf(k.Value).Convert(rv.Type().Key()), ev)
				continue
			}
			d.decode(val, p, ev, depth+1)
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(rv.Type().Key()), ev)
		}
		rv.Set(m)
	case reflect.Interface:
		if rv.NumMethod() != 0 {
			d.errorf(n, path, "internal: unsupported interface type %s", rv.Type())
			return
		}
		d.decodeAny(n, path, rv, depth)
	case reflect.Pointer:
		p := reflect.New(rv.Type().Elem())
		d.decode(n, path, p.Elem(), depth+1)
		rv.Set(p)
	default:
		d.errorf(n, path, "internal: unsupported type %s", rv.Type())
	}
}

// decodeAny decodes free-form data into an any holding only nil, bool, int,
// float64, string, []any and map[string]any: string keys only, no aliases,
// no NaN or infinity, integers within int, dates kept as strings.
func (d *decoder) decodeAny(n *yaml.Node, path string, rv reflect.Value, depth int) {
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		mv := reflect.ValueOf(&m).Elem()
		d.decode(n, path, mv, depth)
		rv.Set(mv)
	case yaml.SequenceNode:
		s := make([]any, len(n.Content))
		sv := reflect.ValueOf(&s).Elem()
		d.decode(n, path, sv, depth)
		rv.Set(sv)
	case yaml.ScalarNode:
		if n.Tag == "!!timestamp" {
			rv.Set(reflect.ValueOf(n.Value)) // dates stay strings
			return
		}
		var x any
		if err := n.Decode(&x); err != nil {
			d.errorf(n, path, "bad value %s: %v", describe(n), err)
			return
		}
		switch v := x.(type) {
		case nil:
			return
		case bool, int, string:
		case float64:
			if math.IsNaN(v) || math.IsInf(v, 0) {
				d.errorf(n, path, "NaN and infinity are not allowed")
				return
			}
		case int64:
			x = int(v) // 32-bit platforms
			if int64(x.(int)) != v {
				d.errorf(n, path, "integer %s out of range", clip(n.Value))
				return
			}
		default:
			d.errorf(n, path, "unsupported value %s (use a string, number, boolean, list or mapping)", describe(n))
			return
		}
		rv.Set(reflect.ValueOf(x))
	default:
		d.errorf(n, path, "unsupported value %s", describe(n))
	}
}

type fieldInfo struct {
	name  string
	index int
}

func structFields(t reflect.Type) []fieldInfo {
	var fs []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fs = append(fs, fieldInfo{name: name, index: i})
	}
	return fs
}

func (d *decoder) decodeStruct(n *yaml.Node, path string, rv reflect.Value, depth int) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := structFields(rv.Type())
	byName := make(map[string]int, len(fields))
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		byName[f.name] = f.index
		names = append(names, f.name)
	}
	sort.Strings(names)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!null" || k.Tag == "!!merge" {
			d.errorf(k, path, "keys must be plain strings, got %s", describe(k))
			continue
		}
		p := joinPath(path, k.Value)
		idx, ok := byName[k.Value]
		if !ok {
			d.errorf(k, p, "unknown key (valid keys here: %s)", strings.Join(names, ", "))
			continue
		}
		if seen[k.Value] {
			d.errorf(k, p, "duplicate key")
			continue
		}
		seen[k.Value] = true
		d.lines[p] = k.Line
		d.decode(val, p, rv.Field(idx), depth+1)
	}
}

// Size is a number of bytes. In YAML it is an integer (bytes) or a string
// with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB
// (powers of 1024), case-insensitive, optionally with a space and a decimal
// fraction ("1.5MiB"). Negative sizes are rejected. The zero value is 0
// bytes.
type Size int64

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ParseSize parses a size such as "16MiB", "256 KiB", "1GB" or "4096".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if num == "" {
		if strings.HasPrefix(t, "-") {
			return 0, fmt.Errorf("invalid size %q: negative", clip(s))
		}
		return 0, fmt.Errorf("invalid size %q: want a number of bytes or a number with a unit (B, KB, MB, GB, KiB, MiB, GiB, ...)", clip(s))
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", clip(s), clip(t[i:]))
	}
	if !strings.Contains(num, ".") {
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil || v > math.MaxInt64/mult {
			return 0, fmt.Errorf("invalid size %q: out of range", clip(s))
		}
		return Size(v * mult), nil
	}
	// Exactly, in rationals: in floating point 2.01 x 1000 is
	// 2009.9999999999998, "not a whole number of bytes".
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: bad number %q", clip(s), clip(num))
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", clip(s))
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("invalid size %q: out of range", clip(s))
	}
	return Size(r.Num().Int64()), nil
}

// String formats s with the largest binary unit that divides it exactly
// ("16MiB", "1500B").
func (s Size) String() string {
	for _, u := range []struct {
		n string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.m == 0 {
			return strconv.FormatInt(int64(s)/u.m, 10) + u.n
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// UnmarshalYAMLNode implements [NodeUnmarshaler].
func (s *Size) UnmarshalYAMLNode(_, _ string, n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a size (e.g. 16MiB), got %s", describe(n))
	}
	switch n.Tag {
	case "!!int":
		var v int64
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("invalid size %s: out of range", clip(n.Value))
		}
		if v < 0 {
			return fmt.Errorf("invalid size %s: negative", clip(n.Value))
		}
		*s = Size(v)
		return nil
	case "!!str":
		v, err := ParseSize(n.Value)
		if err != nil {
			return err
		}
		*s = v
		return nil
	}
	return fmt.Errorf("expected a size (e.g. 16MiB), got %s", describe(n))
}

// Duration is a time.Duration written in YAML as a Go duration string
// ("1s", "500ms", "1h30m"); the integer 0 is also accepted. Negative
// durations are rejected. The zero value is 0.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAMLNode implements [NodeUnmarshaler].
func (d *Duration) UnmarshalYAMLNode(_, _ string, n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a duration (e.g. 30s), got %s", describe(n))
	}
	switch n.Tag {
	case "!!int", "!!float":
		if v, err := strconv.ParseFloat(n.Value, 64); err == nil && v == 0 {
			*d = 0
			return nil
		}
		return fmt.Errorf("invalid duration %s: needs a unit, e.g. \"%ss\"", clip(n.Value), clip(n.Value))
	case "!!str":
		v, err := time.ParseDuration(strings.TrimSpace(n.Value))
		if err != nil {
			return fmt.Errorf("invalid duration %q: want e.g. 500ms, 30s, 1h", clip(n.Value))
		}
		if v < 0 {
			return fmt.Errorf("invalid duration %q: negative", clip(n.Value))
		}
		*d = Duration(v)
		return nil
	}
	return fmt.Errorf("expected a duration (e.g. 30s), got %s", describe(n))
}

package trigger

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// MaxTopicBytes is the MQTT limit on topic names and filters.
const MaxTopicBytes = 65535

type segKind uint8

const (
	segLiteral segKind = iota
	segPlus            // "+"
	segNamed           // "{name}": one level, captured
	segHash            // "#": the rest, last
)

type segment struct {
	kind segKind
	text string // literal text, or capture name
}

// Pattern is a parsed MQTT trigger: MQTT filter syntax with "+" (one level)
// and "#" (any number of levels, last), plus named segments "{name}" that
// match one level and capture it. As in MQTT, a leading wildcard does not
// match topics that start with '$' ("$SYS/...").
//
// A Pattern is immutable and safe for concurrent use. The zero value
// matches nothing; use [ParsePattern].
type Pattern struct {
	src    string
	filter string
	segs   []segment
	names  []string
}

var captureNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// ParsePattern parses a trigger pattern. It fails (wrapping [ErrPattern]) on
// an empty pattern, '#' that is not alone in the last level, '+' not alone in
// its level, a name that is not an identifier ([A-Za-z_][A-Za-z0-9_]{0,63})
// or appears twice, braces mixed with other text in a level ("a{b}"),
// patterns longer than 65535 bytes, invalid UTF-8 and NUL bytes.
func ParsePattern(s string) (*Pattern, error) {
	bad := func(format string, args ...any) (*Pattern, error) {
		return nil, fmt.Errorf("%w %q: %s", ErrPattern, clip(s), fmt.Sprintf(format, args...))
	}
	switch {
	case s == "":
		return nil, fmt.Errorf("%w: empty", ErrPattern)
	case len(s) > MaxTopicBytes:
		return nil, fmt.Errorf("%w: %d bytes, longer than %d", ErrPattern, len(s), MaxTopicBytes)
	case !utf8.ValidString(s):
		return bad("invalid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return bad("contains a NUL byte")
	}
	levels := strings.Split(s, "/")
	p := &Pattern{src: s, segs: make([]segment, len(levels))}
	filter := make([]string, len(levels))
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return bad("'#' must be the last level")
			}
			p.segs[i] = segment{kind: segHash}
		case l == "+":
			p.segs[i] = segment{kind: segPlus}
		case strings.HasPrefix(l, "{") && strings.HasSuffix(l, "}") && len(l) >= 2:
			name := l[1 : len(l)-1]
			if !captureNameRE.MatchString(name) {
				return bad("invalid capture name %q: use letters, digits and '_', not starting with a digit, at most 64", clip(name))
			}
			for _, n := range p.names {
				if n == name {
					return bad("capture name %q used twice", name)
				}
			}
			p.names = append(p.names, name)
			p.segs[i] = segment{kind: segNamed, text: name}
			l = "+"
		case strings.ContainsAny(l, "+#"):
			return bad("'+' and '#' must fill a whole level")
		case strings.ContainsAny(l, "{}"):
			return bad("a {name} segment must fill a whole level (level %q)", clip(l))
		default:
			p.segs[i] = segment{kind: segLiteral, text: l}
		}
		filter[i] = l
	}
	p.filter = strings.Join(filter, "/")
	return p, nil
}

// MustParsePattern is ParsePattern that panics on error, for tests and
// constant patterns.
func MustParsePattern(s string) *Pattern {
	p, err := ParsePattern(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pattern as written.
func (p *Pattern) String() string { return p.src }

// Filter returns the MQTT subscription filter: each {name} becomes "+".
func (p *Pattern) Filter() string { return p.filter }

// Names returns the capture names in order (nil when there are none). The
// caller must not modify the slice.
func (p *Pattern) Names() []string { return p.names }

// Captures reports whether the pattern captures name.
func (p *Pattern) Captures(name string) bool {
	for _, n := range p.names {
		if n == name {
			return true
		}
	}
	return false
}

// Match reports whether topic matches the pattern and returns the captured
// named segments (nil when the pattern has no names). "#" and "+" capture
// nothing. It allocates only for the captures map of a successful match.
func (p *Pattern) Match(topic string) (captures map[string]string, ok bool) {
	if !p.match(topic, nil) {
		return nil, false
	}
	if len(p.names) == 0 {
		return nil, true
	}
	captures = make(map[string]string, len(p.names))
	p.match(topic, captures)
	return captures, true
}

func (p *Pattern) match(topic string, captures map[string]string) bool {
	if topic == "" || len(p.segs) == 0 {
		return false
	}
	pos, done := 0, false
	for i, seg := range p.segs {
		if seg.kind == segHash {
			return i != 0 || topic[0] != '$'
		}
		if done {
			return false
		}
		var level string
		if j := strings.IndexByte(topic[pos:], '/'); j < 0 {
			level, done = topic[pos:], true
		} else {
			level, pos = topic[pos:pos+j], pos+j+1
		}
		switch seg.kind {
		case segLiteral:
			if level != seg.text {
				return false
			}
		case segPlus, segNamed:
			if i == 0 && topic[0] == '$' {
				return false
			}
			if captures != nil && seg.kind == segNamed {
				captures[seg.text] = level
			}
		}
	}
	return done
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

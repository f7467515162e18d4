package sync

import (
	"strings"

	"github.com/moongate-edge/moongate/store"
)

// template is a parsed topic or subject template: literal text and the
// placeholders {gateway}, {stream}, {function} and {device}. Unknown
// {names} stay literal. It is read-only after parsing.
type template struct {
	parts []tplPart
	clean func(string) string
}

type tplPart struct {
	lit string
	ph  byte // 0: literal; 'g', 's', 'f', 'd'
}

func parseTemplate(s string, clean func(string) string) *template {
	t := &template{clean: clean}
	for s != "" {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			t.parts = append(t.parts, tplPart{lit: s})
			break
		}
		ph := byte(0)
		rest := s[i:]
		for _, p := range [...]struct {
			name string
			c    byte
		}{{"{gateway}", 'g'}, {"{stream}", 's'}, {"{function}", 'f'}, {"{device}", 'd'}} {
			if strings.HasPrefix(rest, p.name) {
				ph = p.c
				if i > 0 {
					t.parts = append(t.parts, tplPart{lit: s[:i]})
				}
				t.parts = append(t.parts, tplPart{ph: ph})
				s = rest[len(p.name):]
				break
			}
		}
		if ph == 0 {
			t.parts = append(t.parts, tplPart{lit: s[:i+1]})
			s = s[i+1:]
		}
	}
	return t
}

// expand returns the template for record r of gateway gw.
func (t *template) expand(gw string, r *store.Record) string {
	var b strings.Builder
	for _, p := range t.parts {
		switch p.ph {
		case 0:
			b.WriteString(p.lit)
		case 'g':
			b.WriteString(t.clean(gw))
		case 's':
			b.WriteString(t.clean(r.Stream))
		case 'f':
			b.WriteString(t.clean(r.Function))
		case 'd':
			b.WriteString(t.clean(r.Device))
		}
	}
	return b.String()
}

// cleanMQTT makes a value safe as (part of) one MQTT topic level.
func cleanMQTT(s string) string {
	if s == "" {
		return "_"
	}
	// A topic is UTF-8 text: a broker drops the connection of a client
	// that publishes to anything else, and the record would then be first
	// in line on every retry, blocking the target.
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.IndexFunc(s, badTopicRune) < 0 {
		return s
	}
	return strings.Map(func(c rune) rune {
		if badTopicRune(c) {
			return '_'
		}
		return c
	}, s)
}

// badTopicRune reports the characters a topic level must not hold: the
// wildcards and separator, and what MQTT 3.1.1 and 5 (section 1.5.3/1.5.4)
// say a topic should not contain and mosquitto refuses by closing the
// connection: control characters (U+0000-U+001F, U+007F-U+009F) and
// non-characters (U+FDD0-U+FDEF, U+xFFFE and U+xFFFF).
func badTopicRune(c rune) bool {
	switch {
	case c == '+' || c == '#' || c == '/':
		return true
	case c <= 0x1F || (c >= 0x7F && c <= 0x9F):
		return true
	case (c >= 0xFDD0 && c <= 0xFDEF) || c&0xFFFE == 0xFFFE:
		return true
	}
	return false
}

// cleanNATS makes a value safe as (part of) one NATS subject token.
func cleanNATS(s string) string {
	if s == "" {
		return "_"
	}
	if !strings.ContainsAny(s, ".*> \t\r\n\x00") {
		return s
	}
	return strings.Map(func(c rune) rune {
		switch c {
		case '.', '*', '>', ' ', '\t', '\r', '\n', 0:
			return '_'
		}
		return c
	}, s)
}

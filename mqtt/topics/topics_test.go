package topics

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

var matchCases = []struct {
	filter, topic string
	want          bool
}{
	{"a/b/c", "a/b/c", true},
	{"a/b/c", "a/b", false},
	{"a/b", "a/b/c", false},
	{"a/+/c", "a/b/c", true},
	{"a/+/c", "a//c", true},
	{"a/+", "a/b/c", false},
	{"+", "a", true},
	{"+", "a/b", false},
	{"+/+", "/a", true},
	{"+", "/a", false},
	{"#", "a/b/c", true},
	{"#", "/", true},
	{"a/#", "a", true},
	{"a/#", "a/b/c", true},
	{"a/#", "ab", false},
	{"a/b/#", "a/b", true},
	{"a/+/#", "a/b", true},
	{"a/+/#", "a", false},
	{"#", "$SYS/x", false},
	{"+/x", "$SYS/x", false},
	{"$SYS/#", "$SYS/x", true},
	{"$SYS/+", "$SYS/x", true},
	{"a/#/b", "a/x/b", false}, // invalid filter
	{"a/b#", "a/b#", false},   // wildcard in topic
	{"a", "a/+", false},
	{"", "a", false},
	{"a", "", false},
	{"$share/g/a/+", "a/b", true},
	{"$share/g/#", "x", true},
	{"$share//a", "a", false},
	{"A", "a", false},
	{"a/", "a/", true},
	{"a/+", "a/", true},
	{"devices/{device}/x", "devices/{device}/x", true},
	{"ü/+", "ü/ß", true},
}

func TestMatch(t *testing.T) {
	for _, c := range matchCases {
		if got := Match(c.filter, c.topic); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
		if got := refMatch(c.filter, c.topic); got != c.want {
			t.Errorf("refMatch(%q, %q) = %v, want %v (reference broken)", c.filter, c.topic, got, c.want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "a/b", "/", "a//b", "$SYS/x", "ü", strings.Repeat("x", 65535)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%.20q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/+", "#", "a/b#", "\xff", "a\x00", strings.Repeat("x", 65536)} {
		if err := ValidName(bad); !errors.Is(err, ErrInvalidTopic) {
			t.Errorf("ValidName(%.20q) = %v, want ErrInvalidTopic", bad, err)
		}
	}
}

func TestValidFilter(t *testing.T) {
	for _, ok := range []string{"a", "#", "+", "a/#", "+/+/#", "a/+/b", "/", "$share/g/a/#", "$SYS/#"} {
		if err := ValidFilter(ok); err != nil {
			t.Errorf("ValidFilter(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a#", "a/b+", "++", "#/", "\xff/#", "a\x00", "$share/g", "$share//a", "$share/g+/a", strings.Repeat("x", 65536)} {
		if err := ValidFilter(bad); !errors.Is(err, ErrInvalidFilter) {
			t.Errorf("ValidFilter(%.20q) = %v, want ErrInvalidFilter", bad, err)
		}
	}
}

func TestCovers(t *testing.T) {
	cases := []struct {
		allowed, sub string
		want         bool
	}{
		{"devices/alice/#", "devices/alice/#", true},
		{"devices/alice/#", "devices/alice", true},
		{"devices/alice/#", "devices/alice/x/+", true},
		{"devices/alice/#", "devices/+/x", false},
		{"devices/alice/#", "devices/#", false},
		{"devices/alice/#", "#", false},
		{"devices/+/state", "devices/bob/state", true},
		{"devices/+/state", "devices/+/state", true},
		{"devices/+/state", "devices/#", false},
		{"devices/+/state", "devices/bob/state/x", false},
		{"devices/+/state", "devices/bob", false},
		{"#", "$SYS/x", false},
		{"#", "anything/#", true},
		{"a/b", "a/b", true},
		{"a/b", "a/+", false},
		{"a/#", "$share/g/a/b", true},
	}
	for _, c := range cases {
		if got := Covers(c.allowed, c.sub); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.allowed, c.sub, got, c.want)
		}
	}
}

// refMatch is a straightforward reference implementation of the MQTT
// matching rules, used to cross-check Match in the fuzz test.
func refMatch(filter, topic string) bool {
	if strings.HasPrefix(filter, "$share/") {
		parts := strings.SplitN(filter, "/", 3)
		if len(parts) < 3 || parts[1] == "" {
			return false
		}
		filter = parts[2]
	}
	// Structure only: Match does not check UTF-8, NUL or length.
	if filter == "" || topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if (l != "+" && l != "#" && strings.ContainsAny(l, "+#")) || (l == "#" && i != len(levels)-1) {
			return false
		}
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f := strings.Split(filter, "/")
	tp := strings.Split(topic, "/")
	for i, level := range f {
		if level == "#" {
			return true
		}
		if i >= len(tp) {
			return false
		}
		if level != "+" && level != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

func FuzzMatch(f *testing.F) {
	for _, c := range matchCases {
		f.Add(c.filter, c.topic)
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		got := Match(filter, topic)
		if want := refMatch(filter, topic); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", filter, topic, got, want)
		}
		if any := MatchAny([]string{filter, filter}, topic); any != got {
			t.Fatalf("MatchAny([%q], %q) = %v, Match = %v", filter, topic, any, got)
		}
		if got && (topic == "" || strings.ContainsAny(topic, "+#")) {
			t.Fatalf("Match(%q, %q) matched a topic with wildcards", filter, topic)
		}
	})
}

func FuzzValidTopicFilter(f *testing.F) {
	for _, s := range []string{"a", "a/b", "#", "a/+/b", "a/#/b", "$share/g/a", "\xff", "a\x00", "", "/", "+/#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		terr, ferr := ValidName(s), ValidFilter(s)
		if terr != nil && !errors.Is(terr, ErrInvalidTopic) {
			t.Fatalf("ValidName(%q) error %v does not wrap ErrInvalidTopic", s, terr)
		}
		if ferr != nil && !errors.Is(ferr, ErrInvalidFilter) {
			t.Fatalf("ValidFilter(%q) error %v does not wrap ErrInvalidFilter", s, ferr)
		}
		if terr == nil {
			if ferr != nil && !strings.HasPrefix(s, "$share/") {
				t.Fatalf("valid topic %q is not a valid filter: %v", s, ferr)
			}
			if !utf8.ValidString(s) || strings.ContainsAny(s, "+#\x00") || s == "" {
				t.Fatalf("ValidTopic accepted %q", s)
			}
			if !strings.HasPrefix(s, "$share/") && !Match(s, s) {
				t.Fatalf("valid topic %q does not match itself as a filter", s)
			}
		}
		if ferr == nil && !strings.HasPrefix(s, "$share/") {
			// Every valid filter is covered by itself and by "#" unless it
			// reaches '$' topics.
			if !Covers(s, s) {
				t.Fatalf("filter %q does not cover itself", s)
			}
		}
	})
}

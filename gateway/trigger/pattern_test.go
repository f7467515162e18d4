package trigger

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParsePatternErrors(t *testing.T) {
	for _, s := range []string{
		"", "a/#/b", "#/a", "a#", "a/b#", "+a", "a/+b/c", "a/{b", "a/b}", "a{b}", "{a}b", "x/{}",
		"{1a}", "{a-b}", "{a}/{a}", "{a b}", "a/{" + strings.Repeat("x", 65) + "}",
		"a\x00b", "a/\xff", strings.Repeat("a", MaxTopicBytes+1),
	} {
		p, err := ParsePattern(s)
		if err == nil {
			t.Errorf("ParsePattern(%q) = %v, want an error", clip(s), p)
			continue
		}
		if !errors.Is(err, ErrPattern) {
			t.Errorf("ParsePattern(%q) error %v does not wrap ErrPattern", clip(s), err)
		}
	}
	if _, err := ParsePattern(strings.Repeat("a", MaxTopicBytes)); err != nil {
		t.Errorf("65535-byte pattern rejected: %v", err)
	}
}

func TestPatternFilter(t *testing.T) {
	for in, want := range map[string]string{
		"devices/{device}/telemetry": "devices/+/telemetry",
		"{site}/{device}/#":          "+/+/#",
		"a/+/b":                      "a/+/b",
		"#":                          "#",
		"a//b":                       "a//b",
		"/a":                         "/a",
		"$SYS/{x}":                   "$SYS/+",
	} {
		p, err := ParsePattern(in)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", in, err)
		}
		if p.Filter() != want || p.String() != in {
			t.Errorf("%q: Filter %q String %q, want %q", in, p.Filter(), p.String(), want)
		}
	}
	if n := MustParsePattern("{a}/x/{b}").Names(); !reflect.DeepEqual(n, []string{"a", "b"}) {
		t.Errorf("Names = %v", n)
	}
}

func TestPatternMatch(t *testing.T) {
	type m = map[string]string
	cases := []struct {
		pattern, topic string
		ok             bool
		caps           m
	}{
		{"a/b", "a/b", true, nil},
		{"a/b", "a/b/c", false, nil},
		{"a/b", "a", false, nil},
		{"a/b", "a/c", false, nil},
		{"a/+", "a/b", true, nil},
		{"a/+", "a/", true, nil}, // empty level matches +
		{"a/+", "a", false, nil},
		{"a/+", "a/b/c", false, nil},
		{"+/+", "/b", true, nil},
		{"+", "/", false, nil},
		{"a/#", "a", true, nil}, // # matches the parent
		{"a/#", "a/b/c", true, nil},
		{"a/#", "ab", false, nil},
		{"#", "a/b", true, nil},
		{"#", "/", true, nil},
		{"#", "$SYS/x", false, nil}, // leading wildcards skip $ topics
		{"+/x", "$SYS/x", false, nil},
		{"{d}/x", "$SYS/x", false, nil},
		{"$SYS/#", "$SYS/x", true, nil},
		{"$SYS/{k}", "$SYS/load", true, m{"k": "load"}},
		{"a/$x", "a/$x", true, nil},
		{"a/#", "a/$x", true, nil}, // $ only matters at the first level
		{"devices/{device}/telemetry", "devices/d1/telemetry", true, m{"device": "d1"}},
		{"devices/{device}/telemetry", "devices//telemetry", true, m{"device": ""}},
		{"devices/{device}/telemetry", "devices/d1/status", false, nil},
		{"devices/{device}/telemetry", "devices/d1/telemetry/x", false, nil},
		{"{site}/{device}/#", "s1/d2/a/b", true, m{"site": "s1", "device": "d2"}},
		{"{site}/{device}/#", "s1/d2", true, m{"site": "s1", "device": "d2"}},
		{"{site}/{device}/#", "s1", false, nil},
		{"a//b", "a//b", true, nil},
		{"a//b", "a/b", false, nil},
		{"/", "/", true, nil},
		{"a", "", false, nil},
		{"#", "", false, nil},
		{"+", "x", true, nil},
		{"a/+/c", "a/ü/c", true, nil},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", c.pattern, err)
		}
		caps, ok := p.Match(c.topic)
		if ok != c.ok || !reflect.DeepEqual(caps, c.caps) {
			t.Errorf("%q.Match(%q) = %v, %v; want %v, %v", c.pattern, c.topic, caps, ok, c.caps, c.ok)
		}
	}
}

func TestPatternMatchAllocs(t *testing.T) {
	named := MustParsePattern("devices/{device}/telemetry")
	plain := MustParsePattern("devices/+/telemetry")
	if n := testing.AllocsPerRun(100, func() { named.Match("devices/d1/status") }); n != 0 {
		t.Errorf("failed match with names allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { plain.Match("devices/d1/telemetry") }); n != 0 {
		t.Errorf("match without names allocates %v times", n)
	}
	var zero Pattern
	if _, ok := zero.Match("a"); ok {
		t.Error("zero Pattern matched")
	}
}

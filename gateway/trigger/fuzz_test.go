package trigger

import (
	"bytes"
	"errors"
	"fmt"
	"go.yaml.in/yaml/v3"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/config"
)

// FuzzPattern parses a pattern and matches a topic with it, checking that
// nothing panics, that the filter parses as a pattern without names, that
// Pattern.Match and the Matcher agree, and that captures are levels of the
// topic.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"devices/{device}/telemetry", "devices/d1/telemetry"},
		{"#", "$SYS/a"}, {"a/#", "a"}, {"+/+", "/"}, {"{a}/{b}/#", "x/y/z/w"},
		{"a//b", "a//b"}, {"a{b}", "a"}, {"$SYS/{x}", "$SYS/y"}, {"", ""}, {"\xff", "\xff"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			if !errors.Is(err, ErrPattern) {
				t.Fatalf("error without ErrPattern: %v", err)
			}
			return
		}
		if p.String() != pattern {
			t.Fatalf("String %q != %q", p.String(), pattern)
		}
		fp, err := ParsePattern(p.Filter())
		if err != nil || len(fp.Names()) != 0 || fp.Filter() != p.Filter() {
			t.Fatalf("filter %q of %q does not reparse: %v", p.Filter(), pattern, err)
		}
		caps, ok := p.Match(topic)
		if _, fok := fp.Match(topic); fok != ok {
			t.Fatalf("%q matches %q: %v, its filter: %v", pattern, topic, ok, fok)
		}
		if ok {
			levels := strings.Split(topic, "/")
			for name, v := range caps {
				found := false
				for _, l := range levels {
					found = found || l == v
				}
				if !found || !p.Captures(name) {
					t.Fatalf("capture %s=%q is not a level of %q", name, v, topic)
				}
			}
			if len(caps) != len(p.Names()) {
				t.Fatalf("captured %v, names %v", caps, p.Names())
			}
		}
		m := NewMatcher()
		m.Set("f", []*Pattern{p})
		n := 0
		m.Match(topic, func(fn string, c map[string]string) {
			n++
			if len(c) != len(caps) {
				t.Fatalf("matcher captures %v, pattern %v", c, caps)
			}
		})
		if (n == 1) != ok || n > 1 {
			t.Fatalf("matcher called %d times, pattern match %v (%q, %q)", n, ok, pattern, topic)
		}
		if fs := m.Filters(); len(fs) != 1 || fs[0] != p.Filter() {
			t.Fatalf("Filters = %v", fs)
		}
	})
}

// FuzzParseManifest checks that ParseManifest never panics, that its errors
// wrap ErrManifest and carry a line when the YAML is well-formed, and that a
// valid manifest's derived fields are set.
func FuzzParseManifest(f *testing.F) {
	for _, s := range []string{
		"", okManifest, "triggers:\n  - timer: 1m\n  - cron: '0 * * * *'\n  - http: {methods: [GET]}\n",
		"limits: {timeout: 1s, max_memory: 1MiB}\nconfig: {a: [1, {b: c}]}\n", "triggers: [{mqtt: 'a/#/b'}]\n",
		"config: {a: &x 1, b: *x}\n", "order_by: device\n", "triggers:\n  - cron: '*/0 * * * *'\n",
		"triggers: [{timer: '@every 0s'}, {cron: 'CRON_TZ=Mars/Base 0 0 * * *'}]\n", "stream: [\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest("f.yaml", data)
		if err == nil {
			if m.Name != "f" || m.Stream == "" || m.OrderBy == "" {
				t.Fatalf("derived fields unset: %+v", m)
			}
			if err := plainData(m.Config); err != nil {
				t.Fatalf("config holds %v", err)
			}
			for _, tr := range m.Triggers {
				switch tr.Kind {
				case KindMQTT:
					if tr.MQTT == nil {
						t.Fatal("mqtt trigger without pattern")
					}
				case KindTimer, KindCron:
					if tr.Schedule == nil {
						t.Fatal("timer without schedule")
					}
				case KindHTTP:
					if tr.HTTP == nil || len(tr.HTTP.Methods) == 0 {
						t.Fatal("http trigger without methods")
					}
				default:
					t.Fatalf("unknown kind %q accepted", tr.Kind)
				}
			}
			return
		}
		if !errors.Is(err, ErrManifest) {
			t.Fatalf("error without ErrManifest: %v", err)
		}
		if !wellFormed(data) || len(data) > MaxManifestBytes {
			return
		}
		for _, e := range config.Errors(err) {
			if e.Line <= 0 {
				t.Fatalf("error without line for well-formed YAML %q: %v", data, e)
			}
		}
	})
}

// FuzzParseSchedule checks that ParseSchedule never panics and that an
// accepted schedule fires in the future.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"@every 1m", "@hourly", "*/5 * * * *", "0 0 31 2 *", "*/0 * * * *", "1-0 * * * *", "CRON_TZ=UTC 0 * * * *", "0-59/70 * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParseSchedule(spec)
		if err != nil {
			if !errors.Is(err, ErrSchedule) {
				t.Fatalf("error without ErrSchedule: %v", err)
			}
			return
		}
		now := fuzzNow
		if next := s.Next(now); !next.After(now) {
			t.Fatalf("%q: Next(%v) = %v", spec, now, next)
		}
	})
}

var fuzzNow = mustTime("2026-11-26T10:00:00Z")

func mustTime(s string) (t time.Time) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// plainData checks that v holds only nil, bool, int, float64, string, []any
// and map[string]any.
func plainData(v any) error {
	switch v := v.(type) {
	case nil, bool, int, float64, string:
		return nil
	case []any:
		for _, x := range v {
			if err := plainData(x); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		for _, x := range v {
			if err := plainData(x); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("a %T", v)
}

// wellFormed reports whether every document of data parses as YAML.
func wellFormed(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

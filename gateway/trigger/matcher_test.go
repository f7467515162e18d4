package trigger

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

type call struct {
	fn   string
	caps map[string]string
}

func collect(m *Matcher, topic string) []call {
	var out []call
	m.Match(topic, func(fn string, caps map[string]string) { out = append(out, call{fn, caps}) })
	return out
}

func pats(ss ...string) []*Pattern {
	ps := make([]*Pattern, len(ss))
	for i, s := range ss {
		ps[i] = MustParsePattern(s)
	}
	return ps
}

func TestMatcherBasics(t *testing.T) {
	m := NewMatcher()
	if got := collect(m, "a"); got != nil {
		t.Fatalf("empty matcher matched %v", got)
	}
	m.Set("telemetry", pats("devices/{device}/telemetry"))
	m.Set("all", pats("#"))
	m.Set("two", pats("devices/{id}/+", "devices/{device}/telemetry")) // both match: one call, first pattern
	m.Set("sys", pats("$SYS/#"))
	m.Set("none", nil)

	got := collect(m, "devices/d1/telemetry")
	want := []call{
		{"all", nil},
		{"telemetry", map[string]string{"device": "d1"}},
		{"two", map[string]string{"id": "d1"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := collect(m, "$SYS/broker/load"); !reflect.DeepEqual(got, []call{{"sys", nil}}) {
		t.Fatalf("$SYS topic: got %v", got)
	}
	m.Remove("all")
	m.Remove("unknown")
	if got := collect(m, "other/topic"); got != nil {
		t.Fatalf("after Remove: %v", got)
	}
	m.Set("two", pats("devices/{device}/telemetry", "devices/{id}/+")) // replace; order changes the first match
	got = collect(m, "devices/d1/telemetry")
	if len(got) != 2 || got[1].fn != "two" || got[1].caps["device"] != "d1" {
		t.Fatalf("after replacing: %v", got)
	}
	m.Set("two", nil) // no patterns removes it
	if got := collect(m, "devices/d1/x"); got != nil {
		t.Fatalf("after Set(nil): %v", got)
	}
	m.SetAll(map[string][]*Pattern{"x": pats("x/#"), "empty": nil})
	if got := collect(m, "x/1"); !reflect.DeepEqual(got, []call{{"x", nil}}) {
		t.Fatalf("after SetAll: %v", got)
	}
	if got := collect(m, "devices/d1/telemetry"); got != nil {
		t.Fatalf("SetAll kept old functions: %v", got)
	}
	if f := m.Filters(); !reflect.DeepEqual(f, []string{"x/#"}) {
		t.Fatalf("Filters after SetAll = %v", f)
	}
}

func TestMatcherFilters(t *testing.T) {
	m := NewMatcher()
	m.Set("f1", pats("devices/{device}/telemetry", "a/+"))
	m.Set("f2", pats("devices/+/telemetry", "a/#", "$SYS/x"))
	m.Set("f3", pats("b/{x}/c", "b/+/#", "+/+/c"))
	got := m.Filters()
	// a/+ is covered by a/#; b/+/c by b/+/# and +/+/c; $SYS/x is not covered
	// by any leading wildcard.
	want := []string{"$SYS/x", "+/+/c", "a/#", "b/+/#", "devices/+/telemetry"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Filters = %v, want %v", got, want)
	}
	m.Set("f3", nil)
	want = []string{"$SYS/x", "a/#", "devices/+/telemetry"}
	if got := m.Filters(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Filters = %v, want %v", got, want)
	}
	for _, c := range []struct {
		g, f string
		ok   bool
	}{
		{"#", "a/b", true}, {"#", "$SYS/a", false}, {"+/#", "#", false}, {"a/#", "a", true},
		{"a/#", "a/+/b", true}, {"a/+/b", "a/#", false}, {"+", "a", true}, {"+", "a/b", false},
		{"a/+", "a/#", false}, {"a/b", "a/b", true}, {"a/b", "a/c", false}, {"+/b", "$x/b", false},
	} {
		if covers(c.g, c.f) != c.ok {
			t.Errorf("covers(%q, %q) = %v", c.g, c.f, !c.ok)
		}
	}
}

// covers reports whether every topic matched by filter f is matched by
// filter g (a direct definition, to test the trie in minimalFilters).
func covers(g, f string) bool {
	gl, fl := strings.Split(g, "/"), strings.Split(f, "/")
	for i, l := range gl {
		switch l {
		case "#":
			// A leading wildcard does not match '$' topics.
			return i != 0 || !strings.HasPrefix(fl[0], "$")
		case "+":
			if i >= len(fl) || fl[i] == "#" || (i == 0 && strings.HasPrefix(fl[0], "$")) {
				return false
			}
		default:
			if i >= len(fl) || fl[i] != l {
				return false
			}
		}
	}
	return len(fl) == len(gl)
}

// TestMinimalFiltersAgainstCovers compares the trie-based pruning with the
// quadratic definition on random filters.
func TestMinimalFiltersAgainstCovers(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	levels := []string{"a", "b", "$s", "", "+"}
	for range 300 {
		var fs []string
		for range 1 + rng.IntN(12) {
			n := 1 + rng.IntN(4)
			ls := make([]string, n)
			for i := range ls {
				ls[i] = levels[rng.IntN(len(levels))]
			}
			if rng.IntN(3) == 0 {
				ls[n-1] = "#"
			}
			fs = append(fs, strings.Join(ls, "/"))
		}
		uniq := slices.Compact(slices.Sorted(slices.Values(fs)))
		var want []string
		for i, f := range uniq {
			covered := false
			for j, g := range uniq {
				if i != j && covers(g, f) {
					covered = true
				}
			}
			if !covered {
				want = append(want, f)
			}
		}
		got := minimalFilters(slices.Clone(fs))
		if !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("minimalFilters(%q) = %q, want %q", fs, got, want)
		}
	}
}

// TestMatcherAgainstPatterns compares the trie with matching every pattern
// one by one, on random patterns and topics over a small alphabet.
func TestMatcherAgainstPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	levels := []string{"a", "b", "", "$s"}
	randPattern := func() string {
		n := 1 + rng.IntN(4)
		ls := make([]string, n)
		for i := range ls {
			switch r := rng.IntN(10); {
			case r < 2:
				ls[i] = "+"
			case r < 3:
				ls[i] = fmt.Sprintf("{n%d}", i)
			case r < 4 && i == n-1:
				ls[i] = "#"
			default:
				ls[i] = levels[rng.IntN(len(levels))]
			}
		}
		return strings.Join(ls, "/")
	}
	randTopic := func() string {
		n := 1 + rng.IntN(5)
		ls := make([]string, n)
		for i := range ls {
			ls[i] = levels[rng.IntN(len(levels))]
		}
		return strings.Join(ls, "/")
	}
	m := NewMatcher()
	funcs := map[string][]*Pattern{}
	for i := range 200 {
		name := fmt.Sprintf("f%03d", i)
		var ps []*Pattern
		for range 1 + rng.IntN(3) {
			s := randPattern()
			for s == "" {
				s = randPattern()
			}
			ps = append(ps, MustParsePattern(s))
		}
		funcs[name] = ps
		m.Set(name, ps)
	}
	names := make([]string, 0, len(funcs))
	for n := range funcs {
		names = append(names, n)
	}
	sort.Strings(names)
	matched := 0
	for range 3000 {
		topic := randTopic()
		var want []call
		for _, n := range names {
			for _, p := range funcs[n] {
				if caps, ok := p.Match(topic); ok {
					want = append(want, call{n, caps})
					break
				}
			}
		}
		got := collect(m, topic)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("topic %q: trie %v, patterns %v", topic, got, want)
		}
		matched += len(got)
	}
	if matched == 0 {
		t.Fatal("random test matched nothing: generator broken")
	}
}

func TestMatcherMatchAllocs(t *testing.T) {
	m := NewMatcher()
	for i := range 100 {
		m.Set(fmt.Sprintf("f%d", i), pats(fmt.Sprintf("devices/{device}/m%d", i)))
	}
	n := testing.AllocsPerRun(200, func() {
		m.Match("devices/d1/nothing", func(string, map[string]string) { t.Fatal("matched") })
	})
	if n != 0 {
		t.Errorf("Match without a match allocates %v times", n)
	}
}

// TestMatcherConcurrent runs Set/Remove and Match at once (meant for -race)
// and checks that every Match sees a consistent snapshot: the stable
// function always matches, exactly once.
func TestMatcherConcurrent(t *testing.T) {
	m := NewMatcher()
	m.Set("stable", pats("devices/{device}/telemetry"))
	var stop atomic.Bool
	var writers, readers sync.WaitGroup
	for w := range 2 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; !stop.Load(); i++ {
				name := fmt.Sprintf("w%d-%d", w, i%50)
				if i%3 == 0 {
					m.Remove(name)
				} else {
					m.Set(name, pats("devices/+/telemetry", fmt.Sprintf("devices/{device}/x%d", i)))
				}
				_ = m.Filters()
			}
		}()
	}
	var bad, others atomic.Int64
	for r := range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			want := fmt.Sprintf("d%d", r)
			for range 2000 {
				n := 0
				m.Match("devices/"+want+"/telemetry", func(fn string, caps map[string]string) {
					if fn != "stable" {
						others.Add(1)
						return
					}
					n++
					if caps["device"] != want {
						bad.Add(1)
					}
				})
				if n != 1 {
					bad.Add(1)
				}
			}
		}()
	}
	readers.Wait()
	stop.Store(true)
	writers.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d inconsistent matches", bad.Load())
	}
	if others.Load() == 0 {
		t.Fatal("readers never saw a function added concurrently")
	}
}

// BenchmarkMatcherMatch matches a telemetry topic against 1,000 functions,
// each with its own topic plus a few shared wildcard patterns (5 match).
func BenchmarkMatcherMatch(b *testing.B) {
	m := NewMatcher()
	for i := range 1000 {
		ps := []string{fmt.Sprintf("devices/{device}/m%d", i)}
		switch i % 250 {
		case 0:
			ps = append(ps, "devices/{device}/telemetry")
		case 1:
			ps = append(ps, "devices/#")
		}
		m.Set(fmt.Sprintf("fn%04d", i), pats(ps...))
	}
	m.Set("all", pats("#"))
	calls := 0
	fn := func(string, map[string]string) { calls++ }
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.Match("devices/dev-42/telemetry", fn)
	}
	b.StopTimer()
	if calls != 9*b.N {
		b.Fatalf("%d calls for %d matches, want 9 each", calls, b.N)
	}
}

// BenchmarkMatcherMatchMiss is a topic that no function matches among 1,000.
func BenchmarkMatcherMatchMiss(b *testing.B) {
	m := NewMatcher()
	for i := range 1000 {
		m.Set(fmt.Sprintf("fn%04d", i), pats(fmt.Sprintf("devices/{device}/m%d", i)))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.Match("devices/dev-42/telemetry", func(string, map[string]string) { b.Fatal("matched") })
	}
}

// BenchmarkMatcherSet is one copy-on-write update with 1,000 functions.
func BenchmarkMatcherSet(b *testing.B) {
	m := NewMatcher()
	all := map[string][]*Pattern{}
	for i := range 1000 {
		all[fmt.Sprintf("fn%04d", i)] = pats(fmt.Sprintf("devices/{device}/m%d", i))
	}
	m.SetAll(all)
	p := pats("devices/{device}/x")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.Set("fn0500", p)
	}
}

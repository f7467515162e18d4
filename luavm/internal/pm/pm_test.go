package pm

import (
	"strings"
	"testing"
)

func TestEachAndFind(t *testing.T) {
	var got []string
	src := []byte("one two  three")
	err := Each("%a+", src, 0, nil, func(m *MatchData) bool {
		got = append(got, string(src[m.Capture(0):m.Capture(1)]))
		return len(got) < 2
	})
	if err != nil || strings.Join(got, ",") != "one,two" {
		t.Fatalf("Each: %v %v", got, err)
	}
	ms, err := Find("(%a)(%a)", []byte("abcd"), 0, -1, nil)
	if err != nil || len(ms) != 2 {
		t.Fatalf("Find: %d %v", len(ms), err)
	}
	if _, err := Find("[a", []byte("x"), 0, 1, nil); err == nil {
		t.Fatal("malformed pattern accepted")
	}
}

// TestBudgetHook: the hook sees the matcher's work and can stop it.
func TestBudgetHook(t *testing.T) {
	type stop struct{}
	var seen int
	b := &Budget{Hook: func(n int) {
		seen += n
		if seen >= 1<<20 {
			panic(stop{})
		}
	}}
	defer func() {
		if r := recover(); r != (stop{}) {
			t.Fatalf("recovered %v, want the hook's panic", r)
		}
		if seen < 1<<20 || seen > 1<<20+budgetEvery {
			t.Fatalf("hook saw %d steps", seen)
		}
	}()
	_, _ = Find(".-.-.-.-b", []byte(strings.Repeat("a", 5000)), 0, 1, b)
	t.Fatal("the pathological match was not stopped")
}

func TestRecursionCap(t *testing.T) {
	_, err := Find(".*b", []byte(strings.Repeat("a", 2*maxRecursionLevel)), 0, 1, nil)
	if err == nil || !strings.Contains(err.Error(), "too complex") {
		t.Fatalf("deep recursion: %v", err)
	}
}

// TestMaxCaptures: at most MaxCaptures captures, position captures
// included, as in Lua 5.1; the parser recursed once per '(' without limit,
// and 16 million of them overflowed the Go stack.
func TestMaxCaptures(t *testing.T) {
	for _, p := range []string{strings.Repeat("(a)", MaxCaptures), strings.Repeat("()", MaxCaptures), strings.Repeat("(", MaxCaptures) + strings.Repeat(")", MaxCaptures)} {
		if _, err := Find(p, []byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), 0, 1, nil); err != nil {
			t.Fatalf("%q: %v", p, err)
		}
	}
	for _, p := range []string{strings.Repeat("(a)", MaxCaptures+1), strings.Repeat("()", MaxCaptures+1), "%((" + strings.Repeat("(", 100000)} {
		if _, err := Find(p, []byte("a"), 0, 1, nil); err == nil || err.Error() != "too many captures" {
			t.Fatalf("%.20q...: %v, want too many captures", p, err)
		}
	}
}

// TestCompileOnce: a compiled pattern matches any number of times.
func TestCompileOnce(t *testing.T) {
	p, err := Compile("(%a+)=(%d+)")
	if err != nil {
		t.Fatal(err)
	}
	src := []byte("a=1 bb=22 c=x")
	for range 2 {
		var got []string
		err := p.Each(src, 0, nil, func(m *MatchData) bool {
			got = append(got, string(src[m.Capture(2):m.Capture(3)])+":"+string(src[m.Capture(4):m.Capture(5)]))
			return true
		})
		if err != nil || strings.Join(got, ",") != "a:1,bb:22" {
			t.Fatalf("Each: %v %v", got, err)
		}
	}
	if _, err := Compile("[a"); err == nil {
		t.Fatal("malformed pattern compiled")
	}
	if p.Size() < 64*len(p.insts) {
		t.Fatalf("Size %d for %d instructions", p.Size(), len(p.insts))
	}
}

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

package pm

import (
	"strings"
	"testing"
)

// The open-capture tracking (back-references) costs no allocation per
// start position (a first version appended to a slice at each one: +35 %
// on a 1,000-byte subject without a match).
func TestAllocsPerAttempt(t *testing.T) {
	src := []byte(strings.Repeat("y", 1000))
	pat, err := Compile("x")
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		_ = pat.Each(src, 0, nil, func(*MatchData) bool { return true })
	})
	t.Logf("%.0f allocations for 1001 attempts", allocs)
	if allocs > 3*1001+10 {
		t.Errorf("%.0f allocations for 1001 attempts of a pattern without captures (3 per attempt before the open-capture tracking)", allocs)
	}
}

func BenchmarkFindMiss(b *testing.B) {
	src := []byte(strings.Repeat("y", 1000))
	pat, _ := Compile("x")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = pat.Each(src, 0, nil, func(*MatchData) bool { return true })
	}
}

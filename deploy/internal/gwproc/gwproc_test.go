package gwproc

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStatCPU(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 75.
	line := "4242 (moon (gate) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 123 456 789\n"
	if d, err := statCPU([]byte(line)); err != nil || d != 3250*time.Millisecond {
		t.Fatalf("statCPU = %v, %v; want 3.25s", d, err)
	}
	for _, bad := range []string{"", "4242 moongate S 1", "4242 (m) S 1 2 3", "4242 (m) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 75 0",
		"4242 (m) S 1 4242 4242 0 -1 4194560 100 0 0 0 -5 75 0"} {
		if d, err := statCPU([]byte(bad)); err == nil {
			t.Errorf("statCPU(%q) = %v, want an error", bad, d)
		}
	}
	// This very process: burns a little processor time, which shows.
	self, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	before, err := statCPU(self)
	if err != nil {
		t.Fatal(err)
	}
	// Work until the reading has moved by 20ms (ticks are 10ms); on a
	// loaded machine that takes longer than 20ms of wall time, so the bound
	// is on wall time only as a hang guard.
	x := 0
	after := before
	start := time.Now()
	for after-before < 20*time.Millisecond && time.Since(start) < 20*time.Second {
		for range 1000 {
			x += len(strings.Repeat("x", 100))
		}
		if self, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", os.Getpid())); err != nil {
			t.Fatal(err)
		}
		if after, err = statCPU(self); err != nil {
			t.Fatal(err)
		}
	}
	if after-before < 20*time.Millisecond {
		t.Fatalf("processor time %v -> %v after %v of work (%d)", before, after, time.Since(start), x)
	}
}

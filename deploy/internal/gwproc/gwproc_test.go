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
	x := 0
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
		x += len(strings.Repeat("x", 100))
	}
	self, _ = os.ReadFile(fmt.Sprintf("/proc/%d/stat", os.Getpid()))
	after, err := statCPU(self)
	if err != nil || after-before < 20*time.Millisecond {
		t.Fatalf("processor time %v -> %v (%v) after 100ms of work (%d)", before, after, err, x)
	}
}

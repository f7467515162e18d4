package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--nope"}, {"extra"}, {"--devices", "x"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

func TestBadOptions(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"--binary", "/nonexistent/moongate", "--devices", "5000"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "devices 5000") {
		t.Fatalf("run = %d, stderr %q", code, errb.String())
	}
}

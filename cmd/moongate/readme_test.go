package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestReadmeFnTest runs the README walk-through's `fn test` step.
func TestReadmeFnTest(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fn", "test", "../../docs/examples/functions/reference.lua",
		"--event", "../../docs/examples/events/hot.json"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{`"temp_f":194`, `devices/greenhouse-1/cmd`, `{"fan":"on"}`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
}

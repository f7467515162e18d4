package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/moongate-edge/moongate/gateway/config"
)

func TestJournalPrefixes(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log := newLogger(config.Log{Level: "debug", Format: format}, &buf, true)
		log.Debug("d")
		log.Info("i")
		log.With("k", "v").WithGroup("g").Warn("w", "x", 1)
		log.Error("e")
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		want := []string{"<7>", "<6>", "<4>", "<3>"}
		if len(lines) != len(want) {
			t.Fatalf("%s: %d lines: %q", format, len(lines), buf.String())
		}
		for i, l := range lines {
			if !strings.HasPrefix(l, want[i]) || strings.Count(l, "<") != 1 {
				t.Errorf("%s: line %d %q, want prefix %s once", format, i, l, want[i])
			}
		}
		if !strings.Contains(lines[2], "k") || !strings.Contains(lines[2], "g") {
			t.Errorf("%s: attrs and group lost: %q", format, lines[2])
		}
	}
	// Not to the journal: no prefix.
	var buf bytes.Buffer
	newLogger(config.Log{Level: "info", Format: "text"}, &buf, false).Error("e")
	if strings.HasPrefix(buf.String(), "<") {
		t.Fatalf("prefix without the journal: %q", buf.String())
	}
}

// Records logged concurrently, from derived loggers too, keep their own
// prefix (run with -race).
func TestJournalPrefixesConcurrent(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(config.Log{Level: "info", Format: "text"}, &buf, true)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("g", g)
			for range 200 {
				if g%2 == 0 {
					l.Error("bad")
				} else {
					l.Info("fine")
				}
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1600 {
		t.Fatalf("%d lines, want 1600", len(lines))
	}
	for _, l := range lines {
		if !(strings.HasPrefix(l, "<3>") && strings.Contains(l, "level=ERROR")) && !(strings.HasPrefix(l, "<6>") && strings.Contains(l, "level=INFO")) {
			t.Fatalf("line %q: prefix does not match its level", l)
		}
	}
}

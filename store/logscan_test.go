package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// cancelAfterFirstCheck is a context that is live at its first check and
// cancelled from the second on: a client that hangs up once a scan has
// started.
type cancelAfterFirstCheck struct {
	context.Context
	mu     sync.Mutex
	checks int
	done   chan struct{}
}

func (c *cancelAfterFirstCheck) Done() <-chan struct{} { return c.done }

func (c *cancelAfterFirstCheck) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checks++
	if c.checks == 2 {
		close(c.done)
	}
	if c.checks >= 2 {
		return context.Canceled
	}
	return nil
}

// ScanLogs reads at most MaxLogScan lines per call and reports where it
// stopped, so a reader filtering on an invocation moves past the lines
// that do not match; a scan ends with its context.
func TestScanLogsBounded(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Dir: t.TempDir(), Durability: DurabilityNone})
	const n = 2*MaxLogScan + 5000
	now := time.Now().UnixMilli()
	for i := 1; i <= n; i += 500 {
		var logs []LogRecord
		for j := i; j < i+500 && j <= n; j++ {
			inv := "a"
			if j == n {
				inv = "b"
			}
			logs = append(logs, LogRecord{Function: "f", InvocationID: inv, Level: "info", Msg: fmt.Sprint("line ", j), TS: now})
		}
		if _, err := s.Commit(ctx, &Commit{Logs: logs}); err != nil {
			t.Fatal(err)
		}
	}
	for _, fn := range []string{"", "f"} {
		// Only the last line is of invocation b: each call reads
		// MaxLogScan lines and moves past them.
		var after uint64
		var got []LogRecord
		var nexts []uint64
		for {
			lines, next, err := s.ScanLogs(ctx, fn, "b", after, 100)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, lines...)
			if next == after {
				break
			}
			nexts = append(nexts, next)
			after = next
		}
		if fmt.Sprint(nexts) != fmt.Sprint([]uint64{MaxLogScan, 2 * MaxLogScan, n}) || len(got) != 1 || got[0].Seq != n || got[0].InvocationID != "b" {
			t.Fatalf("function %q: positions %v, lines %+v", fn, nexts, got)
		}
		// Without a filter on the invocation, the limit ends the page.
		lines, next, err := s.ScanLogs(ctx, fn, "", 10, 100)
		if err != nil || len(lines) != 100 || lines[0].Seq != 11 || next != 110 {
			t.Fatalf("function %q: page of 100 after 10: %d lines, next %d, %v", fn, len(lines), next, err)
		}
		// Nothing more: next stays at after.
		if lines, next, err := s.ScanLogs(ctx, fn, "", n, 100); err != nil || len(lines) != 0 || next != n {
			t.Fatalf("function %q: at the end: %d lines, next %d, %v", fn, len(lines), next, err)
		}
		// A scan ends when its context does.
		cctx := &cancelAfterFirstCheck{Context: ctx, done: make(chan struct{})}
		if _, _, err := s.ScanLogs(cctx, fn, "nomatch", 0, 100); !errors.Is(err, context.Canceled) {
			t.Fatalf("function %q: scan with a context cancelled while it runs: %v", fn, err)
		}
	}
	if logs, err := s.QueryLogs(ctx, "f", "b", 2*MaxLogScan, 10); err != nil || len(logs) != 1 || logs[0].Seq != n {
		t.Fatalf("QueryLogs: %+v %v", logs, err)
	}
}

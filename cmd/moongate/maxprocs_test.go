package main

import (
	"fmt"
	"testing"
)

func TestApplyMaxProcs(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	cases := []struct {
		name    string
		cfg     string
		env     func(string) (string, bool)
		runtime int // GOMAXPROCS before the call
		want    int // after
		source  string
		config  string // the config attribute of the log, "" = absent
	}{
		{"default: twice the runtime's", "", noEnv, 2, 4, "max_procs", "auto (2 x the runtime's default of 2)"},
		{"auto on one core", "max_procs: auto\n", noEnv, 1, 2, "max_procs", "auto (2 x the runtime's default of 1)"},
		{"a number", "max_procs: 3\n", noEnv, 2, 3, "max_procs", ""},
		{"fewer than the cores", "max_procs: 1\n", noEnv, 8, 1, "max_procs", ""},
		{"an empty GOMAXPROCS does not count", "", func(k string) (string, bool) { return "", k == envMaxProcs }, 2, 4, "max_procs", "auto (2 x the runtime's default of 2)"},
		{"GOMAXPROCS wins", "max_procs: 6\n", func(k string) (string, bool) { return "5", k == envMaxProcs }, 5, 5, "GOMAXPROCS", "6 (not applied: GOMAXPROCS is set)"},
		{"GOMAXPROCS wins over auto", "", func(k string) (string, bool) { return "1", k == envMaxProcs }, 1, 1, "GOMAXPROCS", "auto (not applied: GOMAXPROCS is set)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			procs := tc.runtime
			var calls []int
			set := func(n int) int { // runtime.GOMAXPROCS's contract
				calls = append(calls, n)
				prev := procs
				if n > 0 {
					procs = n
				}
				return prev
			}
			var logs logLines
			got := applyMaxProcs(parseCfg(t, tc.cfg), tc.env, set, jsonLogger(&logs))
			if got != tc.want || procs != tc.want {
				t.Errorf("applyMaxProcs = %d, GOMAXPROCS %d; want %d (calls %v)", got, procs, tc.want, calls)
			}
			recs := logs.records(t, "processors")
			if len(recs) != 1 {
				t.Fatalf("%d processors log lines:\n%s", len(recs), logs.buf.String())
			}
			r := recs[0]
			if fmt.Sprint(r["max_procs"]) != fmt.Sprint(tc.want) || r["source"] != tc.source {
				t.Errorf("log %v, want max_procs %d from %s", r, tc.want, tc.source)
			}
			if c, _ := r["config"].(string); c != tc.config {
				t.Errorf("log config %q, want %q", c, tc.config)
			}
		})
	}
}

package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable writes the result as one Markdown table with a header line.
func (res *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "moongate-bench %s: %s, %d cores, load %s -> %s, %d devices x %d in flight, %.1fs phases%s\n\n",
		res.Date, res.CPU, res.Cores, res.LoadFrom, res.LoadTo, res.Devices, res.Inflight, res.PhaseSec, map[bool]string{true: " (short)"}[res.Short])
	b.WriteString("| scenario | events/s | x raw | latency at events/s | p50 ms | p99 ms | max ms | p50 x raw | p99 x raw | events | lost | dups | CPU ms/1k ev | disk B/ev | RSS idle MiB | RSS peak MiB | note |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	f := func(v float64, format string) string {
		if v == 0 {
			return ""
		}
		return fmt.Sprintf(format, v)
	}
	for _, r := range res.Rows {
		note := r.Note
		if !r.ExactLatency && r.Samples > 0 {
			note = strings.TrimSpace("latency from payload ms timestamps (±1 ms); " + note)
		}
		if r.Error != "" {
			note = strings.TrimSpace(note + " ERROR: " + r.Error)
		}
		lat := func(v float64) string {
			if r.Samples == 0 {
				return ""
			}
			return fmt.Sprintf("%.2f", v)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s | %s | %s | %s | %s |\n",
			r.Scenario, f(r.Throughput, "%.0f"), f(r.RatioThroughput, "%.2f"), f(r.LatencyRate, "%.0f"),
			lat(r.P50), lat(r.P99), lat(r.Max), f(r.RatioP50, "%.2f"), f(r.RatioP99, "%.2f"),
			r.Events, r.Lost, r.Dups, f(r.CPUPer1k, "%.0f"), f(r.DiskPerEvent, "%.0f"),
			f(float64(r.RSSIdle)/(1<<20), "%.1f"), f(float64(r.RSSPeak)/(1<<20), "%.1f"), strings.ReplaceAll(note, "|", "/"))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

package apiserver

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
)

// Metric is one sample for /metrics, in the Prometheus text exposition
// format (version 0.0.4). Samples of one Name must be given together and
// with the same Help and Type.
type Metric struct {
	Name   string
	Help   string
	Type   string // "counter" or "gauge"
	Labels [][2]string
	Value  float64
}

// callMetrics counts API calls by method and status code.
type callMetrics struct {
	mu     sync.Mutex
	counts map[[2]string]uint64
}

func newCallMetrics() *callMetrics { return &callMetrics{counts: map[[2]string]uint64{}} }

func (m *callMetrics) call(method string, code codes.Code) {
	m.mu.Lock()
	m.counts[[2]string{method, code.String()}]++
	m.mu.Unlock()
}

func (m *callMetrics) samples() []Metric {
	m.mu.Lock()
	keys := make([][2]string, 0, len(m.counts))
	for k := range m.counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	out := make([]Metric, 0, len(keys))
	for _, k := range keys {
		out = append(out, Metric{Name: "moongate_api_calls_total", Help: "API calls by method and gRPC status code.", Type: "counter",
			Labels: [][2]string{{"method", k[0]}, {"code", k[1]}}, Value: float64(m.counts[k])})
	}
	m.mu.Unlock()
	return out
}

// serveMetrics writes the Prometheus text format. It is hand-written: a
// few dozen samples do not justify client_golang's weight on a Pi (see
// docs/api.md).
func (s *Server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	ms := s.metrics.samples()
	if s.cfg.Metrics != nil {
		ms = append(s.cfg.Metrics(), ms...)
	}
	bw := bufio.NewWriter(w)
	WriteMetrics(bw, ms)
	_ = bw.Flush()
}

// WriteMetrics writes ms in the Prometheus text exposition format.
func WriteMetrics(w *bufio.Writer, ms []Metric) {
	last := ""
	for _, m := range ms {
		if m.Name != last {
			fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", m.Name, escapeHelp(m.Help), m.Name, m.Type)
			last = m.Name
		}
		w.WriteString(m.Name)
		if len(m.Labels) > 0 {
			w.WriteByte('{')
			for i, l := range m.Labels {
				if i > 0 {
					w.WriteByte(',')
				}
				fmt.Fprintf(w, "%s=\"%s\"", l[0], escapeLabel(l[1]))
			}
			w.WriteByte('}')
		}
		w.WriteByte(' ')
		w.WriteString(formatValue(m.Value))
		w.WriteByte('\n')
	}
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

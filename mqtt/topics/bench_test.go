package topics

import (
	"fmt"
	"testing"
)

func BenchmarkMatch(b *testing.B) {
	cases := []struct{ name, filter, topic string }{
		{"exact", "devices/dev-0042/telemetry", "devices/dev-0042/telemetry"},
		{"plus", "devices/+/telemetry", "devices/dev-0042/telemetry"},
		{"hash", "devices/#", "devices/dev-0042/telemetry/temperature"},
		{"miss", "devices/+/state", "devices/dev-0042/telemetry"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if Match(c.filter, c.topic) != (c.name != "miss") {
					b.Fatal("wrong result")
				}
			}
		})
	}
}

// BenchmarkMatchAny100 is the per-message filter check with 100 function
// triggers, the last one matching.
func BenchmarkMatchAny100(b *testing.B) {
	filters := make([]string, 100)
	for i := range filters {
		filters[i] = fmt.Sprintf("site/%d/+/telemetry", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !MatchAny(filters, "site/99/dev-1/telemetry") {
			b.Fatal("no match")
		}
	}
}

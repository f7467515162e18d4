package sync

import (
	"testing"

	"github.com/moongate-edge/moongate/store"
)

func TestTemplates(t *testing.T) {
	r := &store.Record{Stream: "temps.raw", Function: "f", Device: "a/b+#"}
	for _, c := range []struct {
		tpl   string
		clean func(string) string
		want  string
	}{
		{DefaultMQTTTopic, cleanMQTT, "gateways/gw/temps.raw"},
		{"x/{device}/{function}/{unknown}/{", cleanMQTT, "x/a_b__/f/{unknown}/{"},
		{DefaultNATSSubject, cleanNATS, "gateways.gw.temps_raw"},
		{"g.{device}", cleanNATS, "g.a/b+#"},
		{"{stream}{stream}", cleanMQTT, "temps.rawtemps.raw"},
	} {
		if got := parseTemplate(c.tpl, c.clean).expand("gw", r); got != c.want {
			t.Errorf("%q: %q, want %q", c.tpl, got, c.want)
		}
	}
	if got := parseTemplate("{device}", cleanNATS).expand("gw", &store.Record{}); got != "_" {
		t.Errorf("empty device: %q", got)
	}
}

package sync

import (
	"math"
	"testing"
	"time"

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
	// What MQTT says a topic should not hold and mosquitto refuses by
	// closing the connection (the record then blocked its outbox forever):
	// control characters and non-characters. U+FFFD (an invalid byte
	// replaced) and other text stay.
	for in, want := range map[string]string{
		"bad\tstream": "bad_stream", "a\x01\x1f\x7fb": "a___b", "c\u0085d": "c_d",
		"e\ufdd0\uffff\U0001fffef": "e___f", "ok\ufffd\u00e9\u4e16": "ok\ufffd\u00e9\u4e16", "bad\xffutf8": "bad\ufffdutf8",
	} {
		if got := cleanMQTT(in); got != want {
			t.Errorf("cleanMQTT(%q) = %q, want %q", in, got, want)
		}
	}
	if got := parseTemplate("{device}", cleanNATS).expand("gw", &store.Record{}); got != "_" {
		t.Errorf("empty device: %q", got)
	}
	// A topic must be UTF-8: a broker drops a client that publishes to
	// anything else, and the record would block the target on every retry.
	if got := parseTemplate("d/{device}", cleanMQTT).expand("gw", &store.Record{Device: "a\xffb/c"}); got != "d/a\uFFFDb_c" {
		t.Errorf("invalid UTF-8 device: %q", got)
	}
}

// TestBackoffSaturates: however long backoff.max (the config refuses more
// than 24h; an embedder could pass more), the doubling towards it never
// overflows into a negative wait (rand.Int64N panicked at attempt 36 of a
// 2562047h maximum).
func TestBackoffSaturates(t *testing.T) {
	for _, maxB := range []time.Duration{time.Minute, 24 * time.Hour, 2562047 * time.Hour, time.Duration(math.MaxInt64)} {
		w := &worker{cfg: TargetConfig{InitialBackoff: 500 * time.Millisecond, MaxBackoff: maxB}}
		for i := 0; i < 100; i++ {
			if d := w.backoff(0); d < 10*time.Millisecond || d > maxB {
				t.Fatalf("max %v, attempt %d: wait %v", maxB, i, d)
			}
		}
	}
}

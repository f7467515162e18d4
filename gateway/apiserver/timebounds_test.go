package apiserver_test

import (
	"net/url"
	"testing"
	"time"
)

// TestRecordBoundsBelowAMillisecond: from (inclusive) and to (exclusive)
// are times; a record at t is before to = t + 0.5 ms, and before from =
// t + 0.5 ms too, so it belongs to the first range and not the second.
// Both are rounded down to the millisecond: the record is left out of
// the first and listed in the second.
func TestRecordBoundsBelowAMillisecond(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	dev := connect(t, e.mqtt, "d1")
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "telemetry", "source": telemetrySource(1), "manifest": telemetryManifest}, nil)
	publish(t, dev, "devices/d1/telemetry", `{"temp": 20}`)
	recs := e.waitRecords("function=telemetry", 1)
	ts, err := time.Parse(time.RFC3339Nano, field(recs[0], "event_time").(string))
	if err != nil {
		t.Fatal(err)
	}
	half := ts.Add(500 * time.Microsecond).Format(time.RFC3339Nano)
	if got := e.records("function=telemetry&to=" + url.QueryEscape(half)); len(got) != 1 {
		t.Errorf("record at %s, to=%s: %d records, want 1 (the record is before to)", ts.Format(time.RFC3339Nano), half, len(got))
	}
	if got := e.records("function=telemetry&from=" + url.QueryEscape(half)); len(got) != 0 {
		t.Errorf("record at %s, from=%s: %d records, want 0 (the record is before from)", ts.Format(time.RFC3339Nano), half, len(got))
	}
}

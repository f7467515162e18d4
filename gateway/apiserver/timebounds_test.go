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

// TestFromAtEpochIsABound: from (inclusive) at exactly
// 1970-01-01T00:00:00Z is 0 ms, which the store read as "no lower bound":
// records before it (an event time given before the epoch) were listed
// and aggregated although they are before from. A from at the epoch is a
// bound like any other.
func TestFromAtEpochIsABound(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "early",
		"source": `function handle(event, ctx) return {v = 1} end`}, nil)
	for _, ts := range []string{"1969-12-31T23:00:00Z", "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00.001Z"} {
		e.mustCall(200, "POST", "/v1/functions/early:invoke", adminToken, obj{"dry_run": false, "event": obj{"time": ts}}, nil)
	}
	if all := e.records("stream=early"); len(all) != 3 {
		t.Fatalf("%d records, want 3", len(all))
	}
	const epoch = "1970-01-01T00:00:00Z"
	for _, order := range []string{"", "&order=ORDER_DESC"} {
		recs := e.records("stream=early&from=" + epoch + order)
		if len(recs) != 1 || field(recs[0], "event_time") != "1970-01-01T00:00:00.001Z" {
			t.Errorf("from=%s%s: %d records %v, want only the one after it", epoch, order, len(recs), recs)
		}
	}
	var agg obj
	e.mustCall(200, "GET", "/v1/records:aggregate?stream=early&field=v&from="+epoch, readToken, nil, &agg)
	bs, _ := agg["buckets"].([]any)
	if len(bs) != 1 || field(bs[0], "count") != "1" || field(bs[0], "start") != epoch {
		t.Errorf("aggregate from=%s: %v, want one bucket of 1 starting at the epoch", epoch, bs)
	}
}

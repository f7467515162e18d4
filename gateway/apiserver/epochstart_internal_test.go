package apiserver

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/moongate-edge/moongate/store"
)

// getJSON GETs base+path with token and decodes the JSON answer.
func getJSON(t *testing.T, base, path, token string, out any) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %s: %v", path, b, err)
	}
}

// TestBucketAtEpochHasStart: a Pi without a real-time clock boots at
// 1970-01-01T00:00:00Z, so its first records and usage fall in the bucket
// that starts at the Unix epoch. That bucket came without "start" (a time
// of 0 ms was taken for "unset"), so a client could not tell which bucket
// it was; every bucket of an aggregate and of the usage now says where it
// starts.
func TestBucketAtEpochHasStart(t *testing.T) {
	base, readTok, _, srv := limitServerSrv(t, Config{})
	st := srv.cfg.Store.(*store.Store)
	ctx := context.Background()
	for _, ms := range []int64{10 * 60_000, 70 * 60_000} {
		if _, err := st.Commit(ctx, &store.Commit{
			Records: []store.Record{{Stream: "agg", Device: "d", EventTS: ms, Data: []byte(`{"v":1}`)}},
			Usage:   &store.Usage{Function: "f", TS: ms, Invocations: 1},
		}); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"1970-01-01T00:00:00Z", "1970-01-01T01:00:00Z"}
	var agg struct {
		Buckets []struct {
			Start *string `json:"start"`
		} `json:"buckets"`
	}
	getJSON(t, base, "/v1/records:aggregate?stream=agg&field=v&bucket=3600s", readTok, &agg)
	var usage struct {
		Usage []struct {
			Start *string `json:"start"`
		} `json:"usage"`
	}
	getJSON(t, base, "/v1/usage?function=f&bucket=3600s", readTok, &usage)
	if len(agg.Buckets) != 2 || len(usage.Usage) != 2 {
		t.Fatalf("%d aggregate buckets, %d usage rows; want 2 each", len(agg.Buckets), len(usage.Usage))
	}
	for i, w := range want {
		if s := agg.Buckets[i].Start; s == nil || *s != w {
			t.Errorf("aggregate bucket %d: start %v, want %s", i, s, w)
		}
		if s := usage.Usage[i].Start; s == nil || *s != w {
			t.Errorf("usage row %d: start %v, want %s", i, s, w)
		}
	}
	// Without a bucket width the one bucket starts at from: none when
	// from is open.
	agg.Buckets = nil
	getJSON(t, base, "/v1/records:aggregate?stream=agg&field=v", readTok, &agg)
	if len(agg.Buckets) != 1 || agg.Buckets[0].Start != nil {
		t.Errorf("aggregate without bucket or from: %+v, want one bucket without start", agg.Buckets)
	}
}

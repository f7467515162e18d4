package apiserver_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bigRecords deploys a function and makes it store 16 records of ~60 KB
// of small objects: a page of ~1 MiB (the page byte cap).
func bigRecords(t *testing.T, e *env) {
	t.Helper()
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "objs",
		"source": `function handle(event, ctx)
  local t = {}
  for i = 1, 20000 do t[i] = {} end
  for j = 1, 4 do emit("objs", {f = t}) end
  return nil
end`}, nil)
	for range 4 {
		e.mustCall(200, "POST", "/v1/functions/objs:invoke", adminToken, obj{"dry_run": false}, nil)
	}
}

// readPage is a REST GET of the records page without the harness's
// OpenAPI check (it decodes the whole answer): the number of body bytes.
func readPage(e *env) (int, int64, error) {
	req, err := http.NewRequest("GET", e.base+"/v1/records?stream=objs&limit=1000", nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+readToken)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, n, err
}

// TestRESTQueryRecordsMemoryBounded: a REST page of ~1 MiB of records
// takes about 3.5 times that while it is built (store read, the answer
// carried to the REST gateway, its JSON), and nothing bounded how many
// were built at once: 32 concurrent queries of a read token grew the heap
// by 114 MiB (the connection limit allows 128). REST reads now take one of
// a few slots until their response starts (36-44 MiB here).
func TestRESTQueryRecordsMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	bigRecords(t, e)
	var pages atomic.Int64
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, n, err := readPage(e)
				if err != nil || code != 200 || n < 900<<10 {
					t.Errorf("page: %d, %d bytes, %v", code, n, err)
					return
				}
				pages.Add(1)
			}()
		}
		wg.Wait()
	})
	t.Logf("32 concurrent REST QueryRecords of ~1 MiB pages: heap in use grew by up to %d MiB", grown>>20)
	if pages.Load() != 32 {
		t.Fatalf("%d pages of 32", pages.Load())
	}
	if grown > 80<<20 {
		t.Fatalf("32 REST QueryRecords of a read token took %d MiB of heap (pages of ~1 MiB)", grown>>20)
	}
}

// TestRESTReadSlotsFreedByStalledClients: the slot of a REST read is
// freed once its response starts, so clients that never read their
// answers (HTTP/2 windows at 0) do not hold every slot: other reads go on.
func TestRESTReadSlotsFreedByStalledClients(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	bigRecords(t, e)
	addr := strings.TrimPrefix(e.base, "http://")
	var resets atomic.Int32
	// More stalled responses than slots, on two connections.
	stalledGETs(t, addr, "/v1/records?stream=objs&limit=1000", 8, &resets)
	stalledGETs(t, addr, "/v1/records?stream=objs&limit=1000", 8, &resets)
	code, n, err := readPage(e)
	if err != nil || code != 200 || n < 900<<10 {
		t.Fatalf("a read beside 16 stalled ones: %d, %d bytes, %v", code, n, err)
	}
}

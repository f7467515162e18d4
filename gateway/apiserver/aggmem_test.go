package apiserver_test

import (
	"encoding/json"
	"sync"
	"testing"
)

// An aggregate reads one numeric field, but store.jsonField decodes each
// record's whole JSON (~20 times its size), and aggregates were not
// bounded in number: 16 concurrent REST aggregates of one read-token
// client over 8 records of ~0.9 MB took 412 MiB. At most two run at once
// now; the bar is TestGRPCQueryRecordsMemoryBounded's (128 MiB).
func TestAggregateMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "big",
		"source": `function handle(event, ctx)
  local p = {}
  for i = 1, 450000 do p[i] = 0 end
  emit("big", {t = 1, p = p})
  return nil
end`,
		"limits": obj{"timeout": "10s", "max_steps": "100000000", "max_memory_bytes": "134217728", "max_effect_bytes": "1000000"}}, nil)
	for i := 0; i < 8; i++ {
		var inv obj
		e.mustCall(200, "POST", "/v1/functions/big:invoke", adminToken, obj{"dry_run": false}, &inv)
		if inv["error"] != "" {
			t.Fatalf("invoke: %v", inv["error"])
		}
	}
	var sum float64
	var mu sync.Mutex
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, b := e.call("GET", "/v1/records:aggregate?stream=big&field=t", readToken, nil)
				if code != 200 {
					t.Errorf("aggregate: %d %s", code, b)
					return
				}
				var out obj
				if err := json.Unmarshal(b, &out); err != nil {
					t.Error(err)
					return
				}
				c, _ := field(out, "buckets.0.count").(string)
				mu.Lock()
				if c == "8" {
					sum++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
	})
	t.Logf("16 concurrent REST aggregates over 8 records of ~0.9 MB (answers of one bucket): heap in use grew by up to %d MiB", grown>>20)
	if sum != 16 {
		t.Fatalf("%v of 16 aggregates counted 8 records", sum)
	}
	if grown > 128<<20 {
		t.Fatalf("16 aggregates of one read-token client took %d MiB of heap to answer one bucket each", grown>>20)
	}
}

package apiserver_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestListFunctionsMemoryBounded: the function list has no sources, but
// the store read every function's active version, source included (up to
// 256 KiB each), and held them all until the list was built: 32
// concurrent lists of 20 functions of ~200 KiB took 63-105 MiB of heap (21-27 now). The
// list now reads one function at a time (Store.EachFunction).
func TestListFunctionsMemoryBounded(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	src := "-- " + strings.Repeat("x", 200<<10) + "\nfunction handle(event, ctx) return nil end"
	const fns = 20
	for i := range fns {
		e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": fmt.Sprintf("f%02d", i), "source": src}, nil)
	}
	list := func() {
		code, body := e.call("GET", "/v1/functions", readToken, nil)
		if code != 200 || strings.Count(string(body), `"name"`) != fns || strings.Contains(string(body), "xxxx") {
			t.Errorf("list: %d, %d names, %d bytes", code, strings.Count(string(body), `"name"`), len(body))
		}
	}
	list()
	grown := peakHeapGrowth(func() {
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				list()
			}()
		}
		wg.Wait()
	})
	t.Logf("32 concurrent lists of %d functions of %d KiB: heap in use grew by up to %d MiB", fns, len(src)>>10, grown>>20)
	if grown > 48<<20 {
		t.Fatalf("32 function lists took %d MiB of heap (the list holds no source)", grown>>20)
	}
}

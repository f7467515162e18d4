package apiserver_test

import (
	"fmt"
	"testing"
	"time"
)

// TestReplayAllAndPurge replays every dead letter of a function that still
// fails: each goes back to the inbox once (the call ends although the
// replayed events fail again), then purge deletes them; dead letters of a
// deleted function are skipped, not lost.
func TestReplayAllAndPurge(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	failing := `function handle(event, ctx) error("always") end`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "bad", "source": failing, "manifest": "triggers:\n  - mqtt: bad/{device}\n"}, nil)
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "gone", "source": failing, "manifest": "triggers:\n  - mqtt: gone/{device}\n"}, nil)
	dev := connect(t, e.mqtt, "dl")
	for i := 0; i < 3; i++ {
		publish(t, dev, fmt.Sprintf("bad/d%d", i), fmt.Sprintf(`{"n": %d}`, i))
	}
	publish(t, dev, "gone/d9", `{}`)
	count := func(query string) int {
		var dls obj
		e.mustCall(200, "GET", "/v1/deadletters?"+query, readToken, nil, &dls)
		return len(dls["dead_letters"].([]any))
	}
	waitFor(t, 20*time.Second, "4 dead letters", func() bool { return count("") == 4 })
	e.mustCall(200, "DELETE", "/v1/functions/gone", adminToken, nil, nil)

	var rep obj
	e.mustCall(200, "POST", "/v1/deadletters:replay", adminToken, obj{"all": true}, &rep)
	if rep["replayed"] != "3" || rep["skipped"] != "1" || len(rep["errors"].([]any)) != 1 {
		t.Fatalf("replay all: %v", rep)
	}
	// The replayed events fail again and come back as new dead letters;
	// the one of the deleted function stayed.
	waitFor(t, 20*time.Second, "3 new dead letters", func() bool { return count("function=bad") == 3 })
	if n := count("function=gone"); n != 1 {
		t.Fatalf("dead letters of the deleted function: %d", n)
	}
	var dls obj
	e.mustCall(200, "GET", "/v1/deadletters?function=bad&limit=1", readToken, nil, &dls)
	if field(dls, "dead_letters.0.seq") == "1" || field(dls, "dead_letters.1") != nil {
		t.Fatalf("limit 1 after replay: %v", dls)
	}
	var pur obj
	e.mustCall(200, "POST", "/v1/deadletters:purge", adminToken, obj{"function": "bad"}, &pur)
	if pur["purged"] != "3" || count("") != 1 {
		t.Fatalf("purge: %v, %d left", pur, count(""))
	}
	e.mustCall(200, "POST", "/v1/deadletters:purge", adminToken, obj{"all": true}, &pur)
	if pur["purged"] != "1" || count("") != 0 {
		t.Fatalf("purge all: %v", pur)
	}
}

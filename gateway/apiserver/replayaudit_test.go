package apiserver_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPartialReplayIsAudited: a replay of all dead letters that
// fails part way (here the caller's deadline while a later dead letter
// waits for room in its function's backlog) has already put the first
// dead letters back into the inbox (and deleted them), but the call
// returns before its audit line: an admin's change to the gateway is not
// in the audit log.
func TestPartialReplayIsAudited(t *testing.T) {
	var logs syncBuffer
	e := startDaemonWith(t, daemonConfig(t.TempDir(), "  function_backlog: 1\n  inbox_limit: 64\n"), nil, &logs)
	src := `function handle(event, ctx)
  if state.get("slow") then
    local t0 = time.now_ms()
    while time.now_ms() - t0 < 5000 do end
  end
  error("always")
end`
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "bad", "source": src,
		"manifest": "triggers:\n  - mqtt: bad/{device}\nlimits: {timeout: 20s, max_steps: 10000000000}\n"}, nil)
	dev := connect(t, e.mqtt, "dl")
	publish(t, dev, "bad/d1", `{}`)
	publish(t, dev, "bad/d2", `{}`)
	count := func() int {
		var dls obj
		e.mustCall(200, "GET", "/v1/deadletters?function=bad", readToken, nil, &dls)
		return len(dls["dead_letters"].([]any))
	}
	waitFor(t, 20*time.Second, "2 dead letters", func() bool { return count() == 2 })
	e.mustCall(200, "PUT", "/v1/functions/bad/state/slow", adminToken, "true", nil)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", e.base+"/v1/deadletters:replay", bytes.NewReader([]byte(`{"function":"bad"}`)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("replay answered %d before its deadline: the second dead letter did not wait", resp.StatusCode)
	}
	// The first dead letter was replayed (deleted and queued), the call failed.
	waitFor(t, 10*time.Second, "one dead letter left", func() bool { return count() == 1 })
	waitFor(t, 10*time.Second, "the call to end on the server", func() bool {
		_, m := e.call("GET", "/metrics", readToken, nil)
		return strings.Contains(string(m), `method="/moongate.v1.DeadLetterService/ReplayDeadLetters"`)
	})
	if !strings.Contains(logs.String(), `audit=replay`) {
		t.Fatalf("a dead letter was replayed (2 -> 1) but no audit line was written:\n%s", logs.String())
	}
}

// TestReplayAllSkipsDeadLetterThatNeverFits: a dead letter whose event
// can never enter the inbox again (its quota lowered since: more than new
// events may ever hold) stopped a replay of all dead letters at it, so
// every dead letter after it stayed; it is skipped with its reason, and
// the others are replayed.
func TestReplayAllSkipsDeadLetterThatNeverFits(t *testing.T) {
	dataDir := t.TempDir()
	a := startDaemon(t, daemonConfig(dataDir, ""))
	a.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "bad", "source": `function handle(e) error("always") end`,
		"manifest": "triggers:\n  - mqtt: bad/{device}\n"}, nil)
	dev := connect(t, a.mqtt, "dl")
	publish(t, dev, "bad/d1", strings.Repeat("x", 100<<10))
	publish(t, dev, "bad/d2", `{}`)
	waitFor(t, 20*time.Second, "2 dead letters", func() bool {
		var dls obj
		a.mustCall(200, "GET", "/v1/deadletters?function=bad", readToken, nil, &dls)
		return len(dls["dead_letters"].([]any)) == 2
	})
	dev.Disconnect(0)
	a.stop()

	e := startDaemon(t, strings.Replace(daemonConfig(dataDir, ""), "store: {durability: interval}",
		"store: {durability: interval, quotas: {inbox: {max_bytes: 64KiB, policy: reject_new}}}", 1))
	var out obj
	e.mustCall(200, "POST", "/v1/deadletters:replay", adminToken, obj{"all": true}, &out)
	if fmt.Sprint(out["replayed"]) != "1" || fmt.Sprint(out["skipped"]) != "1" {
		t.Fatalf("replay all: %v, want 1 replayed (the small event) and 1 skipped (the one that never fits)", out)
	}
	if errs, _ := out["errors"].([]any); len(errs) != 1 || !strings.Contains(errs[0].(string), "ever hold") {
		t.Fatalf("skip reasons %v, want the inbox quota's", out["errors"])
	}
}

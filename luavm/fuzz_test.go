package luavm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// fuzzLimits are small so that each fuzz input runs quickly.
var fuzzLimits = Limits{MaxSteps: 200_000, MaxMemory: 1 << 20, Timeout: time.Second, MaxCallDepth: 100}

// Slack by which an invocation may overshoot a limit before it is
// stopped: one accounted operation (at most MaxMemory/64 steps), and the
// table growth between two table scans.
const (
	stepSlack = 1<<20/64 + 4096
	memSlack  = 512 << 10
	wallSlack = 3 * time.Second
)

var fuzzSeq atomic.Int64

// FuzzInvoke deploys arbitrary source and runs it on an arbitrary payload:
// no panic may escape, every error must be one of the package's kinds, and
// no limit may be exceeded by more than its slack.
func FuzzInvoke(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.lua")
	for _, s := range seeds {
		f.Add(string(mustRead(f, s)), []byte(`{"temp": 90, "list": [1, 2, {"a": null}]}`))
	}
	f.Add("function handle(e) return json.decode(e.payload) end", []byte(`[1, 2, "x", {"y": false}]`))
	f.Add("function handle(e) return e.payload:rep(3) .. #e.payload end", []byte("\x00\xff"))
	rt := NewRuntime(Options{DefaultLimits: fuzzLimits, Logger: slog.New(slog.DiscardHandler)})
	f.Cleanup(rt.Close)
	f.Fuzz(func(t *testing.T, src string, payload []byte) {
		name := fmt.Sprintf("f%d", fuzzSeq.Add(1))
		if err := rt.Deploy(context.Background(), Spec{Name: name, Source: []byte(src)}); err != nil {
			return // compile errors are tested elsewhere
		}
		defer rt.Remove(name)
		// An invocation that never returns is a failure too (it crashes
		// the fuzzing process, which records the input).
		watchdog := time.AfterFunc(fuzzLimits.Timeout+4*wallSlack, func() {
			panic(fmt.Sprintf("invocation hung: source %q payload %q", src, payload))
		})
		defer watchdog.Stop()
		ev := &Event{ID: "x", Payload: payload, Captures: map[string]string{"device": "d"}, Trigger: "mqtt"}
		res, err := rt.Invoke(context.Background(), name, ev, MemoryState())
		if res == nil {
			t.Fatal("nil result")
		}
		if err != nil && res.Cost.Outcome == "ok" {
			t.Fatalf("error %v with outcome ok", err)
		}
		if err != nil && res.Cost.Outcome == "error" && !isKnown(err) {
			t.Fatalf("untyped error %v", err)
		}
		if c := res.Cost; c.Steps > fuzzLimits.MaxSteps+stepSlack || c.PeakMemory > fuzzLimits.MaxMemory+memSlack || c.Wall > fuzzLimits.Timeout+wallSlack {
			t.Fatalf("limit exceeded beyond slack: %+v (err %v)", c, err)
		}
		if err == nil && res.Kind == ResultJSON && !json.Valid(res.Value) {
			t.Fatalf("invalid JSON result %q", res.Value)
		}
	})
}

func isKnown(err error) bool {
	for _, e := range []error{ErrRuntime, ErrPanic, ErrNoHandler} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// FuzzJSON checks json.decode against encoding/json (same accept/reject
// decision on the document) and that json.encode always writes valid JSON
// that decodes to the same encoding again.
func FuzzJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,2,{"b":null}],"c":"\u00e9\ud83d\ude00"}`, `[]`, `{}`, `-0.5e10`, `"\x01"`, `[1,]`, `{"a" 1}`, `nul`, "\"\xff\"", `[[[[[[[[[[]]]]]]]]]]`} {
		f.Add([]byte(s))
	}
	in, err := newInstance(mustCompile(f, "function handle() end"), &Spec{}, DefaultLimits())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in.inv = invocation{limits: DefaultLimits(), ctx: context.Background(), deadline: time.Now().Add(time.Minute), nextScan: 1 << 62}
		d := jsonDecoder{in: in, L: in.L, s: data}
		v, derr := d.decodeAll()
		var std any
		stdErr := json.Unmarshal(data, &std)
		if (derr == nil) != (stdErr == nil) && !deepJSON(data) {
			t.Fatalf("decode %q: ours %v, encoding/json %v", data, derr, stdErr)
		}
		if derr != nil {
			return
		}
		e := jsonEncoder{in: in, limit: 1 << 30}
		e.encode(v, 0)
		if e.err != nil {
			return // e.g. nesting deeper than the encoder allows
		}
		if !json.Valid(e.buf) {
			t.Fatalf("encode of %q gave invalid JSON %q", data, e.buf)
		}
		d2 := jsonDecoder{in: in, L: in.L, s: e.buf}
		v2, err := d2.decodeAll()
		if err != nil {
			t.Fatalf("re-decode %q: %v", e.buf, err)
		}
		e2 := jsonEncoder{in: in, limit: 1 << 30}
		e2.encode(v2, 0)
		if string(e2.buf) != string(e.buf) {
			t.Fatalf("not stable: %q then %q", e.buf, e2.buf)
		}
	})
}

// deepJSON reports documents nested deeper than our decoder accepts.
func deepJSON(b []byte) bool {
	depth, max := 0, 0
	for _, c := range b {
		switch c {
		case '[', '{':
			depth++
			if depth > max {
				max = depth
			}
		case ']', '}':
			depth--
		}
	}
	return max > maxJSONDepth
}

package luavm

import (
	"context"
	"os"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestRuntime(t testing.TB) *Runtime {
	t.Helper()
	rt := NewRuntime(Options{ReclaimInterval: 10 * time.Millisecond})
	t.Cleanup(rt.Close)
	return rt
}

func deploy(t testing.TB, rt *Runtime, name, src string, mod ...func(*Spec)) {
	t.Helper()
	spec := Spec{Name: name, Version: 1, Source: []byte(src)}
	for _, m := range mod {
		m(&spec)
	}
	if err := rt.Deploy(context.Background(), spec); err != nil {
		t.Fatalf("deploy %s: %v", name, err)
	}
}

func refEvent(temp string) *Event {
	return &Event{ID: "e1", Topic: "devices/d1/telemetry", Payload: []byte(`{"temp":` + temp + `,"hum":40}`),
		Captures: map[string]string{"device": "d1"}, TS: 1700000000000, QoS: 1, Trigger: "mqtt"}
}

var lvTrue = lua.LTrue

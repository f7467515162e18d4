package luavm

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestEmitNumberRecordIsJSON: emit(stream, number) stored NaN and the
// infinities as the text NaN, +Inf, -Inf: records that are not JSON (a
// stream listener's json.decode failed on them). They are argument errors.
func TestEmitNumberRecordIsJSON(t *testing.T) {
	rt := newTestRuntime(t)
	for _, x := range []string{"0/0", "1/0", "-1/0"} {
		deploy(t, rt, "em", `function handle(e) emit("s", `+x+`) end`)
		if _, err := rt.Invoke(context.Background(), "em", &Event{}, nil); err == nil || !strings.Contains(err.Error(), "cannot encode") {
			t.Errorf("emit(s, %s): %v, want an argument error", x, err)
		}
	}
	deploy(t, rt, "em", `function handle(e) emit("s", 21.5) emit("s", 3) end`)
	res, err := rt.Invoke(context.Background(), "em", &Event{}, nil)
	if err != nil || len(res.Effects) != 2 || string(res.Effects[0].Record) != "21.5" || string(res.Effects[1].Record) != "3" {
		t.Fatalf("%v %+v", err, res)
	}
}

// TestPublishOptionsChecked: an option that is not what it should be was
// ignored, and the message went out at QoS 0 (not queued for an offline
// device): {qos = "1"}, a bare 1, {QoS = 1}, {retain = "false"} (true).
func TestPublishOptionsChecked(t *testing.T) {
	rt := newTestRuntime(t)
	for opts, want := range map[string]string{
		`{qos = "1"}`:        "qos must be 0, 1 or 2",
		`{qos = 3}`:          "qos must be 0, 1 or 2",
		`1`:                  "options table expected",
		`{QoS = 1}`:          `unknown option "QoS"`,
		`{retain = "false"}`: "retain must be true or false",
	} {
		deploy(t, rt, "pub", `function handle(e) mqtt.publish("devices/d1/cmd", "on", `+opts+`) end`)
		if _, err := rt.Invoke(context.Background(), "pub", &Event{}, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("options %s: %v, want %q", opts, err, want)
		}
	}
	deploy(t, rt, "pub", `function handle(e) mqtt.publish("devices/d1/cmd", "on", {qos = 1, retain = true}) mqtt.publish("devices/d1/cmd", "off") end`)
	res, err := rt.Invoke(context.Background(), "pub", &Event{}, nil)
	if err != nil || len(res.Effects) != 2 || res.Effects[0].QoS != 1 || !res.Effects[0].Retain || res.Effects[1].QoS != 0 || res.Effects[1].Retain {
		t.Fatalf("%v %+v", err, res)
	}
}

// TestLogFieldsAreAnObject: fields given as a list were stored as a JSON
// array, which the API dropped (it takes an object): a list is kept under
// "fields".
func TestLogFieldsAreAnObject(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "lg", `function handle(e) log.info("readings", {21.5, 22.0}) log.info("none", json.array({})) log.info("obj", {a = 1}) end`)
	res, err := rt.Invoke(context.Background(), "lg", &Event{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"fields":[21.5,22]}`, `{"fields":[]}`, `{"a":1}`}
	for i, l := range res.Logs {
		if string(l.Fields) != want[i] {
			t.Errorf("log %q: fields %s, want %s", l.Msg, l.Fields, want[i])
		}
		var m map[string]any
		if err := json.Unmarshal(l.Fields, &m); err != nil {
			t.Errorf("log %q: fields %s are not a JSON object: %v", l.Msg, l.Fields, err)
		}
	}
}

// TestMathRandom: an empty interval is a Lua error pcall catches, as in
// Lua 5.1 (gopher-lua panicked in rand.Intn: the instance was thrown away
// and the event dead-lettered); the bounds are kept.
func TestMathRandom(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "rnd", `function handle(e)
  local out = {}
  for _, f in ipairs({function() return math.random(0) end, function() return math.random(-3) end, function() return math.random(5, 1) end}) do
    local ok, err = pcall(f)
    out[#out + 1] = tostring(ok) .. " " .. tostring(err)
  end
  for i = 1, 200 do
    local a, b, c = math.random(3), math.random(-2, 2), math.random()
    if a < 1 or a > 3 or a ~= math.floor(a) then error("random(3) gave " .. a) end
    if b < -2 or b > 2 or b ~= math.floor(b) then error("random(-2, 2) gave " .. b) end
    if c < 0 or c >= 1 then error("random() gave " .. c) end
  end
  out[#out + 1] = tostring(math.random(7, 7))
  return out
end`)
	res, err := rt.Invoke(context.Background(), "rnd", &Event{}, nil)
	if errors.Is(err, ErrPanic) || err != nil {
		t.Fatalf("%v", err)
	}
	var out []string
	if err := json.Unmarshal(res.Value, &out); err != nil {
		t.Fatal(err)
	}
	for _, o := range out[:3] {
		if !strings.HasPrefix(o, "false ") || !strings.Contains(o, "interval is empty") {
			t.Errorf("empty interval: %s", o)
		}
	}
	if out[3] != "7" {
		t.Errorf("random(7, 7) = %s", out[3])
	}
}

// TestMathHugeIsInfinity: math.huge was MaxFloat64, so 1/0 == math.huge
// was false and json.encode(math.huge) wrote 1.797e308.
func TestMathHugeIsInfinity(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "huge", `function handle(e)
  return {inf = (math.huge == 1/0), neg = (-math.huge == -1/0), encodes = pcall(json.encode, math.huge), s = string.format("%f", math.huge)}
end`)
	res, err := rt.Invoke(context.Background(), "huge", &Event{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Value) != `{"encodes":false,"inf":true,"neg":true,"s":"inf"}` {
		t.Fatalf("math.huge: %s", res.Value)
	}
}

// TestMarkedArrayWithHole: an array (decoded from one, or json.array) that
// lost an element in the middle was encoded as an object,
// {"1":10,"3":30}: it stays an array, with null in the hole (a sparse one
// stays an object).
func TestMarkedArrayWithHole(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "arr", `function handle(e)
  local t = json.decode('[10, 20, 30]')
  t[2] = nil
  local m = json.array({})
  m[1] = "a"; m[3] = "c"
  local plain = {}
  plain[1] = "a"; plain[3] = "c"
  local sparse = json.array({})
  sparse[1e9] = 1
  return {decoded = json.encode(t), marked = json.encode(m), plain = json.encode(plain), sparse = json.encode(sparse)}
end`)
	res, err := rt.Invoke(context.Background(), "arr", &Event{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(res.Value, &got); err != nil {
		t.Fatal(err)
	}
	if got["decoded"] != `[10,null,30]` || got["marked"] != `["a",null,"c"]` || got["plain"] != `{"1":"a","3":"c"}` || got["sparse"] != `{"1000000000":1}` {
		t.Fatalf("%s", res.Value)
	}
}

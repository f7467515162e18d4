package luavm

import (
	"context"
	"testing"
)

func TestReferenceTransform(t *testing.T) {
	rt := newTestRuntime(t)
	deploy(t, rt, "ref", string(mustRead(t, "testdata/reference.lua")))
	res, err := rt.Invoke(context.Background(), "ref", refEvent("85"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != ResultJSON || string(res.Value) != `{"hum":40,"temp":85,"temp_f":185}` {
		t.Fatalf("result %d %s", res.Kind, res.Value)
	}
	if len(res.Effects) != 1 || res.Effects[0].Topic != "devices/d1/cmd" || string(res.Effects[0].Payload) != `{"fan":"on"}` {
		t.Fatalf("effects %+v", res.Effects)
	}
	t.Logf("cost %+v", res.Cost)
	res, err = rt.Invoke(context.Background(), "ref", refEvent("20"), nil)
	if err != nil || len(res.Effects) != 0 || string(res.Value) != `{"hum":40,"temp":20,"temp_f":68}` {
		t.Fatalf("%v %s %+v", err, res.Value, res.Effects)
	}
}

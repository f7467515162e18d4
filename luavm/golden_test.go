package luavm

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.golden")

// TestGolden runs testdata/golden/NAME.lua on NAME.event.json (with
// optional NAME.state.json and NAME.config.json) twice, checks that both
// runs agree (fresh globals every time) and compares the report with
// NAME.golden. Run with -update to rewrite the golden files.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/golden/*.lua")
	if len(files) == 0 {
		t.Fatal("no golden scripts")
	}
	rt := newTestRuntime(t)
	for _, f := range files {
		base := strings.TrimSuffix(f, ".lua")
		name := filepath.Base(base)
		t.Run(name, func(t *testing.T) {
			ev, err := ParseEvent(mustRead(t, base+".event.json"))
			if err != nil {
				t.Fatal(err)
			}
			var cfg map[string]any
			if b, err := os.ReadFile(base + ".config.json"); err == nil {
				if err := json.Unmarshal(b, &cfg); err != nil {
					t.Fatal(err)
				}
			}
			deploy(t, rt, name, string(mustRead(t, f)), func(s *Spec) { s.Config = cfg })
			var outs [][]byte
			for run := 0; run < 2; run++ {
				st := MemoryState()
				if b, err := os.ReadFile(base + ".state.json"); err == nil {
					var m map[string]json.RawMessage
					if err := json.Unmarshal(b, &m); err != nil {
						t.Fatal(err)
					}
					for k, v := range m {
						st.Set(k, v)
					}
				}
				if b, err := os.ReadFile(base + ".blobs.json"); err == nil {
					var m map[string]string // "bucket/name": content
					if err := json.Unmarshal(b, &m); err != nil {
						t.Fatal(err)
					}
					for k, v := range m {
						bucket, bname, _ := strings.Cut(k, "/")
						st.SetBlob(bucket, bname, []byte(v))
					}
				}
				res, err := rt.Invoke(context.Background(), name, ev, st)
				rep := NewReport(res, err, false)
				if err := st.Apply(res.State); err != nil {
					t.Fatal(err)
				}
				out, jerr := json.MarshalIndent(struct {
					Report
					StateAfter map[string]json.RawMessage `json:"state_after"`
				}{rep, rawMap(st.Snapshot())}, "", "  ")
				if jerr != nil {
					t.Fatal(jerr)
				}
				outs = append(outs, append(out, '\n'))
			}
			if !bytes.Equal(outs[0], outs[1]) {
				t.Fatalf("two invocations differ:\n%s\n---\n%s", outs[0], outs[1])
			}
			golden := base + ".golden"
			if *update {
				if err := os.WriteFile(golden, outs[0], 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(want, outs[0]) {
				t.Fatalf("%s differs:\n got: %s\nwant: %s", golden, outs[0], want)
			}
		})
	}
}

func rawMap(m map[string][]byte) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

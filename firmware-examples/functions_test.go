package firmwareexamples

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
)

var update = flag.Bool("update", false, "rewrite the examples' testdata/*.golden")

// exampleDirs hold one paired function each (NAME.lua + NAME.yaml).
var exampleDirs = []string{"linux-c", "esp32-arduino", "micropython", "devsim/functions"}

// loadFunction loads the one function of dir through the gateway's own
// loader (strict manifest) and deploys it with the manifest's config and
// limits, as the gateway would.
func loadFunction(t *testing.T, rt *luavm.Runtime, dir string) string {
	t.Helper()
	fns, errs := trigger.LoadDir(dir)
	if len(errs) > 0 || len(fns) != 1 {
		t.Fatalf("%s: want one function, got %d, errors %v", dir, len(fns), errs)
	}
	f := fns[0]
	m := f.Manifest
	spec := luavm.Spec{Name: m.Name, Version: 1, Source: f.Source, Config: m.Config, Limits: luavm.Limits{
		Timeout: m.Limits.Timeout.Std(), MaxSteps: m.Limits.MaxSteps, MaxMemory: int64(m.Limits.MaxMemory),
		MaxCallDepth: m.Limits.MaxCallDepth, MaxResultBytes: int(m.Limits.MaxResultBytes),
		MaxEffects: m.Limits.MaxEffects, MaxEffectBytes: int(m.Limits.MaxEffectBytes),
	}}
	if err := rt.Deploy(context.Background(), spec); err != nil {
		t.Fatalf("%s: deploy: %v", dir, err)
	}
	return m.Name
}

// TestFunctionsGolden runs each example's function on its
// testdata/NAME.event.json (with the state of NAME.state.json when present)
// and compares the report (result, effects, state changes, logs, error)
// with testdata/NAME.golden. Run with -update to rewrite the golden files.
func TestFunctionsGolden(t *testing.T) {
	for _, dir := range exampleDirs {
		rt := luavm.NewRuntime(luavm.Options{})
		defer rt.Close()
		name := loadFunction(t, rt, dir)
		events, _ := filepath.Glob(filepath.Join(dir, "testdata", "*.event.json"))
		if len(events) == 0 && dir != "devsim/functions" {
			t.Errorf("%s: no golden events", dir)
		}
		for _, evPath := range events {
			base := strings.TrimSuffix(evPath, ".event.json")
			t.Run(dir+"/"+filepath.Base(base), func(t *testing.T) {
				data, err := os.ReadFile(evPath)
				if err != nil {
					t.Fatal(err)
				}
				ev, err := luavm.ParseEvent(data)
				if err != nil {
					t.Fatal(err)
				}
				st := luavm.MemoryState()
				if b, err := os.ReadFile(base + ".state.json"); err == nil {
					var m map[string]json.RawMessage
					if err := json.Unmarshal(b, &m); err != nil {
						t.Fatal(err)
					}
					for k, v := range m {
						st.Set(k, v)
					}
				}
				res, err := rt.Invoke(context.Background(), name, ev, st)
				if err != nil && luavm.IsLimit(err) {
					t.Fatalf("limit breached: %v", err)
				}
				got, jerr := json.MarshalIndent(luavm.NewReport(res, err, false), "", "  ")
				if jerr != nil {
					t.Fatal(jerr)
				}
				got = append(got, '\n')
				golden := base + ".golden"
				if *update {
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("report differs from %s:\n%s", golden, got)
				}
			})
		}
	}
}

// FuzzClimatePayload: whatever a device sends, the paired functions either
// succeed with a JSON record or fail with their own "climate:" error; they
// never breach a limit or panic.
func FuzzClimatePayload(f *testing.F) {
	for _, s := range []string{
		`{"seq":1,"boot":2,"temp":20,"hum":50,"ts":1}`, `{"seq":1e400}`, `{"seq":1,"temp":"x"}`, `[`, ``,
		`{"seq":1,"boot":2,"temp":20,"hum":null}`, `{"seq":-0,"temp":0}`, `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
	} {
		f.Add([]byte(s))
	}
	rt := luavm.NewRuntime(luavm.Options{})
	f.Cleanup(rt.Close)
	var names []string
	for _, dir := range exampleDirs[:3] {
		names = append(names, loadFunctionF(f, rt, dir))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		for _, name := range names {
			ev := &luavm.Event{ID: "e", Topic: "devices/d/telemetry", Payload: payload,
				Captures: map[string]string{"device": "d"}, TS: 1, QoS: 1, Trigger: "mqtt"}
			res, err := rt.Invoke(context.Background(), name, ev, luavm.MemoryState())
			if err != nil {
				if luavm.IsLimit(err) || !strings.Contains(err.Error(), "climate: ") {
					t.Fatalf("%s on %q: %v", name, payload, err)
				}
				continue
			}
			if res.Kind == luavm.ResultJSON && !json.Valid(res.Value) {
				t.Fatalf("%s: invalid record %s", name, res.Value)
			}
		}
	})
}

func loadFunctionF(f *testing.F, rt *luavm.Runtime, dir string) string {
	f.Helper()
	fns, errs := trigger.LoadDir(dir)
	if len(errs) > 0 || len(fns) != 1 {
		f.Fatalf("%s: %v", dir, errs)
	}
	m := fns[0].Manifest
	// The function name must be unique in the runtime: prefix the folder.
	name := strings.ReplaceAll(filepath.Base(dir), "-", "") + "-" + m.Name
	spec := luavm.Spec{Name: name, Version: 1, Source: fns[0].Source, Config: m.Config,
		Limits: luavm.Limits{Timeout: m.Limits.Timeout.Std(), MaxMemory: int64(m.Limits.MaxMemory)}}
	if err := rt.Deploy(context.Background(), spec); err != nil {
		f.Fatal(err)
	}
	return name
}

// TestMicroPythonCompiles byte-compiles the MicroPython sources with the
// host's python3 and checks them with pyflakes (syntax and names only: the
// board's modules are not importable here, so nothing runs).
func TestMicroPythonCompiles(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 not found")
	}
	files, _ := filepath.Glob("micropython/*.py")
	if len(files) < 2 {
		t.Fatalf("micropython sources: %v", files)
	}
	sims, _ := filepath.Glob("micropython/testdata/*.py")
	files = append(files, sims...)
	out := t.TempDir()
	for _, f := range files {
		// py_compile as `python3 -m py_compile` does, with the .pyc written
		// outside the source tree.
		cmd := exec.Command(py, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
			f, filepath.Join(out, filepath.Base(f)+"c"))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", f, err, b)
		}
	}
	// pyflakes catches what byte-compiling does not: undefined names, unused
	// imports, shadowed definitions.
	flakes, err := exec.LookPath("pyflakes3")
	if err != nil {
		t.Fatal("pyflakes3 not found: run scripts/test-deps.sh (Debian package pyflakes3)")
	}
	if b, err := exec.Command(flakes, files...).CombinedOutput(); err != nil {
		t.Errorf("pyflakes3: %v\n%s", err, b)
	}
	undefined := filepath.Join(out, "undefined.py")
	if err := os.WriteFile(undefined, []byte("def f():\n    return nmae\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(flakes, undefined).Run(); err == nil {
		t.Error("pyflakes3 accepted an undefined name")
	}
	// And a syntax error is caught (the check can fail).
	bad := filepath.Join(out, "bad.py")
	if err := os.WriteFile(bad, []byte("def f(:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(py, "-m", "py_compile", bad).Run(); err == nil {
		t.Error("py_compile accepted a syntax error")
	}
}

// TestMicroPythonOnHost runs micropython/main.py on the host's python3
// against fakes of the board's modules with a virtual clock
// (micropython/testdata/host_sim.py), one scenario each: steady readings,
// no NTP (no ts), a long stall (no burst of catch-up readings), a broker
// that drops each connection (growing backoff), connections that last (the
// backoff resets), refused connects, a silent gateway (socket timeouts, the
// watchdog fed), late Wi-Fi (readings taken meanwhile), TLS (certificate
// required, timeout on the TCP socket). It checks the program's logic, not
// MicroPython itself.
func TestMicroPythonOnHost(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 not found")
	}
	sim := filepath.Join("micropython", "testdata", "host_sim.py")
	out, err := exec.Command(py, sim, "--list").Output()
	if err != nil {
		t.Fatalf("%s --list: %v", sim, err)
	}
	scenarios := strings.Fields(string(out))
	if len(scenarios) < 8 {
		t.Fatalf("scenarios: %q", scenarios)
	}
	for _, sc := range scenarios {
		t.Run(sc, func(t *testing.T) {
			cmd := exec.Command(py, sim, sc)
			cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
			b, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(b)) != "ok" {
				t.Errorf("%v\n%s", err, b)
			}
		})
	}
}

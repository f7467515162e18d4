package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
)

func init() {
	register(&command{
		name:    "fn test",
		summary: "run a Lua function once on an event file, without a gateway",
		run:     runFnTest,
	})
}

const fnTestUsage = `usage: moongate fn test FILE.lua --event EVENT.json [--manifest NAME.yaml] [--config CONFIG.json] [--state STATE.json] [--blob BUCKET/NAME=FILE]... [--timeout D] [--json]

Runs the function once, sandboxed, and prints its result, effects, state
changes, logs and cost. EVENT.json is an object with id, topic, payload,
captures, ts, qos, trigger and http (method, path, query, headers, body); a
payload that is not a JSON string is passed as its JSON text. As on the
gateway, an event without id gets a generated one and an event without ts
(or ts 0) gets the current time, header names are passed in lower case and
Authorization, Proxy-Authorization and Cookie are left out (a note on
standard error says so).
The limits are those of the function's manifest: --manifest FILE, else
NAME.yaml next to FILE.lua when there is one, else the defaults; --timeout
overrides the manifest's timeout. CONFIG.json becomes ctx.config (default:
the manifest's config); STATE.json (an object of keys to JSON values) is
what state.get sees. Each --blob makes FILE readable by blob.read as blob
NAME of BUCKET (other blobs do not exist). Exit status: 0 ok, 1 the
function failed (or does not compile), 2 bad arguments or input files
(missing, unreadable or malformed FILE.lua, event, manifest, config, state
or blob file).
`

func runFnTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fn test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	eventPath := fs.String("event", "", "event file (JSON)")
	configPath := fs.String("config", "", "function config file (JSON object)")
	statePath := fs.String("state", "", "initial state file (JSON object)")
	asJSON := fs.Bool("json", false, "print one JSON report")
	timeout := fs.Duration("timeout", 0, "wall-clock limit (default: the manifest's, else 1s)")
	manifestPath := fs.String("manifest", "", "the function's manifest (default: NAME.yaml next to FILE.lua)")
	var blobs stringsFlag
	fs.Var(&blobs, "blob", "BUCKET/NAME=FILE: a blob blob.read sees (repeatable)")
	var files []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stdout, fnTestUsage)
				return exitOK
			}
			fmt.Fprintf(stderr, "moongate fn test: %v\n%s", err, fnTestUsage)
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(files) != 1 || *eventPath == "" {
		fmt.Fprintf(stderr, "moongate fn test: need exactly one FILE.lua and --event\n%s", fnTestUsage)
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "moongate fn test: "+format+"\n", a...)
		return exitFailure
	}
	// badInput is a missing, unreadable or malformed input file: exit 2.
	badInput := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "moongate fn test: "+format+"\n", a...)
		return exitUsage
	}
	src, err := os.ReadFile(files[0])
	if err != nil {
		return badInput("%v", err)
	}
	evData, err := os.ReadFile(*eventPath)
	if err != nil {
		return badInput("%v", err)
	}
	ev, err := luavm.ParseEvent(evData)
	if err != nil {
		return badInput("%s: %v", *eventPath, err)
	}
	// Headers as the daemon shows them: names in lower case, the caller's
	// credentials left out.
	if h := ev.HTTP; h != nil && len(h.Headers) > 0 {
		shown := make(map[string]string, len(h.Headers))
		var hidden []string
		for _, k := range slices.Sorted(maps.Keys(h.Headers)) {
			key, ok := apiserver.FunctionHeader(k)
			if !ok {
				hidden = append(hidden, k)
				continue
			}
			if _, twice := shown[key]; twice {
				return badInput("%s: header %q given twice (header names are case-insensitive)", *eventPath, key)
			}
			shown[key] = h.Headers[k]
		}
		if len(hidden) > 0 {
			fmt.Fprintf(stderr, "moongate fn test: note: header %s left out, as the daemon hides the caller's credentials from functions\n", strings.Join(hidden, ", "))
		}
		h.Headers = shown
	}
	// As the gateway does for an event without id or ts (gateway.Invoke).
	if ev.ID == "" {
		ev.ID = fnTestEventID()
		fmt.Fprintf(stderr, "moongate fn test: note: the event has no id: using %s\n", ev.ID)
	}
	if ev.TS == 0 {
		ev.TS = fnTestNow().UnixMilli()
		fmt.Fprintf(stderr, "moongate fn test: note: the event has no ts: using now (%d)\n", ev.TS)
	}
	man, err := loadFnTestManifest(files[0], *manifestPath)
	if err != nil {
		return badInput("%v", err)
	}
	var cfg map[string]any
	if *configPath != "" {
		if err := readJSONObject(*configPath, &cfg); err != nil {
			return badInput("%v", err)
		}
	} else if man != nil {
		cfg = man.Config
	}
	st := luavm.MemoryState()
	if *statePath != "" {
		var m map[string]json.RawMessage
		if err := readJSONObject(*statePath, &m); err != nil {
			return badInput("%v", err)
		}
		for k, v := range m {
			st.Set(k, v)
		}
	}
	for _, b := range blobs {
		key, file, ok := strings.Cut(b, "=")
		bucket, bname, ok2 := strings.Cut(key, "/")
		if !ok || !ok2 || bucket == "" || bname == "" || file == "" {
			fmt.Fprintf(stderr, "moongate fn test: --blob %q: want BUCKET/NAME=FILE\n", b)
			return exitUsage
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return badInput("--blob: %v", err)
		}
		st.SetBlob(bucket, bname, data)
	}
	name := strings.TrimSuffix(filepath.Base(files[0]), filepath.Ext(files[0]))
	rt := luavm.NewRuntime(luavm.Options{})
	defer rt.Close()
	limits := luavm.Limits{Timeout: *timeout}
	if man != nil {
		// As the daemon builds it (its checks, the default configuration's
		// function defaults).
		f, err := gateway.FunctionFromManifest(&trigger.Function{Manifest: man, Source: src}, config.Default())
		if err != nil {
			return badInput("manifest: %v", err)
		}
		limits = f.Spec.Limits
		if *timeout != 0 {
			limits.Timeout = *timeout
		}
	}
	spec := luavm.Spec{Name: name, Version: 1, Source: src, Config: cfg, Limits: limits}
	if err := rt.Deploy(ctx, spec); err != nil {
		return fail("%v", err)
	}
	res, err := rt.Invoke(ctx, name, ev, st)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(luavm.NewReport(res, err, true)); jerr != nil {
			return fail("%v", jerr)
		}
	} else {
		printReport(stdout, res, err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "moongate fn test: %v\n", err)
		return exitFailure
	}
	if ev.Trigger == "http" {
		// What /fn would send, or why it would answer 502 instead
		// (committing nothing).
		status, headers, body, herr := apiserver.CheckHTTPResponse(res)
		if herr != nil {
			fmt.Fprintf(stderr, "moongate fn test: invalid HTTP response (the daemon answers 502 and commits nothing): %v\n", herr)
			return exitFailure
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "http response: %d %s, %d body bytes\n", status, http.StatusText(status), len(body))
			for _, k := range slices.Sorted(maps.Keys(headers)) {
				fmt.Fprintf(stdout, "  %s: %s\n", k, headers[k])
			}
		}
	}
	return exitOK
}

// fnTestNow and fnTestEventID fill an event's missing ts and id; tests
// replace them.
var (
	fnTestNow     = time.Now
	fnTestEventID = func() string {
		var b [6]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:]) + "-1" // the gateway's form: nonce-sequence
	}
)

// loadFnTestManifest reads the manifest of fn test: path when given, else
// NAME.yaml next to luaFile when it exists, else none (nil).
func loadFnTestManifest(luaFile, path string) (*trigger.Manifest, error) {
	if path == "" {
		sib := strings.TrimSuffix(luaFile, filepath.Ext(luaFile)) + ".yaml"
		if _, err := os.Stat(sib); err != nil {
			return nil, nil
		}
		path = sib
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--manifest: %w", err)
	}
	return trigger.ParseManifest(path, data)
}

func readJSONObject(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func printReport(w io.Writer, res *luavm.Result, err error) {
	r := luavm.NewReport(res, err, false)
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
	}
	switch r.Kind {
	case "none":
		fmt.Fprintln(w, "result: nil")
	default:
		fmt.Fprintf(w, "result (%s): %s\n", r.Kind, r.Result)
	}
	fmt.Fprintf(w, "effects (%d):\n", len(r.Effects))
	for _, e := range r.Effects {
		switch e.Kind {
		case "publish":
			fmt.Fprintf(w, "  publish %s qos=%d retain=%v: %s\n", e.Topic, e.QoS, e.Retain, e.Payload)
		case "blob.write":
			fmt.Fprintf(w, "  blob.write %s/%s (%s, %d bytes): %s\n", e.Bucket, e.Name, e.Type, len(e.Payload), e.Payload)
		case "blob.delete":
			fmt.Fprintf(w, "  blob.delete %s/%s\n", e.Bucket, e.Name)
		default:
			fmt.Fprintf(w, "  emit %s: %s\n", e.Stream, e.Record)
		}
	}
	fmt.Fprintf(w, "state (%d):\n", len(r.State))
	for _, s := range r.State {
		switch s.Op {
		case "incr":
			fmt.Fprintf(w, "  incr %s by %v -> %s\n", s.Key, s.Delta, s.Value)
		case "delete":
			fmt.Fprintf(w, "  delete %s\n", s.Key)
		default:
			fmt.Fprintf(w, "  set %s = %s\n", s.Key, s.Value)
		}
	}
	fmt.Fprintf(w, "logs (%d):\n", len(res.Logs))
	for _, l := range res.Logs {
		line := fmt.Sprintf("  %s %-5s %s", time.UnixMilli(l.TimeMS).UTC().Format("15:04:05.000"), strings.ToUpper(l.Level.String()), oneLine(l.Msg))
		if len(l.Fields) > 0 {
			line += " " + jsonControls(l.Fields)
		}
		fmt.Fprintln(w, line)
	}
	c := res.Cost
	fmt.Fprintf(w, "cost: outcome=%s wall=%v steps=%d peak_memory=%dB bytes_in=%d bytes_out=%d effects=%d\n",
		c.Outcome, c.Wall, c.Steps, c.PeakMemory, c.BytesIn, c.BytesOut, c.Effects)
}

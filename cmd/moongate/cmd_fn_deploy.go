package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
)

func init() {
	registerRemote(&remoteCmd{
		name: "fn deploy", summary: "deploy functions (FILE.lua with flags or NAME.yaml, a directory, moongate.yaml)",
		usage: `usage: moongate fn deploy FILE.lua [--name NAME] [--trigger KIND:SPEC]... [limits] [--dry-run] [flags]
       moongate fn deploy FILE.lua [--manifest NAME.yaml] [--dry-run] [flags]
       moongate fn deploy DIR | moongate.yaml [--dry-run] [flags]

Deploys functions to the gateway: each is compiled and validated there,
stored as the next version and made active atomically. Deploying what is
already active stores nothing ("unchanged"). --dry-run only validates.

FILE.lua is described either by flags or by a manifest: --manifest FILE, or
NAME.yaml next to FILE.lua (the pair functions_dir uses). Flags:
  --name NAME               function name (default: the file name without .lua)
  --trigger KIND:SPEC       repeatable: mqtt:devices/{device}/telemetry,
                            timer:@every 1m, cron:*/5 * * * *, http or http:GET,POST,
                            stream:readings, state:FUNCTION[:PREFIX],
                            upload:BUCKET[:GLOB]
  --description TEXT, --stream STREAM, --sync TARGET (repeatable)
  --config FILE.json        ctx.config, a JSON object
  --timeout D, --max-steps N, --max-memory SIZE, --max-result-bytes SIZE,
  --max-effects N, --max-effect-bytes SIZE, --max-call-depth N   (limits)

DIR deploys every NAME.lua + NAME.yaml pair in it. moongate.yaml (the
default when no argument is given and ./moongate.yaml exists) lists many:

  functions:
    - source: functions/telemetry.lua     # name: the file name, manifest: telemetry.yaml next to it
    - name: heartbeat
      source: heartbeat.lua
      manifest: manifests/heartbeat.yaml
    - source: alarm.lua
      spec:                               # the manifest inline
        triggers: [{mqtt: "alarms/#"}]

With several functions every one is first validated (a dry run); nothing is
deployed unless all are valid. Needs a token of scope admin.
`,
		nargs: func(n int) string {
			if n > 1 {
				return "takes one FILE.lua, DIR or moongate.yaml"
			}
			return ""
		},
		setup: setupFnDeploy,
	})
}

// Bounds checked before anything is sent (the server checks them too).
const (
	maxSourceBytes   = trigger.MaxSourceBytes
	maxManifestBytes = trigger.MaxManifestBytes
)

// deployFlags are the flags that describe one function.
type deployFlags struct {
	name, manifest, description, stream, configFile string
	triggers, sync                                  stringsFlag
	timeout                                         time.Duration
	maxSteps, maxEffects, maxCallDepth              int64
	maxMemory, maxResultBytes, maxEffectBytes       string
	dryRun                                          bool
	fs                                              *flag.FlagSet // to see which flags were given
}

func setupFnDeploy(fs *flag.FlagSet) remoteRun {
	df := &deployFlags{fs: fs}
	fs.StringVar(&df.name, "name", "", "function name")
	fs.StringVar(&df.manifest, "manifest", "", "manifest file (NAME.yaml)")
	fs.StringVar(&df.description, "description", "", "description")
	fs.StringVar(&df.stream, "stream", "", "stream of the return value")
	fs.StringVar(&df.configFile, "config", "", "ctx.config: a JSON object file")
	fs.Var(&df.triggers, "trigger", "trigger KIND:SPEC (repeatable)")
	fs.Var(&df.sync, "sync", "upstream sync target (repeatable)")
	fs.DurationVar(&df.timeout, "timeout", 0, "limit: wall clock per invocation")
	fs.Int64Var(&df.maxSteps, "max-steps", 0, "limit: VM steps")
	fs.StringVar(&df.maxMemory, "max-memory", "", "limit: memory, e.g. 8MiB")
	fs.StringVar(&df.maxResultBytes, "max-result-bytes", "", "limit: encoded result size")
	fs.Int64Var(&df.maxEffects, "max-effects", 0, "limit: effects per invocation")
	fs.StringVar(&df.maxEffectBytes, "max-effect-bytes", "", "limit: bytes of one effect")
	fs.Int64Var(&df.maxCallDepth, "max-call-depth", 0, "limit: Lua call depth")
	fs.BoolVar(&df.dryRun, "dry-run", false, "only validate")
	return func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error {
		reqs, err := df.requests(args)
		if err != nil {
			return err
		}
		return deployAll(ctx, c, reqs, df.dryRun, stdout, stderr)
	}
}

// structured lists the structured flags given (they describe one function
// without a manifest).
func (df *deployFlags) structured() []string {
	var set []string
	df.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "trigger", "sync", "description", "stream", "config", "timeout", "max-steps", "max-memory",
			"max-result-bytes", "max-effects", "max-effect-bytes", "max-call-depth":
			set = append(set, "--"+f.Name)
		}
	})
	return set
}

// requests builds the deploy requests the arguments describe.
func (df *deployFlags) requests(args []string) ([]*v1.DeployFunctionRequest, error) {
	target := ""
	if len(args) == 1 {
		target = args[0]
	} else if _, err := os.Stat("moongate.yaml"); err == nil {
		target = "moongate.yaml"
	} else {
		return nil, usagef("nothing to deploy: give FILE.lua, a directory or moongate.yaml")
	}
	structured := df.structured()
	st, err := os.Stat(target)
	if err != nil {
		return nil, usagef("%v", err)
	}
	single := !st.IsDir() && strings.HasSuffix(target, ".lua")
	if !single && (len(structured) > 0 || df.name != "" || df.manifest != "") {
		return nil, usagef("--name, --manifest and the function flags (--trigger, limits, ...) apply to one FILE.lua only")
	}
	switch {
	case st.IsDir():
		return dirRequests(target)
	case single:
		r, err := df.single(target, structured)
		if err != nil {
			return nil, err
		}
		return []*v1.DeployFunctionRequest{r}, nil
	case strings.HasSuffix(target, ".yaml") || strings.HasSuffix(target, ".yml"):
		return projectRequests(target)
	}
	return nil, usagef("%s: want a .lua file, a directory or a moongate.yaml", target)
}

// single builds the request of one FILE.lua.
func (df *deployFlags) single(file string, structured []string) (*v1.DeployFunctionRequest, error) {
	name := df.name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(file), ".lua")
	}
	if !trigger.ValidFunctionName(name) {
		return nil, usagef("invalid function name %q: [a-z0-9][a-z0-9_-]{0,62} (use --name)", name)
	}
	src, err := readBounded(file, maxSourceBytes)
	if err != nil {
		return nil, err
	}
	req := &v1.DeployFunctionRequest{Name: name, Source: string(src)}
	manifest := df.manifest
	sibling := strings.TrimSuffix(file, ".lua") + ".yaml"
	if manifest == "" {
		if _, err := os.Stat(sibling); err == nil {
			manifest = sibling
		}
	}
	if manifest != "" && len(structured) > 0 {
		return nil, usagef("a manifest (%s) and %s both describe the function: use one", manifest, strings.Join(structured, ", "))
	}
	if manifest != "" {
		m, err := readBounded(manifest, maxManifestBytes)
		if err != nil {
			return nil, err
		}
		req.Manifest = string(m)
		return req, nil
	}
	if len(structured) == 0 {
		return nil, usagef("%s: no %s next to it and no --trigger: describe the function with a manifest or flags", file, filepath.Base(sibling))
	}
	for _, t := range df.triggers {
		tr, err := parseTrigger(t)
		if err != nil {
			return nil, err
		}
		req.Triggers = append(req.Triggers, tr)
	}
	req.Description, req.Stream, req.Sync = df.description, df.stream, df.sync
	lim := &v1.Limits{MaxSteps: df.maxSteps, MaxEffects: int32(df.maxEffects), MaxCallDepth: int32(df.maxCallDepth)}
	if df.maxSteps < 0 || df.maxEffects < 0 || df.maxEffects > 1<<31-1 || df.maxCallDepth < 0 || df.maxCallDepth > 1<<31-1 || df.timeout < 0 {
		return nil, usagef("limits must be positive")
	}
	if df.timeout > 0 {
		lim.Timeout = durationpb.New(df.timeout)
	}
	for _, s := range []struct {
		flag, v string
		dst     *int64
	}{{"--max-memory", df.maxMemory, &lim.MaxMemoryBytes}, {"--max-result-bytes", df.maxResultBytes, &lim.MaxResultBytes}, {"--max-effect-bytes", df.maxEffectBytes, &lim.MaxEffectBytes}} {
		if s.v == "" {
			continue
		}
		n, err := config.ParseSize(s.v)
		if err != nil {
			return nil, usagef("%s: %v", s.flag, err)
		}
		*s.dst = int64(n)
	}
	req.Limits = lim
	if df.configFile != "" {
		var m map[string]any
		if err := readJSONObject(df.configFile, &m); err != nil {
			return nil, usagef("--config: %v", err)
		}
		cfg, err := structpb.NewStruct(m)
		if err != nil {
			return nil, usagef("--config %s: %v", df.configFile, err)
		}
		req.Config = cfg
	}
	return req, nil
}

// parseTrigger parses a --trigger value: mqtt:PATTERN, timer:SPEC,
// cron:SPEC, http or http:METHOD,METHOD, stream:NAME,
// state:FUNCTION[:PREFIX] or upload:BUCKET[:GLOB].
func parseTrigger(s string) (*v1.Trigger, error) {
	kind, spec, hasSpec := strings.Cut(s, ":")
	bad := func(why string) error {
		return usagef("invalid --trigger %q: %s (want mqtt:PATTERN, timer:SPEC, cron:SPEC, http or http:GET,POST, stream:NAME, state:FUNCTION[:PREFIX], upload:BUCKET[:GLOB])", clipText(s, 80), why)
	}
	switch kind {
	case "stream":
		if spec == "" {
			return nil, bad("empty stream")
		}
		return &v1.Trigger{Kind: &v1.Trigger_Stream{Stream: spec}}, nil
	case "state":
		fn, prefix, hasPrefix := strings.Cut(spec, ":")
		if fn == "" {
			return nil, bad("empty function")
		}
		if hasPrefix && prefix == "" {
			return nil, bad("empty prefix (leave out the ':' to watch every key)")
		}
		return &v1.Trigger{Kind: &v1.Trigger_State{State: &v1.StateTrigger{Function: fn, Prefix: prefix}}}, nil
	case "upload":
		bucket, glob, hasGlob := strings.Cut(spec, ":")
		if bucket == "" {
			return nil, bad("empty bucket")
		}
		if hasGlob && glob == "" {
			return nil, bad("empty name glob (leave out the ':' for every name)")
		}
		return &v1.Trigger{Kind: &v1.Trigger_Upload{Upload: &v1.UploadTrigger{Bucket: bucket, Name: glob}}}, nil
	case "mqtt", "timer", "cron":
		if strings.TrimSpace(spec) == "" {
			return nil, bad("empty " + kind + " spec")
		}
	case "http":
		h := &v1.HttpTrigger{}
		if hasSpec {
			for _, m := range strings.Split(spec, ",") {
				m = strings.ToUpper(strings.TrimSpace(m))
				if m == "" {
					return nil, bad("empty method")
				}
				h.Methods = append(h.Methods, m)
			}
		}
		return &v1.Trigger{Kind: &v1.Trigger_Http{Http: h}}, nil
	default:
		return nil, bad("unknown kind")
	}
	switch kind {
	case "mqtt":
		return &v1.Trigger{Kind: &v1.Trigger_Mqtt{Mqtt: spec}}, nil
	case "timer":
		return &v1.Trigger{Kind: &v1.Trigger_Timer{Timer: spec}}, nil
	}
	return &v1.Trigger{Kind: &v1.Trigger_Cron{Cron: spec}}, nil
}

// readBounded reads a local file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("%v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, usagef("%s: %v", path, err)
	}
	if int64(len(b)) > limit {
		return nil, usagef("%s is larger than the limit of %d bytes", path, limit)
	}
	return b, nil
}

// dirRequests builds a request for every NAME.lua + NAME.yaml pair in dir,
// as functions_dir reads them.
func dirRequests(dir string) ([]*v1.DeployFunctionRequest, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, usagef("%v", err)
	}
	has := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			has[e.Name()] = true
		}
	}
	var names []string
	for n := range has {
		if base, ok := strings.CutSuffix(n, ".yaml"); ok {
			names = append(names, base)
		} else if base, ok := strings.CutSuffix(n, ".lua"); ok && !has[base+".yaml"] {
			return nil, usagef("%s has no manifest %s.yaml", filepath.Join(dir, n), base)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, usagef("%s holds no NAME.lua + NAME.yaml pair", dir)
	}
	var reqs []*v1.DeployFunctionRequest
	for _, n := range names {
		if !has[n+".lua"] {
			return nil, usagef("%s has no source %s.lua", filepath.Join(dir, n+".yaml"), n)
		}
		if !trigger.ValidFunctionName(n) {
			return nil, usagef("%s: invalid function name %q: [a-z0-9][a-z0-9_-]{0,62}", dir, n)
		}
		src, err := readBounded(filepath.Join(dir, n+".lua"), maxSourceBytes)
		if err != nil {
			return nil, err
		}
		m, err := readBounded(filepath.Join(dir, n+".yaml"), maxManifestBytes)
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, &v1.DeployFunctionRequest{Name: n, Source: string(src), Manifest: string(m)})
	}
	return reqs, nil
}

// projectFile is moongate.yaml: the functions of a project. Decoded
// strictly (unknown keys are errors).
type projectFile struct {
	Functions []projectFunction `yaml:"functions"`
}

// projectFunction is one function of moongate.yaml. Paths are relative to
// the file. The manifest is Manifest (a file), Spec (inline) or, when
// both are empty, NAME.yaml next to the source.
type projectFunction struct {
	Name     string  `yaml:"name"`
	Source   string  `yaml:"source"`
	Manifest string  `yaml:"manifest"`
	Spec     rawYAML `yaml:"spec"`
}

// rawYAML keeps a YAML mapping as text (an inline manifest, sent as is for
// the server to decode strictly).
type rawYAML struct{ text string }

// UnmarshalYAMLNode implements config.NodeUnmarshaler.
func (r *rawYAML) UnmarshalYAMLNode(_, _ string, n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return errors.New("expected a mapping (the keys of a NAME.yaml manifest)")
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	r.text = string(b)
	return nil
}

// parseProject decodes moongate.yaml.
func parseProject(file string, data []byte) (*projectFile, error) {
	var p projectFile
	if _, err := config.Unmarshal(file, data, &p); err != nil {
		return nil, err
	}
	if len(p.Functions) == 0 {
		return nil, fmt.Errorf("%s: no functions (want functions: [{source: NAME.lua}, ...])", file)
	}
	seen := map[string]bool{}
	for i := range p.Functions {
		f := &p.Functions[i]
		where := fmt.Sprintf("%s: functions[%d]", file, i)
		if f.Source == "" {
			return nil, fmt.Errorf("%s: source is required", where)
		}
		if f.Name == "" {
			f.Name = strings.TrimSuffix(filepath.Base(f.Source), ".lua")
		}
		if !trigger.ValidFunctionName(f.Name) {
			return nil, fmt.Errorf("%s: invalid function name %q: [a-z0-9][a-z0-9_-]{0,62}", where, clipText(f.Name, 80))
		}
		if seen[f.Name] {
			return nil, fmt.Errorf("%s: function %q listed twice", where, f.Name)
		}
		seen[f.Name] = true
		if f.Manifest != "" && f.Spec.text != "" {
			return nil, fmt.Errorf("%s: manifest and spec both given: use one", where)
		}
	}
	return &p, nil
}

// projectRequests builds the requests of a moongate.yaml.
func projectRequests(file string) ([]*v1.DeployFunctionRequest, error) {
	data, err := readBounded(file, config.MaxFileSize)
	if err != nil {
		return nil, err
	}
	p, err := parseProject(file, data)
	if err != nil {
		return nil, usagef("%v", err)
	}
	dir := filepath.Dir(file)
	rel := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	var reqs []*v1.DeployFunctionRequest
	for _, f := range p.Functions {
		src, err := readBounded(rel(f.Source), maxSourceBytes)
		if err != nil {
			return nil, err
		}
		req := &v1.DeployFunctionRequest{Name: f.Name, Source: string(src), Manifest: f.Spec.text}
		if req.Manifest == "" {
			mf := f.Manifest
			if mf == "" {
				mf = strings.TrimSuffix(f.Source, ".lua") + ".yaml"
			}
			m, err := readBounded(rel(mf), maxManifestBytes)
			if err != nil {
				return nil, usagef("function %s: %v", f.Name, err)
			}
			req.Manifest = string(m)
		}
		reqs = append(reqs, req)
	}
	return reqs, nil
}

// deployAll deploys reqs. With more than one, every one is validated
// first, and none is deployed unless all are valid.
func deployAll(ctx context.Context, c *apiClient, reqs []*v1.DeployFunctionRequest, dryRun bool, stdout, stderr io.Writer) error {
	type result struct {
		name string
		resp *v1.DeployFunctionResponse
		raw  []byte
		err  error
	}
	send := func(r *v1.DeployFunctionRequest, dry bool) result {
		r.DryRun = dry
		var resp v1.DeployFunctionResponse
		raw, err := c.call(ctx, http.MethodPost, "/v1/functions", nil, r, &resp)
		return result{name: r.GetName(), resp: &resp, raw: raw, err: err}
	}
	var results []result
	if len(reqs) > 1 && !dryRun {
		var failed []error
		for _, r := range reqs {
			res := send(r, true)
			if res.err != nil {
				if exitCode(res.err) != exitFailure {
					return res.err // auth, unreachable: the same for all
				}
				failed = append(failed, fmt.Errorf("%s: %w", res.name, res.err))
			}
		}
		if len(failed) > 0 {
			for _, e := range failed {
				fmt.Fprintf(stderr, "moongate fn deploy: %v\n", e)
			}
			return fmt.Errorf("%d of %d functions are invalid: nothing deployed", len(failed), len(reqs))
		}
	}
	var firstErr error
	for i, r := range reqs {
		res := send(r, dryRun)
		if res.err != nil && dryRun && len(reqs) > 1 && exitCode(res.err) == exitFailure {
			// A dry run checks every function: report each invalid one
			// and go on (nothing is deployed anyway).
			fmt.Fprintf(stderr, "moongate fn deploy: %s: %v\n", res.name, res.err)
			if firstErr == nil {
				firstErr = fmt.Errorf("invalid functions: nothing would be deployed")
			}
			continue
		}
		if res.err != nil {
			if len(reqs) > 1 {
				res.err = fmt.Errorf("%s: %w", res.name, res.err)
				if i+1 < len(reqs) {
					var rest []string
					for _, x := range reqs[i+1:] {
						rest = append(rest, x.GetName())
					}
					res.err = fmt.Errorf("%w (not deployed: %s)", res.err, strings.Join(rest, ", "))
				}
			}
			firstErr = res.err
			break
		}
		results = append(results, res)
	}
	if c.json {
		for _, r := range results {
			if err := printJSON(stdout, r.raw); err != nil {
				return err
			}
		}
		return firstErr
	}
	tw := newTable(stdout)
	if len(results) > 0 {
		fmt.Fprintln(tw, "NAME\tVERSION\tRESULT")
	}
	for _, r := range results {
		f := r.resp.GetFunction()
		what := "deployed, " + fnStatus(f)
		switch {
		case r.resp.GetDryRun():
			what = "valid (dry run, nothing stored)"
		case r.resp.GetUnchanged():
			what = "unchanged, " + fnStatus(f)
		}
		v := fmt.Sprint(f.GetVersion())
		if r.resp.GetDryRun() {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.name, v, what)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return firstErr
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/luavm"
)

func init() {
	registerRemote(&remoteCmd{
		name: "fn ls", summary: "list the functions of a gateway",
		usage: "usage: moongate fn ls [flags]\n\nLists every function with its active version (its latest when none is active).\n",
		nargs: exactArgs(0, ""),
		setup: func(*flag.FlagSet) remoteRun { return runFnLs },
	})
	registerRemote(&remoteCmd{
		name: "fn get", summary: "show a function version, its manifest and source",
		usage: `usage: moongate fn get NAME [--version N] [--source | --manifest] [flags]

Shows a function's active version (or --version N): status, hashes,
triggers and manifest. --source prints only the Lua source, --manifest only
the manifest YAML (e.g. to save them as NAME.lua and NAME.yaml).
`,
		nargs: exactArgs(1, "NAME"),
		setup: setupFnGet,
	})
	registerRemote(&remoteCmd{
		name: "fn rm", summary: "delete a function and all its versions",
		usage: "usage: moongate fn rm NAME [flags]\n\nStops the function and deletes every version of it (its state, records and\nlogs are kept). Needs a token of scope admin.\n",
		nargs: exactArgs(1, "NAME"),
		setup: func(*flag.FlagSet) remoteRun { return runFnRm },
	})
	registerRemote(&remoteCmd{
		name: "fn versions", summary: "list the stored versions of a function",
		usage: "usage: moongate fn versions NAME [flags]\n\nLists every stored version of the function, oldest first.\n",
		nargs: exactArgs(1, "NAME"),
		setup: func(*flag.FlagSet) remoteRun { return runFnVersions },
	})
	registerRemote(&remoteCmd{
		name: "fn rollback", summary: "make an older version of a function active again",
		usage: `usage: moongate fn rollback NAME [VERSION] [flags]

Makes VERSION active again, atomically (default: the highest version below
the active one). Needs a token of scope admin.
`,
		nargs: func(n int) string {
			if n < 1 || n > 2 {
				return "needs NAME and optionally VERSION"
			}
			return ""
		},
		setup: func(*flag.FlagSet) remoteRun { return runFnRollback },
	})
	registerRemote(&remoteCmd{
		name: "fn invoke", summary: "run a deployed function once on an event",
		usage: `usage: moongate fn invoke NAME [--data JSON | --data @FILE | --data -] [--topic T] [--id ID] [--capture K=V]... [--commit] [flags]
       moongate fn invoke NAME --event EVENT.json [--commit] [flags]

Runs the active version of a function on the gateway, synchronously, and
prints its result, effects, state changes, logs and cost. By default it is
a dry run: nothing is stored or published. --commit carries the effects
out, atomically and durably, as for an MQTT event.

--data is the event payload, a JSON value (@FILE reads it from a file, -
from standard input); --topic, --id (default: assigned) and --capture
(repeatable, e.g. device=d1) fill the event. --event reads a whole event
file in the format of 'moongate fn test --event' (id, topic, payload,
captures, ts, qos; its trigger is not sent: an invoked event's trigger is
"invoke").
Needs a token of scope admin. The exit status is 1 when the function
failed (the report is still printed).
`,
		nargs: exactArgs(1, "NAME"),
		setup: setupFnInvoke,
	})
	registerRemote(&remoteCmd{
		name: "fn logs", summary: "show or follow the log lines of functions",
		usage: `usage: moongate fn logs [NAME] [-f] [--tail N] [--invocation ID] [--after SEQ --limit N] [flags]

Prints the log lines of a function (of every function without NAME),
oldest first: the last --tail lines (default 50), or with --after one page
of --limit lines after that sequence number. -f keeps following: it prints
new lines as they are committed until interrupted (Ctrl-C, exit status 0).
With --json each line is one LogLine JSON object (-f), or the API's page.
`,
		nargs: func(n int) string {
			if n > 1 {
				return "takes at most one NAME"
			}
			return ""
		},
		setup: setupFnLogs,
	})
}

// fmtTrigger formats a trigger as in the --trigger flag.
func fmtTrigger(t *v1.Trigger) string {
	switch k := t.GetKind().(type) {
	case *v1.Trigger_Mqtt:
		return "mqtt:" + k.Mqtt
	case *v1.Trigger_Timer:
		return "timer:" + k.Timer
	case *v1.Trigger_Cron:
		return "cron:" + k.Cron
	case *v1.Trigger_Http:
		if len(k.Http.GetMethods()) == 0 {
			return "http"
		}
		return "http:" + strings.Join(k.Http.GetMethods(), ",")
	case *v1.Trigger_Stream:
		return "stream:" + k.Stream
	case *v1.Trigger_State:
		if k.State.GetPrefix() == "" {
			return "state:" + k.State.GetFunction()
		}
		return "state:" + k.State.GetFunction() + ":" + k.State.GetPrefix()
	case *v1.Trigger_Upload:
		if k.Upload.GetName() == "" {
			return "upload:" + k.Upload.GetBucket()
		}
		return "upload:" + k.Upload.GetBucket() + ":" + k.Upload.GetName()
	}
	return "?"
}

func fmtTriggers(ts []*v1.Trigger) string {
	if len(ts) == 0 {
		return "-"
	}
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = fmtTrigger(t)
	}
	return strings.Join(s, ", ")
}

// fnStatus is "running", "active" (active but not loaded) or "inactive".
func fnStatus(f *v1.Function) string {
	switch {
	case f.GetRunning():
		return "running"
	case f.GetActive():
		return "active"
	}
	return "inactive"
}

func runFnLs(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
	var resp v1.ListFunctionsResponse
	raw, err := c.call(ctx, http.MethodGet, "/v1/functions", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	return renderFunctions(stdout, &resp)
}

func renderFunctions(w io.Writer, resp *v1.ListFunctionsResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tVERSION\tSTATUS\tTRIGGERS\tDESCRIPTION")
	for _, f := range resp.GetFunctions() {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", f.GetName(), f.GetVersion(), fnStatus(f), fmtTriggers(f.GetTriggers()), orDash(f.GetDescription()))
	}
	return tw.Flush()
}

func fnPath(name string, suffix string) string {
	return "/v1/functions/" + url.PathEscape(name) + suffix
}

func setupFnGet(fs *flag.FlagSet) remoteRun {
	version := fs.Int64("version", 0, "version (default the active one)")
	source := fs.Bool("source", false, "print only the Lua source")
	manifest := fs.Bool("manifest", false, "print only the manifest YAML")
	return func(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
		if *source && *manifest {
			return usagef("--source and --manifest exclude each other")
		}
		if *version < 0 {
			return usagef("--version must be positive")
		}
		q := url.Values{}
		setInt(q, "version", *version)
		var f v1.Function
		raw, err := c.call(ctx, http.MethodGet, fnPath(args[0], ""), q, nil, &f)
		switch {
		case err != nil:
			return err
		case *source:
			_, err = io.WriteString(stdout, f.GetSource())
			return err
		case *manifest:
			_, err = io.WriteString(stdout, f.GetManifest())
			return err
		case c.json:
			return printJSON(stdout, raw)
		}
		return renderFunction(stdout, &f)
	}
}

func renderFunction(w io.Writer, f *v1.Function) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "name:\t%s\n", f.GetName())
	fmt.Fprintf(tw, "version:\t%d (%s)\n", f.GetVersion(), fnStatus(f))
	fmt.Fprintf(tw, "created:\t%s\n", fmtTime(f.GetCreateTime()))
	fmt.Fprintf(tw, "description:\t%s\n", orDash(f.GetDescription()))
	fmt.Fprintf(tw, "triggers:\t%s\n", fmtTriggers(f.GetTriggers()))
	fmt.Fprintf(tw, "stream:\t%s\n", orDash(f.GetStream()))
	fmt.Fprintf(tw, "sha256:\t%s\n", f.GetSha256())
	fmt.Fprintf(tw, "source sha256:\t%s\n", f.GetSourceSha256())
	src := f.GetSource()
	fmt.Fprintf(tw, "source:\t%d bytes, %d lines (--source prints it)\n", len(src), strings.Count(src, "\n")+boolInt(src != "" && !strings.HasSuffix(src, "\n")))
	if err := tw.Flush(); err != nil {
		return err
	}
	if m := strings.TrimRight(f.GetManifest(), "\n"); m != "" {
		fmt.Fprintln(w, "manifest:")
		for _, l := range strings.Split(m, "\n") {
			fmt.Fprintln(w, "  "+l)
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func runFnRm(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	var resp v1.DeleteFunctionResponse
	raw, err := c.call(ctx, http.MethodDelete, fnPath(args[0], ""), nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	_, err = fmt.Fprintf(stdout, "deleted %s (%d versions)\n", args[0], resp.GetDeletedVersions())
	return err
}

func runFnVersions(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	var resp v1.ListFunctionVersionsResponse
	raw, err := c.call(ctx, http.MethodGet, fnPath(args[0], "/versions"), nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	return renderVersions(stdout, &resp)
}

func renderVersions(w io.Writer, resp *v1.ListFunctionVersionsResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "VERSION\tSTATUS\tCREATED\tSHA256\tDESCRIPTION")
	for _, f := range resp.GetVersions() {
		sum := f.GetSha256()
		if len(sum) > 12 {
			sum = sum[:12]
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", f.GetVersion(), fnStatus(f), fmtTime(f.GetCreateTime()), sum, orDash(f.GetDescription()))
	}
	return tw.Flush()
}

func runFnRollback(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	req := &v1.RollbackFunctionRequest{Name: args[0]}
	if len(args) == 2 {
		v, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || v <= 0 {
			return usagef("invalid VERSION %q: a positive integer", args[1])
		}
		req.Version = v
	}
	var resp v1.RollbackFunctionResponse
	raw, err := c.call(ctx, http.MethodPost, fnPath(args[0], ":rollback"), nil, req, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	f := resp.GetFunction()
	_, err = fmt.Fprintf(stdout, "%s: version %d is active (%s)\n", f.GetName(), f.GetVersion(), fnStatus(f))
	return err
}

// readDataArg reads a --data value: the value itself, @FILE, or - for
// standard input.
func readDataArg(v string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	switch {
	case v == "-":
		r = stdin
	case strings.HasPrefix(v, "@"):
		f, err := os.Open(v[1:])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	default:
		return []byte(v), nil
	}
	// Bounded, and refused past the bound rather than cut (the default
	// api.max_body_bytes: a larger value cannot be sent anyway).
	b, err := io.ReadAll(io.LimitReader(r, maxDataBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDataBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxDataBytes)
	}
	return b, nil
}

// maxDataBytes bounds a JSON value read from a file or standard input
// (the default api.max_body_bytes).
const maxDataBytes = 4 << 20

func setupFnInvoke(fs *flag.FlagSet) remoteRun {
	data := fs.String("data", "", "event payload: JSON, @FILE or - (standard input)")
	topic := fs.String("topic", "", "event topic")
	id := fs.String("id", "", "event id (default: assigned)")
	eventFile := fs.String("event", "", "event file, as for 'fn test --event'")
	commit := fs.Bool("commit", false, "carry the effects out (default: a dry run)")
	var captures stringsFlag
	fs.Var(&captures, "capture", "event capture K=V (repeatable)")
	return func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error {
		ev, err := invokeEvent(*data, *topic, *id, *eventFile, captures, stderr)
		if err != nil {
			return err
		}
		dry := !*commit
		req := &v1.InvokeFunctionRequest{Name: args[0], Event: ev, DryRun: &dry}
		var resp v1.InvokeFunctionResponse
		raw, err := c.call(ctx, http.MethodPost, fnPath(args[0], ":invoke"), nil, req, &resp)
		if err != nil {
			return err
		}
		if c.json {
			err = printJSON(stdout, raw)
		} else {
			err = renderInvoke(stdout, &resp)
		}
		if err == nil && resp.GetError() != "" {
			return fmt.Errorf("the function failed: %s", resp.GetError())
		}
		return err
	}
}

// invokeEvent builds the event of fn invoke from its flags.
func invokeEvent(data, topic, id, eventFile string, captures []string, stderr io.Writer) (*v1.Event, error) {
	if eventFile != "" {
		if data != "" || topic != "" || id != "" || len(captures) > 0 {
			return nil, usagef("--event excludes --data, --topic, --id and --capture")
		}
		b, err := os.ReadFile(eventFile)
		if err != nil {
			return nil, usagef("--event: %v", err)
		}
		ev, err := luavm.ParseEvent(b)
		if err != nil {
			return nil, usagef("--event %s: %v", eventFile, err)
		}
		if ev.HTTP != nil {
			return nil, usagef("--event %s: an http event cannot be invoked through the API: send the request to /fn/NAME/... instead", eventFile)
		}
		if ev.Trigger != "" && ev.Trigger != "invoke" {
			// The API sets it: the same file gives fn test another event.
			fmt.Fprintf(stderr, "moongate fn invoke: note: --event %s sets trigger %q; an invoked event's trigger is \"invoke\"\n", eventFile, ev.Trigger)
		}
		out := &v1.Event{Id: ev.ID, Topic: ev.Topic, Captures: ev.Captures, Qos: uint32(ev.QoS)}
		if utf8.Valid(ev.Payload) {
			out.PayloadText = string(ev.Payload)
		} else {
			out.Payload = ev.Payload
		}
		if ev.TS > 0 {
			out.Time = timestamppb.New(time.UnixMilli(ev.TS))
		}
		return out, nil
	}
	ev := &v1.Event{Id: id, Topic: topic}
	if data != "" {
		b, err := readDataArg(data, stdin)
		if err != nil {
			return nil, usagef("--data: %v", err)
		}
		b = bytes.TrimSpace(b)
		if !json.Valid(b) {
			var x any
			err := json.Unmarshal(b, &x)
			return nil, usagef("--data is not valid JSON: %v", err)
		}
		ev.PayloadText = string(b)
	}
	for _, kv := range captures {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("invalid --capture %q: want NAME=VALUE", kv)
		}
		if ev.Captures == nil {
			ev.Captures = map[string]string{}
		}
		ev.Captures[k] = v
	}
	return ev, nil
}

func renderInvoke(w io.Writer, r *v1.InvokeFunctionResponse) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "invocation: %s (version %d, %s)\n", r.GetInvocationId(), r.GetVersion(), map[bool]string{true: "committed", false: "dry run, nothing committed"}[r.GetCommitted()])
	if r.GetError() != "" {
		fmt.Fprintf(bw, "error: %s\n", r.GetError())
	}
	switch r.GetResultKind() {
	case v1.ResultKind_RESULT_KIND_JSON:
		fmt.Fprintf(bw, "result (json): %s\n", fmtValue(r.GetResult()))
	case v1.ResultKind_RESULT_KIND_STRING:
		fmt.Fprintf(bw, "result (string): %s\n", r.GetResult().GetStringValue())
	default:
		fmt.Fprintln(bw, "result: nil")
	}
	fmt.Fprintf(bw, "effects (%d):\n", len(r.GetEffects()))
	for _, e := range r.GetEffects() {
		if p := e.GetPublish(); p != nil {
			fmt.Fprintf(bw, "  publish %s qos=%d retain=%v: %s\n", p.GetTopic(), p.GetQos(), p.GetRetain(), fmtPayload(p.GetPayload()))
		} else if em := e.GetEmit(); em != nil {
			fmt.Fprintf(bw, "  emit %s: %s\n", em.GetStream(), fmtValue(em.GetRecord()))
		} else if w := e.GetBlobWrite(); w != nil {
			fmt.Fprintf(bw, "  blob.write %s/%s (%s, %d bytes): %s\n", w.GetBucket(), w.GetName(), w.GetContentType(), len(w.GetData()), fmtPayload(w.GetData()))
		} else if d := e.GetBlobDelete(); d != nil {
			fmt.Fprintf(bw, "  blob.delete %s/%s\n", d.GetBucket(), d.GetName())
		}
	}
	fmt.Fprintf(bw, "state (%d):\n", len(r.GetState()))
	for _, s := range r.GetState() {
		switch s.GetOp() {
		case "incr":
			fmt.Fprintf(bw, "  incr %s by %v\n", s.GetKey(), s.GetDelta())
		case "delete":
			fmt.Fprintf(bw, "  delete %s\n", s.GetKey())
		default:
			fmt.Fprintf(bw, "  set %s = %s\n", s.GetKey(), fmtValue(s.GetValue()))
		}
	}
	fmt.Fprintf(bw, "logs (%d):\n", len(r.GetLogs()))
	for _, l := range r.GetLogs() {
		fmt.Fprintf(bw, "  %s\n", fmtLogLine(l, false))
	}
	cost := r.GetCost()
	fmt.Fprintf(bw, "cost: outcome=%s wall=%s steps=%d peak_memory=%dB bytes_in=%d bytes_out=%d effects=%d\n",
		cost.GetOutcome(), fmtDuration(cost.GetWall()), cost.GetSteps(), cost.GetPeakMemoryBytes(), cost.GetBytesIn(), cost.GetBytesOut(), cost.GetEffects())
	return bw.Flush()
}

// fmtPayload shows a payload as text when it is UTF-8, else as base64.
func fmtPayload(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

// fmtLogLine formats one log line: time, level, function (when withFn),
// invocation, message and fields.
func fmtLogLine(l *v1.LogLine, withFn bool) string {
	var sb strings.Builder
	sb.WriteString(fmtTime(l.GetTime()))
	fmt.Fprintf(&sb, " %-5s", strings.ToUpper(l.GetLevel()))
	if withFn {
		sb.WriteString(" " + l.GetFunction())
	}
	if id := l.GetInvocationId(); id != "" && withFn {
		sb.WriteString(" " + id)
	}
	sb.WriteString(" " + oneLine(l.GetMsg()))
	if f := fmtStruct(l.GetFields()); f != "" {
		sb.WriteString(" " + f)
	}
	return sb.String()
}

func setupFnLogs(fs *flag.FlagSet) remoteRun {
	var follow bool
	fs.BoolVar(&follow, "f", false, "follow: print new lines as they come")
	fs.BoolVar(&follow, "follow", false, "follow: print new lines as they come")
	tail := fs.Int("tail", 50, "print the last N lines first")
	invocation := fs.String("invocation", "", "only the lines of this invocation")
	after := fs.Uint64("after", 0, "only lines after this sequence number (one page of --limit)")
	limit := fs.Int("limit", 100, "page size with --after")
	return func(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
		var fn string
		if len(args) == 1 {
			fn = args[0]
		}
		if *tail < 0 || *limit <= 0 || *limit > 10000 {
			return usagef("--tail must be >= 0 and --limit between 1 and 10000")
		}
		if follow && *tail > maxFollowTail {
			return usagef("--tail with -f is at most %d (the server's bound for a follow)", maxFollowTail)
		}
		given := map[string]bool{} // --after 0 is the first page, not "no --after"
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		switch {
		case given["tail"] && given["after"]:
			return usagef("--tail and --after exclude each other")
		case given["limit"] && !given["after"]:
			return usagef("--limit is the page size of --after")
		}
		if follow {
			return followLogs(ctx, c, fn, *invocation, *after, *tail, stdout)
		}
		if given["after"] {
			q := logsQuery(fn, *invocation, *after, *limit)
			var resp v1.ListLogsResponse
			raw, err := c.call(ctx, http.MethodGet, "/v1/logs", q, nil, &resp)
			if err != nil {
				return err
			}
			if c.json {
				return printJSON(stdout, raw)
			}
			for _, l := range resp.GetLines() {
				fmt.Fprintln(stdout, fmtLogLine(l, true))
			}
			return nil
		}
		lines, err := lastLogs(ctx, c, fn, *invocation, *tail)
		if err != nil {
			return err
		}
		if c.json {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&v1.ListLogsResponse{Lines: lines, NextAfter: lastSeq(lines)})
			if err != nil {
				return err
			}
			return printJSON(stdout, b)
		}
		for _, l := range lines {
			fmt.Fprintln(stdout, fmtLogLine(l, true))
		}
		return nil
	}
}

func lastSeq(lines []*v1.LogLine) uint64 {
	if len(lines) == 0 {
		return 0
	}
	return lines[len(lines)-1].GetSeq()
}

func logsQuery(fn, invocation string, after uint64, limit int) url.Values {
	q := url.Values{}
	setString(q, "function", fn)
	setString(q, "invocation_id", invocation)
	setUint(q, "after", after)
	setInt(q, "limit", int64(limit))
	return q
}

// lastLogs returns the last n lines. The API lists oldest first only, so
// it pages through what the store keeps (logs have a short retention).
func lastLogs(ctx context.Context, c *apiClient, fn, invocation string, n int) ([]*v1.LogLine, error) {
	var keep []*v1.LogLine
	var after uint64
	for {
		var resp v1.ListLogsResponse
		if _, err := c.call(ctx, http.MethodGet, "/v1/logs", logsQuery(fn, invocation, after, 10000), nil, &resp); err != nil {
			return nil, err
		}
		// A page may be empty while more lines follow (a page scans at
		// most 10,000 lines, matching or not): only next_after says when
		// the end is reached.
		keep = append(keep, resp.GetLines()...)
		if len(keep) > n {
			keep = append([]*v1.LogLine(nil), keep[len(keep)-n:]...)
		}
		if resp.GetNextAfter() <= after {
			return keep, nil
		}
		after = resp.GetNextAfter()
	}
}

// maxFollowTail is the API's bound on FollowLogsRequest.tail.
const maxFollowTail = 1000

// followLogs streams /v1/logs:follow until ctx ends (exit 0) or the
// server ends the stream (an error).
func followLogs(ctx context.Context, c *apiClient, fn, invocation string, after uint64, tail int, stdout io.Writer) error {
	q := url.Values{}
	setString(q, "function", fn)
	setString(q, "invocation_id", invocation)
	setUint(q, "after", after)
	if after == 0 {
		setInt(q, "tail", int64(tail))
	}
	req, err := c.newRequest(ctx, request{method: http.MethodGet, path: "/v1/logs:follow", query: q})
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var chunk struct {
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &chunk); err != nil {
			return fmt.Errorf("the log stream sent a line that is not JSON: %s", clipText(sc.Text(), 200))
		}
		if len(chunk.Error) > 0 {
			if ctx.Err() != nil {
				return nil // interrupted: the normal end of -f
			}
			err := decodeStatus(http.StatusOK, chunk.Error)
			var pe *apiError
			if errors.As(err, &pe) && pe.code == codes.Canceled {
				// Not asked for here: the server ended the stream (it is
				// stopping, "the client connection is closing"). Like a
				// broken stream: the server is unavailable (exit 5).
				return &connError{server: c.base.Redacted(), err: fmt.Errorf("the server ended the log stream: %s", pe.msg)}
			}
			return err
		}
		if c.json {
			if err := printJSON(stdout, chunk.Result); err != nil {
				return err
			}
		} else {
			var l v1.LogLine
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(chunk.Result, &l); err != nil {
				return fmt.Errorf("the log stream sent a line that is not a log line (%v): %s", err, clipText(sc.Text(), 200))
			}
			if _, err := fmt.Fprintln(stdout, fmtLogLine(&l, true)); err != nil {
				return err
			}
		}
		if f, ok := stdout.(interface{ Flush() error }); ok {
			_ = f.Flush()
		}
	}
	if ctx.Err() != nil {
		return nil // interrupted: the normal end of -f
	}
	if err := sc.Err(); err != nil {
		return &connError{server: c.base.Redacted(), err: fmt.Errorf("the log stream broke: %w", err)}
	}
	return &connError{server: c.base.Redacted(), err: errors.New("the server ended the log stream")}
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// remoteCmd is a command that calls a gateway's API. setup registers the
// command's own flags and returns the function that runs it with the
// parsed flags and positional arguments; it is called once per run, so
// no flag state is shared between runs.
type remoteCmd struct {
	name    string
	summary string
	usage   string // the synopsis and description; exitCodesHelp is appended
	// nargs checks the number of positional arguments ("" when fine).
	nargs func(n int) string
	setup func(fs *flag.FlagSet) remoteRun
}

// remoteRun runs a remote command. It returns nil or an error whose kind
// sets the exit status (see exitCode).
type remoteRun func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error

func registerRemote(rc *remoteCmd) {
	register(&command{name: rc.name, summary: rc.summary, run: rc.exec})
}

func exactArgs(n int, what string) func(int) string {
	return func(got int) string {
		if got != n {
			if n == 0 {
				return "takes no arguments"
			}
			return "needs " + what
		}
		return ""
	}
}

func (rc *remoteCmd) exec(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(rc.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf connFlags
	cf.register(fs)
	run := rc.setup(fs)
	help := rc.usage + exitCodesHelp
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, help)
		return exitOK
	}
	if err == nil && rc.nargs != nil {
		if msg := rc.nargs(len(pos)); msg != "" {
			err = errors.New(msg)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "moongate %s: %v\n\n%s", rc.name, err, firstLine(help))
		fmt.Fprintf(stderr, "(see 'moongate %s --help')\n", rc.name)
		return exitUsage
	}
	c, err := newClient(&cf, stderr)
	if err == nil {
		err = run(ctx, c, pos, stdout, stderr)
	}
	if err != nil {
		reportError(stderr, rc.name, err)
	}
	return exitCode(err)
}

// reportError prints err of command name, with a hint where one helps.
func reportError(stderr io.Writer, name string, err error) {
	msg := err.Error()
	var pe *apiError
	if errors.As(err, &pe) {
		switch pe.code {
		case codes.Unauthenticated:
			msg += " (check MOONGATE_TOKEN / --token-file / --token)"
		case codes.PermissionDenied:
			msg += " (use a token of scope admin)"
		}
	}
	if errors.Is(err, context.Canceled) {
		msg = "interrupted"
	}
	fmt.Fprintf(stderr, "moongate %s: %s\n", name, msg)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i+1]
	}
	return s + "\n"
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments (moongate fn get NAME --json); after "--" every
// argument is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			return nil, err
		}
		left := fs.Args()
		if len(left) == 0 {
			return pos, nil
		}
		if consumed := len(rest) - len(left); consumed > 0 && rest[consumed-1] == "--" {
			return append(pos, left...), nil
		}
		pos = append(pos, left[0])
		rest = left[1:]
	}
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// parseTimeArg parses a --from/--to value: RFC 3339 ("2026-11-26T15:00:00Z"),
// a date ("2026-11-26", UTC midnight), or a duration meaning that long ago
// ("90m", "24h"). now is the reference for durations.
func parseTimeArg(s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return timestamppb.New(t), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return timestamppb.New(t), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return timestamppb.New(now.Add(-d)), nil
	}
	return nil, usagef("invalid time %q: want RFC 3339 (2026-11-26T15:04:05Z), a date (2026-11-26) or a duration ago (90m)", s)
}

// setTime adds a timestamp query parameter.
func setTime(q url.Values, key string, ts *timestamppb.Timestamp) {
	if ts != nil {
		q.Set(key, ts.AsTime().UTC().Format(time.RFC3339Nano))
	}
}

// setDuration adds a duration query parameter in protobuf JSON form ("60s").
func setDuration(q url.Values, key string, d time.Duration) {
	if d != 0 {
		q.Set(key, strconv.FormatFloat(d.Seconds(), 'f', -1, 64)+"s")
	}
}

func setString(q url.Values, key, v string) {
	if v != "" {
		q.Set(key, v)
	}
}

func setInt(q url.Values, key string, v int64) {
	if v != 0 {
		q.Set(key, strconv.FormatInt(v, 10))
	}
}

// setUint is setInt for unsigned values (sequence numbers: one above
// 2^63-1 went out negative through setInt).
func setUint(q url.Values, key string, v uint64) {
	if v != 0 {
		q.Set(key, strconv.FormatUint(v, 10))
	}
}

// Rendering.

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// pagedTable prints the rows of a paged listing (--all) page by page,
// each column padded to the widest cell seen so far, two spaces apart as
// newTable's: later pages line up with the first unless one of their
// cells is wider. (A tabwriter per page aligned each page on its own; one
// for the whole listing would hold every row until the last page.) Cells
// must be single lines without tabs (oneLine, fmtValue). The zero value
// with w set is ready; not safe for concurrent use.
type pagedTable struct {
	w      io.Writer
	widths []int
	rows   [][]string
}

// row adds a row to the current page.
func (t *pagedTable) row(cells ...string) { t.rows = append(t.rows, cells) }

// flush prints the current page.
func (t *pagedTable) flush() error {
	for _, r := range t.rows {
		for i, c := range r[:max(len(r)-1, 0)] { // the last cell is not padded
			if i == len(t.widths) {
				t.widths = append(t.widths, 0)
			}
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, r := range t.rows {
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		b.WriteByte('\n')
	}
	t.rows = t.rows[:0]
	_, err := io.WriteString(t.w, b.String())
	return err
}

// fmtTime formats a timestamp in UTC with milliseconds ("-" when unset).
func fmtTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format("2006-01-02T15:04:05.000Z")
}

func fmtDuration(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return d.AsDuration().String()
}

// fmtValue formats a JSON value compactly, keys sorted.
func fmtValue(v *structpb.Value) string {
	if v == nil {
		return "null"
	}
	b, err := marshalText(v.AsInterface())
	if err != nil {
		return "?"
	}
	return jsonControls(b)
}

func fmtStruct(s *structpb.Struct) string {
	if s == nil || len(s.Fields) == 0 {
		return ""
	}
	b, err := marshalText(s.AsMap())
	if err != nil {
		return "?"
	}
	return jsonControls(b)
}

// fmtBytes formats a byte count with a binary unit.
func fmtBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

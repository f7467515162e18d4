package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

func init() {
	registerRemote(&remoteCmd{
		name: "data query", summary: "query the records the functions produced",
		usage: `usage: moongate data query [--stream S] [--function F] [--device D] [--from T] [--to T] [--desc] [--limit N] [--cursor C | --all] [flags]

Prints one page of records in time order (oldest first, --desc newest
first). --from (inclusive) and --to (exclusive) take RFC 3339 times, dates
(2026-11-26) or durations ago (90m). When more records match, the cursor of
the next page is printed on standard error; --all fetches every page.
`,
		nargs: exactArgs(0, ""),
		setup: setupDataQuery,
	})
	registerRemote(&remoteCmd{
		name: "data agg", summary: "count/min/max/mean of a numeric record field per time bucket",
		usage: `usage: moongate data agg --field PATH [--bucket D] [--stream S] [--function F] [--device D] [--from T] [--to T] [flags]

Aggregates a numeric JSON field of the records (a dotted path such as
sensors.temp) per time bucket of width --bucket (default: one bucket).
`,
		nargs: exactArgs(0, ""),
		setup: setupDataAgg,
	})
}

// recordFilter is the selection flags data query and data agg share.
type recordFilter struct {
	stream, function, device, from, to string
}

func (f *recordFilter) register(fs *flag.FlagSet) {
	fs.StringVar(&f.stream, "stream", "", "stream")
	fs.StringVar(&f.function, "function", "", "function")
	fs.StringVar(&f.device, "device", "", "device")
	fs.StringVar(&f.from, "from", "", "earliest record time, inclusive")
	fs.StringVar(&f.to, "to", "", "latest record time, exclusive")
}

func (f *recordFilter) query(now time.Time) (url.Values, error) {
	q := url.Values{}
	setString(q, "stream", f.stream)
	setString(q, "function", f.function)
	setString(q, "device", f.device)
	from, err := parseTimeArg(f.from, now)
	if err != nil {
		return nil, err
	}
	to, err := parseTimeArg(f.to, now)
	if err != nil {
		return nil, err
	}
	setTime(q, "from", from)
	setTime(q, "to", to)
	return q, nil
}

func setupDataQuery(fs *flag.FlagSet) remoteRun {
	var f recordFilter
	f.register(fs)
	desc := fs.Bool("desc", false, "newest first")
	limit := fs.Int("limit", 100, "page size (at most 10000)")
	cursor := fs.String("cursor", "", "cursor of the next page")
	all := fs.Bool("all", false, "fetch every page")
	return func(ctx context.Context, c *apiClient, _ []string, stdout, stderr io.Writer) error {
		if *limit <= 0 || *limit > 10000 {
			return usagef("--limit must be between 1 and 10000")
		}
		if *all && *cursor != "" {
			return usagef("--all and --cursor exclude each other")
		}
		q, err := f.query(time.Now())
		if err != nil {
			return err
		}
		if *desc {
			q.Set("order", v1.Order_ORDER_DESC.String())
		}
		setInt(q, "limit", int64(*limit))
		setString(q, "cursor", *cursor)
		tbl := &pagedTable{w: stdout}
		tbl.row("TIME", "FUNCTION", "DEVICE", "STREAM", "DATA")
		for {
			var resp v1.QueryRecordsResponse
			raw, err := c.call(ctx, http.MethodGet, "/v1/records", q, nil, &resp)
			if err != nil {
				return err
			}
			if c.json {
				err = printJSON(stdout, raw)
			} else {
				err = renderRecords(tbl, &resp)
			}
			if err != nil {
				return err
			}
			next := resp.GetNextCursor()
			if next == "" {
				return nil
			}
			if !*all {
				fmt.Fprintf(stderr, "more records: --cursor %s\n", next)
				return nil
			}
			q.Set("cursor", next)
		}
	}
}

// renderRecords prints a page of records to tbl (its first page after
// the header row).
func renderRecords(tbl *pagedTable, resp *v1.QueryRecordsResponse) error {
	for _, r := range resp.GetRecords() {
		tbl.row(fmtTime(r.GetEventTime()), r.GetFunction(), orDash(oneLine(r.GetDevice())), oneLine(r.GetStream()), fmtValue(r.GetData()))
	}
	return tbl.flush()
}

func setupDataAgg(fs *flag.FlagSet) remoteRun {
	var f recordFilter
	f.register(fs)
	field := fs.String("field", "", "numeric JSON field, a dotted path")
	bucket := fs.Duration("bucket", 0, "bucket width, e.g. 1h (default one bucket)")
	return func(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
		if *field == "" {
			return usagef("--field is required")
		}
		if *bucket < 0 {
			return usagef("--bucket must be positive")
		}
		q, err := f.query(time.Now())
		if err != nil {
			return err
		}
		q.Set("field", *field)
		setDuration(q, "bucket", *bucket)
		var resp v1.AggregateRecordsResponse
		raw, err := c.call(ctx, http.MethodGet, "/v1/records:aggregate", q, nil, &resp)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		return renderBuckets(stdout, &resp)
	}
}

func renderBuckets(w io.Writer, resp *v1.AggregateRecordsResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "START\tCOUNT\tMIN\tMAX\tMEAN")
	for _, b := range resp.GetBuckets() {
		fmt.Fprintf(tw, "%s\t%d\t%g\t%g\t%g\n", fmtTime(b.GetStart()), b.GetCount(), b.GetMin(), b.GetMax(), b.GetMean())
	}
	return tw.Flush()
}

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
		name: "usage", summary: "metering per function and time bucket",
		usage: `usage: moongate usage [--function F] [--from T] [--to T] [--bucket D] [flags]

Sums the metering of the functions per time bucket (--bucket, whole
minutes, default 1h): invocations, errors, VM steps, wall time, bytes in and
out. --from defaults to 24h ago.
`,
		nargs: exactArgs(0, ""),
		setup: setupUsage,
	})
}

func setupUsage(fs *flag.FlagSet) remoteRun {
	fn := fs.String("function", "", "only this function")
	from := fs.String("from", "24h", "earliest bucket start")
	to := fs.String("to", "", "latest time, exclusive")
	bucket := fs.Duration("bucket", time.Hour, "bucket width (whole minutes)")
	return func(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
		if *bucket <= 0 || *bucket%time.Minute != 0 {
			return usagef("--bucket must be a positive whole number of minutes")
		}
		now := time.Now()
		f, err := parseTimeArg(*from, now)
		if err != nil {
			return err
		}
		t, err := parseTimeArg(*to, now)
		if err != nil {
			return err
		}
		q := url.Values{}
		setString(q, "function", *fn)
		setTime(q, "from", f)
		setTime(q, "to", t)
		setDuration(q, "bucket", *bucket)
		var resp v1.GetUsageResponse
		raw, err := c.call(ctx, http.MethodGet, "/v1/usage", q, nil, &resp)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		return renderUsage(stdout, &resp)
	}
}

func renderUsage(w io.Writer, resp *v1.GetUsageResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "FUNCTION\tSTART\tINVOCATIONS\tERRORS\tSTEPS\tWALL\tBYTES IN\tBYTES OUT")
	for _, u := range resp.GetUsage() {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%d\t%d\n", u.GetFunction(), fmtTime(u.GetStart()), u.GetInvocations(), u.GetErrors(),
			u.GetSteps(), fmtDuration(u.GetWall()), u.GetBytesIn(), u.GetBytesOut())
	}
	return tw.Flush()
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/store"
)

func init() {
	registerRemote(&remoteCmd{
		name: "dlq ls", summary: "list dead letters (events whose function failed for good)",
		usage: "usage: moongate dlq ls [--function F] [--after SEQ] [--limit N] [flags]\n\nLists dead letters, oldest first. When the page is full, the --after of the\nnext page is printed on standard error.\n",
		nargs: exactArgs(0, ""),
		setup: setupDLQLs,
	})
	registerRemote(&remoteCmd{
		name: "dlq replay", summary: "run dead letters again through the current version",
		usage: `usage: moongate dlq replay SEQ | --function F | --all [flags]

Puts dead letters back into the inbox, durably, to run through the current
version of their function: one (SEQ), those of a function, or all. Needs a
token of scope admin. The exit status is 1 when some were skipped (their
function no longer exists, or their event cannot be decoded).
`,
		nargs: func(n int) string {
			if n > 1 {
				return "takes at most one SEQ"
			}
			return ""
		},
		setup: setupDLQReplay,
	})
	registerRemote(&remoteCmd{
		name: "dlq purge", summary: "delete dead letters",
		usage: "usage: moongate dlq purge --function F | --all [flags]\n\nDeletes the dead letters of a function, or all of them. Needs a token of\nscope admin.\n",
		nargs: exactArgs(0, ""),
		setup: setupDLQPurge,
	})
}

func setupDLQLs(fs *flag.FlagSet) remoteRun {
	fn := fs.String("function", "", "only this function's")
	after := fs.Uint64("after", 0, "only dead letters after this sequence number")
	limit := fs.Int("limit", 100, "page size (at most 10000)")
	return func(ctx context.Context, c *apiClient, _ []string, stdout, stderr io.Writer) error {
		if *limit <= 0 || *limit > 10000 {
			return usagef("--limit must be between 1 and 10000")
		}
		q := url.Values{}
		setString(q, "function", *fn)
		setUint(q, "after", *after)
		setInt(q, "limit", int64(*limit))
		var resp v1.ListDeadLettersResponse
		raw, err := c.call(ctx, http.MethodGet, "/v1/deadletters", q, nil, &resp)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		if err := renderDeadLetters(stdout, &resp); err != nil {
			return err
		}
		// A page ends at --limit, or once it holds store.MaxPageBytes of
		// stored events (its answer is then at least that large).
		if n := len(resp.GetDeadLetters()); n > 0 && (n == *limit || len(raw) >= store.MaxPageBytes) {
			fmt.Fprintf(stderr, "more dead letters may follow: --after %d\n", resp.GetNextAfter())
		}
		return nil
	}
}

func renderDeadLetters(w io.Writer, resp *v1.ListDeadLettersResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "SEQ\tTIME\tFUNCTION\tKEY\tATTEMPTS\tERROR\tPAYLOAD")
	for _, d := range resp.GetDeadLetters() {
		ev := d.GetEvent()
		payload := ev.GetPayloadText()
		if payload == "" && len(ev.GetPayload()) > 0 {
			payload = fmtPayload(ev.GetPayload())
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.GetSeq(), fmtTime(d.GetTime()), d.GetFunction(), orDash(clipText(d.GetKey(), 100)), d.GetAttempts(),
			clipText(d.GetError(), 100), orDash(clipText(payload, 100)))
	}
	return tw.Flush()
}

func setupDLQReplay(fs *flag.FlagSet) remoteRun {
	fn := fs.String("function", "", "every dead letter of this function")
	all := fs.Bool("all", false, "every dead letter")
	return func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error {
		req := &v1.ReplayDeadLettersRequest{Function: *fn, All: *all}
		n := 0
		if len(args) == 1 {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || seq == 0 {
				return usagef("invalid SEQ %q: a positive integer (see 'moongate dlq ls')", args[0])
			}
			req.Seq = seq
			n++
		}
		if *fn != "" {
			n++
		}
		if *all {
			n++
		}
		if n != 1 {
			return usagef("give exactly one of SEQ, --function or --all")
		}
		var resp v1.ReplayDeadLettersResponse
		raw, err := c.call(ctx, http.MethodPost, "/v1/deadletters:replay", nil, req, &resp)
		if err != nil {
			return err
		}
		if c.json {
			err = printJSON(stdout, raw)
		} else {
			_, err = fmt.Fprintf(stdout, "replayed %d, skipped %d\n", resp.GetReplayed(), resp.GetSkipped())
			for _, e := range resp.GetErrors() {
				fmt.Fprintf(stderr, "skipped: %s\n", e)
			}
		}
		if err == nil && resp.GetSkipped() > 0 {
			return fmt.Errorf("%d dead letters were skipped", resp.GetSkipped())
		}
		return err
	}
}

func setupDLQPurge(fs *flag.FlagSet) remoteRun {
	fn := fs.String("function", "", "the dead letters of this function")
	all := fs.Bool("all", false, "every dead letter")
	return func(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
		if (*fn != "") == *all {
			return usagef("give exactly one of --function or --all")
		}
		var resp v1.PurgeDeadLettersResponse
		raw, err := c.call(ctx, http.MethodPost, "/v1/deadletters:purge", nil, &v1.PurgeDeadLettersRequest{Function: *fn, All: *all}, &resp)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		_, err = fmt.Fprintf(stdout, "purged %d\n", resp.GetPurged())
		return err
	}
}

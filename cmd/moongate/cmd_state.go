package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

func init() {
	registerRemote(&remoteCmd{
		name: "state get", summary: "print one state key of a function",
		usage: "usage: moongate state get FUNCTION KEY [flags]\n\nPrints the JSON value of one state key.\n",
		nargs: exactArgs(2, "FUNCTION and KEY"),
		setup: func(*flag.FlagSet) remoteRun { return runStateGet },
	})
	registerRemote(&remoteCmd{
		name: "state ls", summary: "list the state keys of a function",
		usage: "usage: moongate state ls FUNCTION [--prefix P] [--limit N] [--cursor C | --all] [flags]\n\nLists the state keys starting with --prefix, in key order, with their values.\n",
		nargs: exactArgs(1, "FUNCTION"),
		setup: setupStateLs,
	})
	registerRemote(&remoteCmd{
		name: "state put", summary: "set one state key of a function",
		usage: "usage: moongate state put FUNCTION KEY VALUE [flags]\n\nDurably sets KEY to VALUE, a JSON value (@FILE reads it from a file, -\nfrom standard input). Needs a token of scope admin.\n",
		nargs: exactArgs(3, "FUNCTION, KEY and VALUE"),
		setup: func(*flag.FlagSet) remoteRun { return runStatePut },
	})
	registerRemote(&remoteCmd{
		name: "state rm", summary: "delete one state key of a function",
		usage: "usage: moongate state rm FUNCTION KEY [flags]\n\nDurably deletes KEY (absent is not an error). Needs a token of scope admin.\n",
		nargs: exactArgs(2, "FUNCTION and KEY"),
		setup: func(*flag.FlagSet) remoteRun { return runStateRm },
	})
}

// statePath is the REST path of a function's state, or of one key (a key
// may hold "/": it is escaped to stay one path segment).
func statePath(fn, key string) string {
	p := "/v1/functions/" + url.PathEscape(fn) + "/state"
	if key != "" {
		p += "/" + pathSegment(key)
	}
	return p
}

// pathSegment escapes s as one path segment. The keys "." and ".." are
// sent as %2E and %2E%2E: as they are, HTTP stacks resolve them as dot
// segments (the state of the function, or the function itself).
func pathSegment(s string) string {
	if s == "." || s == ".." {
		return strings.Repeat("%2E", len(s))
	}
	return url.PathEscape(s)
}

func runStateGet(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	if args[1] == "" {
		return usagef("KEY is empty")
	}
	var e v1.StateEntry
	raw, err := c.call(ctx, http.MethodGet, statePath(args[0], args[1]), nil, nil, &e)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	_, err = fmt.Fprintln(stdout, fmtValue(e.GetValue()))
	return err
}

func setupStateLs(fs *flag.FlagSet) remoteRun {
	prefix := fs.String("prefix", "", "key prefix")
	limit := fs.Int("limit", 100, "page size (at most 10000)")
	cursor := fs.String("cursor", "", "cursor of the next page")
	all := fs.Bool("all", false, "fetch every page")
	return func(ctx context.Context, c *apiClient, args []string, stdout, stderr io.Writer) error {
		if *limit <= 0 || *limit > 10000 {
			return usagef("--limit must be between 1 and 10000")
		}
		if *all && *cursor != "" {
			return usagef("--all and --cursor exclude each other")
		}
		q := url.Values{}
		setString(q, "prefix", *prefix)
		setInt(q, "limit", int64(*limit))
		setString(q, "cursor", *cursor)
		tbl := &pagedTable{w: stdout}
		tbl.row("KEY", "VALUE")
		for {
			var resp v1.ListStateResponse
			raw, err := c.call(ctx, http.MethodGet, statePath(args[0], ""), q, nil, &resp)
			if err != nil {
				return err
			}
			if c.json {
				err = printJSON(stdout, raw)
			} else {
				for _, e := range resp.GetEntries() {
					tbl.row(oneLine(e.GetKey()), fmtValue(e.GetValue()))
				}
				err = tbl.flush()
			}
			if err != nil {
				return err
			}
			next := resp.GetNextCursor()
			if next == "" {
				return nil
			}
			if !*all {
				fmt.Fprintf(stderr, "more keys: --cursor %s\n", next)
				return nil
			}
			q.Set("cursor", next)
		}
	}
}

func runStatePut(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	if args[1] == "" {
		return usagef("KEY is empty")
	}
	b, err := readDataArg(args[2], stdin)
	if err != nil {
		return usagef("VALUE: %v", err)
	}
	b = bytes.TrimSpace(b)
	if !json.Valid(b) {
		var x any
		err := json.Unmarshal(b, &x)
		return usagef("VALUE is not valid JSON (%v): quote strings, e.g. '\"on\"'", err)
	}
	var e v1.StateEntry
	raw, err := c.callRaw(ctx, request{method: http.MethodPut, path: statePath(args[0], args[1]), body: b}, &e)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	_, err = fmt.Fprintf(stdout, "%s = %s\n", oneLine(e.GetKey()), fmtValue(e.GetValue()))
	return err
}

func runStateRm(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
	if args[1] == "" {
		return usagef("KEY is empty")
	}
	raw, err := c.call(ctx, http.MethodDelete, statePath(args[0], args[1]), nil, nil, &v1.DeleteStateResponse{})
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	_, err = fmt.Fprintf(stdout, "deleted %s\n", args[1])
	return err
}

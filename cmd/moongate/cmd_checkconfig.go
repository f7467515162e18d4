package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/moongate-edge/moongate/gateway/config"
)

func init() {
	register(&command{
		name:    "check-config",
		summary: "validate a configuration file without starting",
		run:     runCheckConfig,
	})
}

// runCheckConfig loads FILE exactly as `serve --config FILE` would
// (environment overrides included) and prints "FILE: ok" or every problem,
// one per line.
func runCheckConfig(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: moongate check-config FILE\n\nValidates FILE (with the MOONGATE_* environment overrides applied) and\nprints every problem as FILE:LINE: KEY: MESSAGE. Exit status 0 when valid,\n1 when not, 2 on bad usage.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	file := fs.Arg(0)
	if _, err := config.Load(file); err != nil {
		if es := config.Errors(err); len(es) > 0 {
			for _, e := range es {
				fmt.Fprintln(stderr, e)
			}
			fmt.Fprintf(stderr, "%s: %d problem(s)\n", file, len(es))
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", file, err)
		}
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: ok\n", file)
	return exitOK
}

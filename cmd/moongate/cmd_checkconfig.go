package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/moongate-edge/moongate/gateway"
	"github.com/moongate-edge/moongate/gateway/config"
	"github.com/moongate-edge/moongate/gateway/trigger"
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
// one per line; when the file sets functions_dir it checks the function
// manifests there as well.
func runCheckConfig(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: moongate check-config FILE\n\nValidates FILE (with the MOONGATE_* environment overrides applied) and\nprints every problem as FILE:LINE: KEY: MESSAGE. When functions_dir is set,\nthe functions there (NAME.yaml + NAME.lua) are checked too. Exit status 0\nwhen valid, 1 when not, 2 on bad usage.")
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
	cfg, err := config.Load(file)
	if err == nil {
		err = gateway.CheckConfig(cfg) // what serve checks beyond the config package
	}
	if err != nil {
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
	if cfg.FunctionsDir == "" {
		return exitOK
	}
	// The function manifests are configuration too: check them the same way.
	fns, errs := trigger.LoadDir(cfg.FunctionsDir)
	ok := fns[:0:0]
	for _, f := range fns {
		if err := gateway.CheckFunction(&f, cfg); err != nil {
			errs = append(errs, &trigger.FileError{Name: f.Manifest.Name, Path: f.ManifestPath, Err: err})
			continue
		}
		ok = append(ok, f)
	}
	fns = ok
	for _, e := range errs {
		fmt.Fprintln(stderr, e)
	}
	if len(errs) > 0 {
		fmt.Fprintf(stderr, "%s: %d function(s) ok, %d problem(s)\n", cfg.FunctionsDir, len(fns), len(errs))
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: %d function(s) ok\n", cfg.FunctionsDir, len(fns))
	return exitOK
}

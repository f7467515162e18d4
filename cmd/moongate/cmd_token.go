package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"

	"github.com/moongate-edge/moongate/gateway/apiserver"
)

func init() {
	register(&command{name: "token", summary: "create an API token: token create NAME [--scope admin|read]", run: runToken})
}

var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// runToken handles `moongate token create NAME [--scope admin|read]`: it
// prints a new random token (first line) and its api.tokens entry for the
// configuration (second line). The token itself is kept nowhere: only its
// hash goes into the configuration.
func runToken(_ context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: moongate token create NAME [--scope admin|read]")
		return exitUsage
	}
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(stderr, "usage: moongate token create NAME [--scope admin|read]") // as the other commands' -h
		return exitOK
	}
	if len(args) == 0 || args[0] != "create" {
		return usage()
	}
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scope := fs.String("scope", "read", "token scope: admin (deploy, delete, invoke, writes) or read (queries)")
	// NAME may come before or after the flags.
	rest := args[1:]
	var name string
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		name, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK // asked for: the usage was printed
		}
		return exitUsage
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return usage()
	}
	if !tokenNameRE.MatchString(name) {
		fmt.Fprintf(stderr, "token create: invalid name %q: 1 to 64 letters, digits, '.', '_' or '-'\n", name)
		return exitUsage
	}
	if _, err := apiserver.ParseScope(*scope); err != nil {
		fmt.Fprintf(stderr, "token create: invalid scope %q: admin or read\n", *scope)
		return exitUsage
	}
	tok, hash, err := apiserver.NewToken()
	if err != nil {
		fmt.Fprintf(stderr, "token create: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stdout, "    - {name: %q, scope: %s, hash: %q}\n", name, *scope, hash)
	fmt.Fprintln(stderr, "Keep the token (first line) now: it is stored nowhere. Add the second line under api.tokens in the configuration and restart moongate.")
	return exitOK
}

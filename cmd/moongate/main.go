// Command moongate is the moongate daemon (`moongate serve`) and its
// command-line interface. It only parses arguments and waits for signals:
// the work is done by the gateway, luavm and store packages.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// Exit codes that scripts can rely on.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad arguments or unknown command
)

// command is one subcommand. Names may have two words ("fn test").
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands = map[string]*command{}

// register adds a subcommand; each command lives in its own file and
// registers itself from init.
func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("moongate: duplicate command " + c.name)
	}
	commands[c.name] = c
}

func main() {
	runtime.MemProfileRate = memProfileRate(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	if len(args) >= 2 {
		if c, ok := commands[args[0]+" "+args[1]]; ok {
			return c.run(ctx, args[2:], stdout, stderr)
		}
	}
	if c, ok := commands[args[0]]; ok {
		return c.run(ctx, args[1:], stdout, stderr)
	}
	if sub := subcommands(args[0]); len(sub) > 0 {
		fmt.Fprintf(stderr, "moongate %s: want a subcommand: %s (see 'moongate help')\n", args[0], strings.Join(sub, ", "))
		return exitUsage
	}
	if strings.HasPrefix(args[0], "-") {
		// "moongate --server URL fn ls": it was "unknown command
		// \"--server URL\"".
		fmt.Fprintf(stderr, "moongate: %s before the command: flags go after it (moongate COMMAND [flags]; see 'moongate help')\n", args[0])
		return exitUsage
	}
	fmt.Fprintf(stderr, "moongate: unknown command %q (see 'moongate help')\n", strings.Join(args[:min(2, len(args))], " "))
	return exitUsage
}

// subcommands lists the commands of group ("fn" -> "fn deploy", ...).
func subcommands(group string) []string {
	var out []string
	for n := range commands {
		if strings.HasPrefix(n, group+" ") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: moongate <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-16s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\n'moongate COMMAND --help' describes a command. Exit status: 0 ok, 1 failed,\n2 bad arguments, 3 not found, 4 no or refused token, 5 server unreachable\nor unavailable (see docs/cli.md).")
}

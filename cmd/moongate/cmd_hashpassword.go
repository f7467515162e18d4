package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/moongate-edge/moongate/mqtt"
)

func init() {
	register(&command{name: "hash-password", summary: "print the bcrypt hash of a device password (read from standard input)", run: runHashPassword})
}

// stdin is where hash-password reads the password; tests replace it.
var stdin io.Reader = os.Stdin

// runHashPassword reads one line (the password) from standard input and
// prints its bcrypt hash, for mqtt.embedded.users[].password_hash. The
// password is never taken as an argument, so it stays out of shell history
// and process lists.
func runHashPassword(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hash-password", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: echo -n PASSWORD | moongate hash-password   (the password is read from standard input)")
		return exitUsage
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		fmt.Fprintf(stderr, "hash-password: read: %v\n", err)
		return exitFailure
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(stderr, "hash-password: empty password")
		return exitFailure
	}
	hash, err := mqtt.HashPassword(pw)
	if err != nil {
		fmt.Fprintf(stderr, "hash-password: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, hash)
	return exitOK
}

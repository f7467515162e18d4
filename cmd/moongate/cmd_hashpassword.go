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
	"golang.org/x/term"
)

func init() {
	register(&command{name: "hash-password", summary: "print the bcrypt hash of a device password (read from standard input)", run: runHashPassword})
}

// stdin is where hash-password reads the password; tests replace it.
var stdin io.Reader = os.Stdin

// terminalPassword returns a reader of one password typed without echo
// when standard input is a terminal (ok false otherwise); tests replace it.
var terminalPassword = func() (read func() ([]byte, error), ok bool) {
	f, isFile := stdin.(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return nil, false
	}
	return func() ([]byte, error) { return term.ReadPassword(int(f.Fd())) }, true
}

const hashPasswordUsage = `usage: moongate hash-password < FILE   (or type it: asked twice, not echoed)

Prints the bcrypt hash of the password read from standard input (its first
line), for mqtt.embedded.users[].password_hash. On a terminal the password
is read without echo and asked twice. It is never an argument: that would
put it in the process list and the shell history.
`

// runHashPassword reads the password from standard input (without echo
// and twice on a terminal, else its first line) and prints its bcrypt
// hash, for mqtt.embedded.users[].password_hash. The password is never
// taken as an argument, so it stays out of shell history and process
// lists.
func runHashPassword(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hash-password", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, hashPasswordUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "hash-password: %v\n%s", err, hashPasswordUsage)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hash-password: the password is not an argument (it would be visible in ps and the shell history)\n%s", hashPasswordUsage)
		return exitUsage
	}
	var pw string
	if read, ok := terminalPassword(); ok {
		var answers [2]string
		for i, prompt := range []string{"Password: ", "Repeat the password: "} {
			fmt.Fprint(stderr, prompt)
			b, err := read()
			fmt.Fprintln(stderr)
			if err != nil {
				fmt.Fprintf(stderr, "hash-password: read: %v\n", err)
				return exitFailure
			}
			answers[i] = string(b)
		}
		if answers[0] != answers[1] {
			fmt.Fprintln(stderr, "hash-password: the passwords do not match")
			return exitFailure
		}
		pw = answers[0]
	} else {
		line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
		if err != nil && err != io.EOF {
			fmt.Fprintf(stderr, "hash-password: read: %v\n", err)
			return exitFailure
		}
		pw = strings.TrimRight(line, "\r\n")
	}
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

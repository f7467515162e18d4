package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHashPassword(t *testing.T) {
	cases := []struct {
		name, in string
		args     []string
		code     int
	}{
		{"line", "s3cret\n", nil, exitOK},
		{"no newline", "s3cret", nil, exitOK},
		{"empty", "\n", nil, exitFailure},
		{"argument refused", "s3cret\n", []string{"s3cret"}, exitUsage},
		{"too long for bcrypt", strings.Repeat("x", 100) + "\n", nil, exitFailure},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdin = strings.NewReader(c.in)
			t.Cleanup(func() { stdin = nil })
			var out, errb bytes.Buffer
			code := run(context.Background(), append([]string{"hash-password"}, c.args...), &out, &errb)
			if code != c.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, c.code, errb.String())
			}
			if code != exitOK {
				return
			}
			hash := strings.TrimSpace(out.String())
			if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret")); err != nil {
				t.Fatalf("hash %q does not verify: %v", hash, err)
			}
		})
	}
}

// On a terminal the password is read without echo (terminalPassword) and
// asked twice; the usage never suggests putting it on a command line.
func TestHashPasswordTerminal(t *testing.T) {
	old := terminalPassword
	t.Cleanup(func() { terminalPassword = old })
	fake := func(answers ...string) {
		terminalPassword = func() (func() ([]byte, error), bool) {
			return func() ([]byte, error) {
				a := answers[0]
				answers = answers[1:]
				return []byte(a), nil
			}, true
		}
	}
	stdin = strings.NewReader("not read on a terminal\n")
	t.Cleanup(func() { stdin = nil })

	fake("s3cret", "s3cret")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"hash-password"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if err := bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(out.String())), []byte("s3cret")); err != nil {
		t.Fatalf("hash %q: %v", out.String(), err)
	}
	if !strings.Contains(errb.String(), "Password: ") || !strings.Contains(errb.String(), "Repeat the password: ") {
		t.Errorf("prompts: %q", errb.String())
	}

	fake("s3cret", "s3cert")
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"hash-password"}, &out, &errb); code != exitFailure ||
		!strings.Contains(errb.String(), "do not match") || out.Len() != 0 {
		t.Errorf("mismatch: exit %d, out %q, stderr %q", code, out.String(), errb.String())
	}

	errb.Reset()
	run(context.Background(), []string{"hash-password", "s3cret"}, &out, &errb)
	if strings.Contains(errb.String(), "echo -n") || !strings.Contains(errb.String(), "not an argument") {
		t.Errorf("usage: %q", errb.String())
	}
}

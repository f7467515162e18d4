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

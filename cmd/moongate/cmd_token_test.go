package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/moongate-edge/moongate/gateway/apiserver"
	"github.com/moongate-edge/moongate/gateway/config"
)

func TestTokenCreate(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runToken(context.Background(), []string{"create", "ci", "--scope", "admin"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", out.String())
	}
	tok := lines[0]
	if !strings.HasPrefix(tok, apiserver.TokenPrefix) || len(tok) != len(apiserver.TokenPrefix)+43 {
		t.Fatalf("token %q", tok)
	}
	// The printed line is a valid api.tokens entry whose hash is the token's.
	cfg, err := config.Parse("c.yaml", []byte("api:\n  tokens:\n"+lines[1]+"\n"))
	if err != nil {
		t.Fatalf("config line %q: %v", lines[1], err)
	}
	want := config.APIToken{Name: "ci", Scope: "admin", Hash: apiserver.HashToken(tok)}
	if len(cfg.API.Tokens) != 1 || cfg.API.Tokens[0] != want {
		t.Fatalf("tokens %+v, want %+v", cfg.API.Tokens, want)
	}
	// Two tokens differ.
	var out2 bytes.Buffer
	runToken(context.Background(), []string{"create", "--scope", "read", "b"}, &out2, &errb)
	if strings.Split(out2.String(), "\n")[0] == tok || !strings.Contains(out2.String(), "scope: read") {
		t.Fatalf("second token: %q", out2.String())
	}
}

func TestTokenCreateBadArgs(t *testing.T) {
	for _, args := range [][]string{nil, {"list"}, {"create"}, {"create", "bad name"}, {"create", "a", "--scope", "root"}, {"create", "a", "b"}, {"create", strings.Repeat("x", 65)}} {
		var out, errb bytes.Buffer
		if code := runToken(context.Background(), args, &out, &errb); code != exitUsage || out.Len() != 0 {
			t.Errorf("%q: exit %d, stdout %q", fmt.Sprint(args), code, out.String())
		}
	}
}

package sync

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/moongate-edge/moongate/store"
)

// TestNATSCredsFileChecked: a nats target's creds_file is read and parsed
// by New, which refuses one that is missing or holds no NKey seed with
// ErrInvalidConfig, like a missing TLS CA file. (nats.go reads it only at
// each connect: every connect failed, for ever.)
func TestNATSCredsFileChecked(t *testing.T) {
	st := openStore(t, "", store.DurabilityNone)
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	// The JWT is the server's to check; New checks that there is one.
	valid := fmt.Sprintf("-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n------END NATS USER JWT------\n\n"+
		"-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n", seed)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, c := range map[string]struct {
		path string
		want string // in the error; "" accepted
	}{
		"missing": {filepath.Join(dir, "missing.creds"), "no such file"},
		"no seed": {write("noseed.creds", "-----BEGIN NATS USER JWT-----\neyJ0.e30.c2ln\n------END NATS USER JWT------\n"), "NKey seed"},
		"empty":   {write("empty.creds", ""), "no user JWT"},
		"valid":   {write("gw.creds", valid), ""},
	} {
		tc := fastTarget("js", "nats")
		tc.NATS.URL = "nats://127.0.0.1:1"
		tc.NATS.CredsFile = c.path
		m, err := New(Options{Store: st, GatewayID: "gw", Logger: quietLogger(), Targets: []TargetConfig{tc}})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "creds_file")):
			t.Errorf("%s: New returned %v, want ErrInvalidConfig naming creds_file and %q", name, err, c.want)
		}
		if m != nil {
			m.closeTargets()
		}
	}
}

// TestNATSPublishPermissionDenied: the target's NATS user may not publish
// to its subjects. The server says so (-ERR 'Permissions Violation for
// Publish to ...') and drops the messages: the delivery fails at once
// with the server's reason in the status, not after ack_timeout as an
// acknowledgement timeout, and nothing is acknowledged or dead-lettered
// (retried with the backoff, like an HTTP 403).
func TestNATSPublishPermissionDenied(t *testing.T) {
	ns := startNATS(t,
		`authorization {`,
		`  users = [`,
		`    {user: admin, password: admin}`,
		`    {user: gw, password: pw, permissions: {publish: {deny: ["gateways.>"]}, subscribe: {allow: [">"]}}}`,
		`  ]`,
		`}`,
		`no_auth_user: admin`)
	createStream(t, ns.url())
	st := openStore(t, "", store.DurabilityNone)
	tc := fastTarget("js", "nats")
	tc.NATS.URL = ns.url()
	tc.NATS.Username, tc.NATS.Password = "gw", "pw"
	tc.AckTimeout = 30 * time.Second // the failure must not wait for it
	m, _ := startManager(t, st, tc)
	commitRecords(t, st, 3, 1, "js")
	waitFor(t, 10*time.Second, "a delivery failure", func() bool { return statusOf(m, "js").LastError != "" })
	s := statusOf(m, "js")
	if !strings.Contains(strings.ToLower(s.LastError), "permissions violation") || !strings.Contains(s.LastError, "gateways.") {
		t.Fatalf("last error %q (state %s): the server's Permissions Violation is not reported", s.LastError, s.State)
	}
	if s.Delivered != 0 || s.DeadLettered != 0 || s.Backlog != 3 || streamCount(ns.url()) != 0 {
		t.Fatalf("status %+v, stream holds %d", s, streamCount(ns.url()))
	}
	t.Logf("last error: %s", s.LastError)
}

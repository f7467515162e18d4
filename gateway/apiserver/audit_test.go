package apiserver_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for the daemon's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAuditLog checks the audit lines of the calls that change the
// gateway: token name, peer, function and, for a deploy, the source's
// SHA-256, refused deploys included.
func TestAuditLog(t *testing.T) {
	var logs syncBuffer
	e := startDaemonWith(t, daemonConfig(t.TempDir(), ""), nil, &logs)
	src := "function handle(event, ctx) return nil end"
	sum := sha256.Sum256([]byte(src))
	e.mustCall(200, "POST", "/v1/functions", adminToken, obj{"name": "a", "source": src}, nil)
	e.expectStatus(400, "compile", "POST", "/v1/functions", adminToken, obj{"name": "a", "source": "function handle("})
	e.mustCall(200, "PUT", "/v1/functions/a/state/k", adminToken, "1", nil)
	e.mustCall(200, "DELETE", "/v1/functions/a", adminToken, nil, nil)
	out := logs.String()
	for _, re := range []string{
		`msg="function deployed" audit=deploy token=admin1 peer=127\.0\.0\.1:\d+ function=a source_sha256=` + hex.EncodeToString(sum[:]) + ` source_bytes=42 dry_run=false version=1`,
		`msg="function deploy refused" audit=deploy token=admin1 peer=127\.0\.0\.1:\d+ function=a source_sha256=[0-9a-f]{64} .*err=".*compile`,
		`msg="state put" audit=state_put token=admin1 .*function=a key=k`,
		`msg="function delete" audit=delete token=admin1 .*function=a versions=1`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("no audit line matching %s in:\n%s", re, out)
		}
	}
	if strings.Contains(out, adminToken) {
		t.Error("a token was logged")
	}
}

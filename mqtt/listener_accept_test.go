package mqtt

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestListenerSurvivesAcceptError: one failed accept(2) (EMFILE:
// the process is out of file descriptors for a moment) ends the TCP
// listener's Serve loop for good: the socket stays open, the kernel keeps
// completing handshakes, but no connection is ever served again, while
// Ready() still says true. (net/http retries temporary accept errors with
// a backoff; a fleet of devices reconnecting at once, or a burst of
// connections, is what runs a Pi's broker out of descriptors.)
func TestListenerSurvivesAcceptError(t *testing.T) {
	var logs lockedBuffer
	e := startEmbeddedLog(t, EmbeddedConfig{AllowAnonymous: true}, slog.New(slog.NewTextHandler(&logs, nil)), acceptAll, "t/#")
	addr := e.Addr().String()
	c := rawDial(t, addr, "before")
	c.Close()

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Skip(err)
	}
	// Leave the process a handful of descriptors, take them all but one
	// with files, and dial: the client side gets the last descriptor, the
	// broker's accept gets EMFILE.
	lim := old
	lim.Cur = uint64(countFDs(t) + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skip(err)
	}
	var held []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		held = append(held, f)
	}
	if len(held) > 0 {
		held[len(held)-1].Close()
		held = held[:len(held)-1]
	}
	starved, derr := net.DialTimeout("tcp", addr, 2*time.Second)
	// Wait (at most 5 s) until the broker's accept has run into the
	// limit: its listener logs the error it stopped on.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !strings.Contains(logs.String(), "too many open files"); {
		time.Sleep(5 * time.Millisecond)
	}
	for _, f := range held {
		f.Close()
	}
	if starved != nil {
		starved.Close()
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Skipf("could not dial with the last descriptor: %v", derr)
	}

	// Descriptors are plentiful again: a device connects.
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(rawConnect("after", "", ""))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		var ne net.Error
		timeout := errors.As(err, &ne) && ne.Timeout()
		t.Fatalf("no CONNACK 5 s after the descriptors came back (timeout %v: %v); Ready() = %v; log:\n%s", timeout, err, e.Ready(), logs.String())
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

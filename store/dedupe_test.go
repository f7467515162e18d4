package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
)

func fp(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:FingerprintSize]
}

func TestRedeliveryWindow(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	if st.Redelivered(ctx, fp("m0")) {
		t.Fatal("unknown fingerprint reported")
	}
	for i := range 3 {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i))}}); err != nil {
			t.Fatal(err)
		}
	}
	// An entry without a fingerprint takes no slot's meaning away.
	if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Key: "k", Event: []byte("e")}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if !st.Redelivered(ctx, fp(fmt.Sprint("m", i))) {
			t.Errorf("m%d not remembered", i)
		}
	}
	// A wrong-sized fingerprint is refused and nothing is written.
	if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: []byte("short")}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("short fingerprint: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: the window survives; two more entries push out the oldest.
	st, err = Open(ctx, Options{Dir: dir, DedupeWindow: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Redelivered(ctx, fp("m0")) || !st.Redelivered(ctx, fp("m2")) {
		t.Fatal("window lost on reopen")
	}
	for i := 3; i < 5; i++ {
		if _, err := st.Enqueue(ctx, []InboxEntry{{Function: "f", Event: []byte("e"), Fingerprint: fp(fmt.Sprint("m", i))}}); err != nil {
			t.Fatal(err)
		}
	}
	// The window is the last 4 inbox entries: m2, the plain one, m3, m4.
	for _, m := range []string{"m0", "m1"} {
		if st.Redelivered(ctx, fp(m)) {
			t.Errorf("%s still remembered beyond the window", m)
		}
	}
	for _, m := range []string{"m2", "m3", "m4"} {
		if !st.Redelivered(ctx, fp(m)) {
			t.Errorf("%s forgotten", m)
		}
	}
}

package store

import (
	"context"
	"regexp"
	"strconv"
	"testing"
)

// recordIDOf reports whether id is a record id of gateway gw for sequence
// seq: gw, an incarnation of 8 hex digits, the sequence.
func recordIDOf(id, gw string, seq uint64) bool {
	m := regexp.MustCompile(`^(.*)-[0-9a-f]{8}-([0-9]+)$`).FindStringSubmatch(id)
	return m != nil && m[1] == gw && m[2] == strconv.FormatUint(seq, 10)
}

// TestRecordIDsUniqueAcrossStores: record ids were the gateway id and the
// sequence, and sequences start at 1 again in a new data directory (one
// replaced, restored from a backup, or a cloned image with the same
// gateway id, "raspberrypi" by default): an upstream that drops duplicate
// ids (JetStream's Nats-Msg-Id, an HTTP Idempotency-Key) dropped the new
// records as repeats of old ones. Each Open has its own incarnation in the
// ids; a record keeps the id it was committed with. Found by a review
// (TestRevNATSNewStoreSameGatewayIDDeduplicated).
func TestRecordIDsUniqueAcrossStores(t *testing.T) {
	ctx := context.Background()
	commit := func(s *Store) Record {
		t.Helper()
		res, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Function: "f", Data: []byte(`1`)}}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Records[0]
	}
	dir := t.TempDir()
	a, err := Open(ctx, Options{Dir: dir, GatewayID: "raspberrypi", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ra := commit(a)
	if !recordIDOf(ra.ID, "raspberrypi", 1) || ra.ID != a.IDPrefix()+"1" {
		t.Fatalf("record id %q (prefix %q)", ra.ID, a.IDPrefix())
	}
	b := openTest(t, Options{GatewayID: "raspberrypi"}) // another data directory, the same gateway id
	if rb := commit(b); rb.Seq != ra.Seq || rb.ID == ra.ID {
		t.Fatalf("two stores of gateway raspberrypi gave seq %d ids %q and %q", ra.Seq, ra.ID, rb.ID)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened: the first record keeps its id, new ones have the new
	// incarnation.
	a, err = Open(ctx, Options{Dir: dir, GatewayID: "raspberrypi", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	recs, _, err := a.QueryRecords(ctx, Query{Stream: "s"})
	if err != nil || len(recs) != 1 || recs[0].ID != ra.ID {
		t.Fatalf("after reopening: %+v %v, want the record with id %q", recs, err, ra.ID)
	}
	if r2 := commit(a); !recordIDOf(r2.ID, "raspberrypi", 2) || r2.ID[:len(a.IDPrefix())] == ra.ID[:len(a.IDPrefix())] {
		t.Fatalf("after reopening: new record id %q, first %q", r2.ID, ra.ID)
	}
}

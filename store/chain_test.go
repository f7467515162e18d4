package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// chainAll derives one inbox entry for function "down" from every record and
// every state update, encoding what it was given so the test can check it.
func chainAll(ch Change) []InboxEntry {
	switch {
	case ch.Record != nil:
		r := ch.Record
		return []InboxEntry{{Function: "down", Key: r.Device, Event: fmt.Appendf(nil, "record %s %s %s", r.ID, r.Stream, r.Data)}}
	case ch.State != nil:
		u := ch.State
		return []InboxEntry{{Function: "down", Key: u.Key, Event: fmt.Appendf(nil, "state %s/%s %q -> %q", u.Function, u.Key, u.Old, u.New)}}
	}
	return nil
}

func TestCommitChain(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{GatewayID: "gw"})
	if err := s.PutState(ctx, "up", "n", []byte("41")); err != nil {
		t.Fatal(err)
	}
	seqs := enqueue(t, s, "up", 1)
	c := &Commit{
		InboxSeq: seqs[0],
		Records: []Record{
			{Stream: "a", Function: "up", Device: "d1", Data: []byte(`{"x":1}`)},
			{Stream: "b", Function: "up", Device: "d2", Data: []byte(`{"x":2}`)},
		},
		State: []StateChange{
			{Function: "up", Op: StateIncr, Key: "n", Delta: 1},
			{Function: "up", Op: StateSet, Key: "s", Value: []byte(`"v"`)},
			{Function: "up", Op: StateDelete, Key: "s"},
		},
		Chain:    chainAll,
		ChainMax: 5,
	}
	res, err := s.Commit(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`record ` + s.IDPrefix() + formatSeq(res.Records[0].Seq) + ` a {"x":1}`,
		`record ` + s.IDPrefix() + formatSeq(res.Records[1].Seq) + ` b {"x":2}`,
		`state up/n "41" -> "42"`,
		`state up/s "" -> "\"v\""`,
		`state up/s "\"v\"" -> ""`,
	}
	if len(res.Inbox) != len(want) {
		t.Fatalf("result has %d chained entries, want %d", len(res.Inbox), len(want))
	}
	pending, err := s.InboxPending(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != len(want) {
		t.Fatalf("inbox holds %d entries, want the %d chained ones (the consumed one gone)", len(pending), len(want))
	}
	for i, e := range pending {
		if string(e.Event) != want[i] {
			t.Errorf("entry %d = %s, want %s", i, e.Event, want[i])
		}
		if e.Seq != res.Inbox[i].Seq || e.Seq <= seqs[0] {
			t.Errorf("entry %d seq %d, result says %d, consumed entry was %d", i, e.Seq, res.Inbox[i].Seq, seqs[0])
		}
		if e.Function != "down" {
			t.Errorf("entry %d function %q", i, e.Function)
		}
	}
	if got := s.InboxLen(); got != int64(len(want)) {
		t.Errorf("InboxLen = %d, want %d", got, len(want))
	}
	// The chained entries survive a restart like any inbox entry.
	s = reopen(t, s)
	pending, err = s.InboxPending(ctx, 0, 100)
	if err != nil || len(pending) != len(want) {
		t.Fatalf("after reopen: %d entries, %v", len(pending), err)
	}
}

func TestCommitChainRefusedAppliesNothing(t *testing.T) {
	ctx := context.Background()
	base := func() *Commit {
		return &Commit{
			Records: []Record{{Stream: "a", Function: "up", Data: []byte(`1`)}},
			State:   []StateChange{{Function: "up", Op: StateSet, Key: "k", Value: []byte(`1`)}},
		}
	}
	cases := []struct {
		name  string
		chain func(Change) []InboxEntry
		max   int
		want  error
		quota bool
	}{
		{"more than ChainMax", chainAll, 1, ErrInvalid, false},
		{"no function", func(Change) []InboxEntry { return []InboxEntry{{Key: "k", Event: []byte("x")}} }, 2, ErrInvalid, false},
		{"fingerprint", func(Change) []InboxEntry {
			return []InboxEntry{{Function: "f", Event: []byte("x"), Fingerprint: make([]byte, FingerprintSize)}}
		}, 2, ErrInvalid, false},
		{"event too large", func(Change) []InboxEntry { return []InboxEntry{{Function: "f", Event: make([]byte, 2<<20)}} }, 2, ErrTooLarge, false},
		{"inbox quota", chainAll, 2, ErrQuota, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{}
			if tc.quota {
				o.Quotas = map[string]Quota{SpaceInbox: {MaxBytes: 40}}
			}
			s := openTest(t, o)
			c := base()
			c.Chain, c.ChainMax = tc.chain, tc.max
			if _, err := s.Commit(ctx, c); !errors.Is(err, tc.want) {
				t.Fatalf("Commit = %v, want %v", err, tc.want)
			}
			if n := s.InboxLen(); n != 0 {
				t.Errorf("inbox holds %d entries after a refused commit", n)
			}
			recs, _, err := s.QueryRecords(ctx, Query{})
			if err != nil || len(recs) != 0 {
				t.Errorf("records after a refused commit: %d, %v", len(recs), err)
			}
			if _, ok, _ := s.GetState(ctx, "up", "k"); ok {
				t.Error("state applied by a refused commit")
			}
		})
	}
	t.Run("ChainMax out of range", func(t *testing.T) {
		s := openTest(t, Options{})
		c := base()
		c.Chain, c.ChainMax = chainAll, -1
		if _, err := s.Commit(ctx, c); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Commit = %v, want ErrInvalid", err)
		}
	})
}

// TestCommitChainNil: without Chain, ChainMax changes nothing and
// no state is read for old values.
func TestCommitChainNil(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	res, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "a", Function: "f", Data: []byte(`1`)}}, ChainMax: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Inbox) != 0 || s.InboxLen() != 0 {
		t.Fatalf("entries chained without Chain: %d, %d", len(res.Inbox), s.InboxLen())
	}
}

// TestInboxQuotaKeepsRoomForChains: new events fill at most 7/8 of the
// inbox quota; a processing commit that consumes an entry and chains one
// of the same size is accepted however full the inbox is (it was refused
// for the bytes it was about to free, and the gateway retried it without
// end); chained entries are still bound by the whole quota.
func TestInboxQuotaKeepsRoomForChains(t *testing.T) {
	ctx := context.Background()
	const quota = 4000
	s := openTest(t, Options{InMemory: true, Quotas: map[string]Quota{SpaceInbox: {MaxBytes: quota, Policy: RejectNew}}})
	var seqs []uint64
	for {
		sq, err := s.Enqueue(ctx, []InboxEntry{{Function: "up", Key: "d", Event: make([]byte, 50)}})
		if err != nil {
			if !errors.Is(err, ErrQuota) {
				t.Fatal(err)
			}
			break
		}
		seqs = append(seqs, sq...)
	}
	// An entry larger than intake's share of the quota can never fit: a
	// permanent refusal, not a full inbox to wait for.
	if _, err := s.Enqueue(ctx, []InboxEntry{{Function: "up", Key: "d", Event: make([]byte, quota)}}); !errors.Is(err, ErrQuota) || !IsPermanent(err) {
		t.Fatalf("an entry larger than the quota: %v, want a permanent ErrQuota", err)
	}
	held := s.Stats().Spaces[SpaceInbox].Bytes
	if held > quota-quota/8 || held < quota-quota/8-200 {
		t.Fatalf("intake stopped at %d bytes of a %d quota, want just under %d", held, quota, quota-quota/8)
	}
	chainOne := func(Change) []InboxEntry { return []InboxEntry{{Function: "down", Key: "d", Event: make([]byte, 50)}} }
	for _, seq := range seqs[:len(seqs)/2] {
		if _, err := s.Commit(ctx, &Commit{InboxSeq: seq, Chain: chainOne, ChainMax: 1,
			State: []StateChange{{Function: "up", Op: StateSet, Key: "k", Value: []byte("1")}}}); err != nil {
			t.Fatalf("consuming an entry and chaining one of the same size: %v", err)
		}
	}
	// Chaining without consuming (a state write through the API that a
	// function follows) fills the reserve, then is refused.
	var refused error
	for i := 0; i < 1000 && refused == nil; i++ {
		_, refused = s.Commit(ctx, &Commit{Chain: chainOne, ChainMax: 1,
			State: []StateChange{{Function: "up", Op: StateSet, Key: "k", Value: []byte("1")}}})
	}
	if !errors.Is(refused, ErrQuota) {
		t.Fatalf("chaining past the quota: %v, want ErrQuota", refused)
	}
	// Less than one entry below the quota now (one more does not fit),
	// consuming one and chaining one still goes through.
	if _, err := s.Commit(ctx, &Commit{InboxSeq: seqs[len(seqs)-1], Chain: chainOne, ChainMax: 1,
		State: []StateChange{{Function: "up", Op: StateSet, Key: "k", Value: []byte("1")}}}); err != nil {
		t.Fatalf("at the quota (%d of %d bytes), consuming an entry and chaining one of the same size: %v", s.Stats().Spaces[SpaceInbox].Bytes, quota, err)
	}
	if b := s.Stats().Spaces[SpaceInbox].Bytes; b > quota {
		t.Fatalf("inbox holds %d bytes, quota %d", b, quota)
	}
}

package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to every stored-value decoder: they must
// return ErrCorrupt or a value, never panic, and valid encodings must
// round-trip.
func FuzzDecode(f *testing.F) {
	r := Record{Seq: 7, ID: "gw-7", Stream: "s", Function: "f", Device: "d", EventID: "e", EventTS: -5, ProcessedTS: 9,
		ClockSynced: true, Data: []byte(`{"a":1}`), Targets: []string{"up", "x"}}
	f.Add(encodeRecord(&r, 1))
	f.Add(encodeInbox(&InboxEntry{Function: "f", Key: "k", Event: []byte("ev")}, 2))
	f.Add(encodePublish(&Publish{Topic: "t", Payload: []byte("p"), QoS: 1, Retain: true}, 3))
	f.Add(encodeDead(&DeadLetter{Function: "f", Key: "k", Event: []byte("e"), Error: "boom", Attempts: 3, TS: 4}, 5))
	f.Add(encodeLog(&LogRecord{Function: "f", InvocationID: "i", Level: "info", Msg: "m", Fields: []byte("{}"), TS: 6}, 7))
	f.Add(encodeUsage(&Usage{Invocations: 1, Errors: 2, Steps: 3, WallMicros: 4, BytesIn: 5, BytesOut: 6}))
	bs := BlobSend{ID: "gw-blob-3", Bucket: "photos", Name: "a/b.jpg", Size: 42, ContentType: "image/jpeg", Created: 8}
	f.Add(encodeBlobSend(&bs, [32]byte{1, 2, 3}, 3, true, 9))
	f.Add(encodeSendIdx([32]byte{4}, 42))
	f.Add([]byte{tagRecord, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{tagRecord, 2, 2, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(err error) {
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
		}
		if r, err := decodeRecord(b); err == nil {
			if !bytes.Equal(encodeRecord(&r, valueTime(b)), b) && len(r.Targets) > 0 {
				// Only canonical encodings round-trip byte for byte; re-decode instead.
				r2, err := decodeRecord(encodeRecord(&r, 0))
				if err != nil || !reflect.DeepEqual(normRecord(r), normRecord(r2)) {
					t.Fatalf("record does not round-trip: %+v vs %+v (%v)", r, r2, err)
				}
			}
		} else {
			check(err)
		}
		_, err := decodeInbox(1, b)
		check(err)
		_, err = decodePublish(1, b)
		check(err)
		_, err = decodeDead(1, b)
		check(err)
		_, err = decodeLog(1, b)
		check(err)
		_, err = decodeUsage(b)
		check(err)
		if bs, rec, sum, err := decodeBlobSend(b); err == nil {
			seq := rec.Seq
			again := encodeBlobSend(&bs, sum, seq, rec.ClockSynced, valueTime(b))
			bs2, rec2, sum2, err := decodeBlobSend(again)
			if err != nil || bs2 != bs || sum2 != sum || !reflect.DeepEqual(rec2, rec) {
				t.Fatalf("blob send does not round-trip: %+v vs %+v (%v)", bs, bs2, err)
			}
		} else {
			check(err)
		}
		if _, _, err := decodeSendIdx(b); err != nil {
			check(err)
		}
		_ = valueTime(b)
		_, _ = parseJSONNumber(b)
		_, _ = jsonField(b, []string{"a", "b"})
	})
}

func normRecord(r Record) Record {
	if len(r.Data) == 0 {
		r.Data = nil
	}
	if len(r.Targets) == 0 {
		r.Targets = nil
	}
	return r
}

// FuzzParseJSONNumber: the fast path of parseJSONNumber gives what the
// encoding/json path gives, for every input, and neither takes a JSON
// string for a number (the seed "12": encoding/json's json.Number does).
func FuzzParseJSONNumber(f *testing.F) {
	for _, s := range []string{"0", "-0", "1", "21.5", "-3e10", "1E+2", "1e-400", "1e400", "01", "1.", ".5", "+1",
		"0x10", "1_0", "Inf", "NaN", `"12"`, " 7 ", "\t-2.5\n", "", "-", "1e", "1e+", "9007199254740993", "true"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gerr := parseJSONNumber(b)
		want, werr := parseJSONNumberSlow(bytes.TrimSpace(b))
		if (gerr == nil) != (werr == nil) || (gerr == nil && got != want) || (gerr != nil && gerr.Error() != werr.Error()) {
			t.Fatalf("parseJSONNumber(%q) = %v, %v; encoding/json gives %v, %v", b, got, gerr, want, werr)
		}
		if tb := bytes.TrimSpace(b); gerr == nil && len(tb) > 0 && tb[0] == '"' {
			t.Fatalf("parseJSONNumber(%q) = %v: a JSON string taken for a number", b, got)
		}
	})
}

// FuzzQueryCursor: any cursor string is either accepted or refused with
// ErrBadCursor; none panics or escapes its index.
func FuzzQueryCursor(f *testing.F) {
	s := openTest(f, Options{InMemory: true, Durability: DurabilityNone, Logger: quietLogger()})
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := s.Commit(ctx, &Commit{Records: []Record{{Stream: "s", Device: "d", EventTS: int64(i)}}}); err != nil {
			f.Fatal(err)
		}
	}
	_, next, err := s.QueryRecords(ctx, Query{Stream: "s", Limit: 3})
	if err != nil || next == "" {
		f.Fatal(next, err)
	}
	f.Add(next, "s", false)
	f.Add(next, "", true)
	f.Add("", "d", true)
	f.Add("Y2gBeHMAgAAAAAAAAAAAAAAAAAAAAQ", "s", false)
	f.Add("@@", "s", true)
	for _, k := range []string{"k1", "k2", "k3", "kk1"} {
		if err := s.PutState(ctx, "f", k, []byte("1")); err != nil {
			f.Fatal(err)
		}
	}
	_, next, err = s.ListState(ctx, "f", "k", 1, "")
	if err != nil || next == "" {
		f.Fatal(next, err)
	}
	f.Add(next, "k", false)
	f.Add(next, "kk", false)
	f.Fuzz(func(t *testing.T, cursor, stream string, desc bool) {
		recs, _, err := s.QueryRecords(ctx, Query{Stream: stream, Cursor: cursor, Desc: desc, Limit: 5})
		if err != nil && !errors.Is(err, ErrBadCursor) && !errors.Is(err, ErrInvalid) {
			t.Fatalf("cursor %q: %v", cursor, err)
		}
		for _, r := range recs {
			if stream != "" && r.Stream != stream {
				t.Fatalf("record of stream %q returned for %q", r.Stream, stream)
			}
		}
		kvs, _, err := s.ListState(ctx, "f", stream, 5, cursor)
		if err != nil && !errors.Is(err, ErrBadCursor) {
			t.Fatalf("state cursor %q: %v", cursor, err)
		}
		for _, kv := range kvs {
			if !strings.HasPrefix(kv.Key, stream) {
				t.Fatalf("state key %q listed for the prefix %q", kv.Key, stream)
			}
		}
	})
}

// FuzzQueryFilters: any filters and bounds return exactly the stored
// records that match (compared with a brute-force filter and sort), and
// paging with the cursors returns the same records.
func FuzzQueryFilters(f *testing.F) {
	s := openTest(f, Options{InMemory: true, Durability: DurabilityNone, Logger: quietLogger()})
	ctx := context.Background()
	var stored []Record
	for i := 0; i < 60; i++ {
		r := Record{Stream: fmt.Sprintf("s%d", i%3), Function: fmt.Sprintf("f%d", i%2), Device: fmt.Sprintf("d%d", i%4), EventTS: int64(1000 + (i*37)%50)}
		if i%9 == 0 {
			r.Device = ""
		}
		if i%11 == 0 {
			r.Device = "d1\x01" // sorts just after d1's separator raised
		}
		res, err := s.Commit(ctx, &Commit{Records: []Record{r}})
		if err != nil {
			f.Fatal(err)
		}
		stored = append(stored, res.Records...)
	}
	f.Add("s1", "", "", int64(0), int64(0), false, 4)
	f.Add("", "f0", "d2", int64(1010), int64(1040), true, 3)
	f.Add("", "", "d1", int64(0), int64(1020), true, 1)
	f.Add("s\x00", "", "", int64(-5), int64(0), false, 2)
	f.Add("", "", "d1", int64(0), int64(0), false, 5)
	f.Add("s2", "", "d1\x01", int64(0), int64(0), true, 2)
	f.Fuzz(func(t *testing.T, stream, function, device string, from, to int64, desc bool, limit int) {
		q := Query{Stream: stream, Function: function, Device: device, From: from, To: to, Desc: desc, Limit: 1000}
		all, next, err := s.QueryRecords(ctx, q)
		if errors.Is(err, ErrInvalid) {
			return
		}
		if err != nil || next != "" {
			t.Fatalf("%+v: %v, next %q", q, err, next)
		}
		var want []uint64
		for _, r := range sortedRecords(stored, desc) {
			ts := recordTS(&r)
			if q.match(&r) && (from == 0 || ts >= from) && (to == 0 || ts < to) {
				want = append(want, r.Seq)
			}
		}
		if len(want) != len(all) {
			t.Fatalf("%+v: %d records, want %d", q, len(all), len(want))
		}
		for i := range all {
			if all[i].Seq != want[i] {
				t.Fatalf("%+v: record %d is %d, want %d", q, i, all[i].Seq, want[i])
			}
		}
		for i, r := range all {
			ts := recordTS(&r)
			if !q.match(&r) || (from != 0 && ts < from) || (to != 0 && ts >= to) {
				t.Fatalf("%+v: record %+v does not match", q, r)
			}
			if i > 0 {
				p := all[i-1]
				c := cmp.Compare(recordTS(&p), ts)
				if c == 0 {
					c = cmp.Compare(p.Seq, r.Seq)
				}
				if (c >= 0) != desc || c == 0 {
					t.Fatalf("%+v: records %d and %d out of order", q, i-1, i)
				}
			}
		}
		q.Limit = max(1, limit%7)
		var paged []Record
		for page := 0; ; page++ {
			recs, next, err := s.QueryRecords(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			paged = append(paged, recs...)
			if next == "" {
				break
			}
			if page > len(all)+1 {
				t.Fatal("no end of pages")
			}
			q.Cursor = next
		}
		if len(paged) != len(all) {
			t.Fatalf("%+v: %d records paged, %d in one page", q, len(paged), len(all))
		}
		for i := range all {
			if paged[i].Seq != all[i].Seq {
				t.Fatalf("%+v: page record %d is %d, want %d", q, i, paged[i].Seq, all[i].Seq)
			}
		}
	})
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestListAllColumnsAligned: with --all, later pages line up with the
// first (docs/cli.md: "columns aligned"); each page had its own tabwriter,
// so a first page with a long key and a second with short ones printed
// two alignments. Found by a review (TestRevListAllColumnsAligned).
func TestListAllColumnsAligned(t *testing.T) {
	const token = "mgt_paged_token_0123456789abcdef"
	addr := startBlobDaemon(t, token)
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(args, "--server", addr, "--token", token), &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, k := range []string{"a-very-long-key-name", "b", "c", "d", "e"} {
		if code, _, e := cli("state", "put", "f", k, "1"); code != exitOK {
			t.Fatalf("put %s: %d %s", k, code, e)
		}
	}
	code, out, e := cli("state", "ls", "f", "--limit", "2", "--all")
	if code != exitOK {
		t.Fatalf("ls: %d %s", code, e)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("%d lines, want a header and 5 keys:\n%s", len(lines), out)
	}
	col := strings.Index(lines[0], "VALUE")
	for _, l := range lines[1:] {
		if len(l) != col+1 || l[col] != '1' || l[col-1] != ' ' || l[col-2] != ' ' {
			t.Errorf("column VALUE not at offset %d in %q; output:\n%s", col, l, out)
		}
	}
}

// TestPagedTable: a wider cell on a later page widens its column from
// then on; the last column is not padded; widths count characters.
func TestPagedTable(t *testing.T) {
	var b strings.Builder
	tbl := &pagedTable{w: &b}
	tbl.row("K", "V")
	tbl.row("ab", "1")
	if err := tbl.flush(); err != nil {
		t.Fatal(err)
	}
	tbl.row("é", "2")
	tbl.row("abcd", "3")
	if err := tbl.flush(); err != nil {
		t.Fatal(err)
	}
	want := "K   V\nab  1\né     2\nabcd  3\n"
	if b.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", b.String(), want)
	}
}

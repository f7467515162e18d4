/*
 * SPDX-FileCopyrightText: © 2026 moongate authors
 * SPDX-License-Identifier: Apache-2.0
 */

package badger

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// dirtyKB returns the kilobytes of path's mapping in this process that
// are dirty (written through the mapping and not yet written back), from
// /proc/self/smaps, and whether the file is mapped.
func dirtyKB(t *testing.T, path string) (int, bool) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	kb, mapped, in := 0, false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = fields[len(fields)-1] == path
			mapped = mapped || in
			continue
		}
		if in && (strings.HasPrefix(line, "Private_Dirty:") || strings.HasPrefix(line, "Shared_Dirty:")) {
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			kb += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kb, mapped
}

// Without SyncWrites, a full memtable's log is synced before the memtable
// is replaced: DB.Sync syncs only the current memtable's log, so writes
// left unsynced in the previous one would be reported durable by a
// DB.Sync after the switch. Seen in the page cache: the log's mapped pages
// written by the writes must be written back (not dirty) at the switch.
func TestMoongateSwitchSyncsFullMemtableLog(t *testing.T) {
	dir := t.TempDir()
	opt := DefaultOptions(dir).WithSyncWrites(false).WithMemTableSize(1 << 20).WithValueThreshold(1 << 10).WithLogger(nil)
	db, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	type seen struct {
		path    string
		dirtyKB int
		mapped  bool
	}
	switches := make(chan seen, 16)
	moongateBeforeSwitch = func(full *memTable) {
		kb, mapped := dirtyKB(t, full.wal.Fd.Name())
		select {
		case switches <- seen{full.wal.Fd.Name(), kb, mapped}:
		default:
		}
	}
	defer func() { moongateBeforeSwitch = nil }()
	val := make([]byte, 512)
	for i := 0; len(switches) == 0; i++ {
		if i > 100000 {
			t.Fatal("no memtable switch after 100,000 writes")
		}
		err := db.Update(func(txn *Txn) error {
			return txn.Set([]byte(fmt.Sprintf("key%08d", i)), val)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s := <-switches
	if !s.mapped {
		t.Fatalf("the full memtable's log %s is not mapped at the switch", s.path)
	}
	if s.dirtyKB != 0 {
		t.Fatalf("the full memtable's log %s has %d KiB not written back at the switch: a DB.Sync after it would not cover them", s.path, s.dirtyKB)
	}
}

/*
 * SPDX-FileCopyrightText: © 2026 moongate authors
 * SPDX-License-Identifier: Apache-2.0
 */

package badger

import (
	"bytes"
	"testing"
	"time"
)

// Two DB.Sync calls at once (moongate: the store's interval sync loop and
// value-log GC's rewrite, which now calls DB.Sync before deleting a file).
// The first takes the unsynced flag and starts syncing the value log; the
// second, finding the flag clear, skips the value log and returns nil
// while the first is still syncing (or about to fail): the caller of the
// second then treats a value written before it began as durable (the
// store notes outbox records durable and removes freed blob objects).
// Here the first sync is held between taking the flag and its msync by
// holding the current log file's lock (as a long msync would hold it).
// A DB.Sync that starts while another one is still syncing the value log
// (the store's interval sync and value-log GC's) must not return before
// the value log holding an earlier write is on disk: with the unsynced
// flag taken by the first, the second skipped the value log and returned
// at once (section 11).
func TestMoongateConcurrentSyncCoversEarlierWrite(t *testing.T) {
	dir := t.TempDir()
	opt := DefaultOptions(dir).WithSyncWrites(false).WithValueThreshold(1 << 10).WithLogger(nil)
	db, err := Open(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("b"), 64<<10)
	if err := db.Update(func(txn *Txn) error { return txn.Set([]byte("big"), big) }); err != nil {
		t.Fatal(err)
	}
	db.vlog.filesLock.RLock()
	curlf := db.vlog.filesMap[db.vlog.maxFid]
	db.vlog.filesLock.RUnlock()
	vpath := curlf.Fd.Name()
	if kb, mapped := dirtyKB(t, vpath); !mapped || kb == 0 {
		t.Fatalf("setup: value log %s not dirty (%d KiB)", vpath, kb)
	}

	curlf.lock.Lock() // the first sync stops before its msync
	first := make(chan error, 1)
	go func() { first <- db.Sync() }()
	for deadline := time.Now().Add(5 * time.Second); db.vlog.unsynced.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			curlf.lock.Unlock()
			t.Fatal("first DB.Sync did not take the flag")
		}
	}
	second := make(chan error, 1)
	go func() { second <- db.Sync() }()
	var serr error
	returned := false
	select {
	case serr = <-second:
		returned = true
	case <-time.After(2 * time.Second):
	}
	kb, _ := dirtyKB(t, vpath)
	curlf.lock.Unlock()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !returned {
		<-second
		return // the second sync waited for the first: fine
	}
	if serr == nil && kb > 0 {
		t.Fatalf("a DB.Sync begun after the write returned nil while %d KiB of the value log holding it were not written back (another DB.Sync had taken the unsynced flag and was still before/inside its msync)", kb)
	}
}

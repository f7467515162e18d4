//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// withDirLock runs fn while holding the same lock Badger takes on its
// directory (flock, exclusive, on the directory itself), so that fn never
// touches the files of a database another process has open. It returns
// false, without running fn, when the lock is held elsewhere (Badger's own
// open then fails with its lock error); a directory that does not exist
// yet has nothing to protect, and fn runs.
func withDirLock(dir string, fn func() error) (bool, error) {
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, fn()
	}
	if err != nil {
		return false, fmt.Errorf("store: lock %q: %w", dir, err)
	}
	defer d.Close()
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("store: lock %q: %w", dir, err)
	}
	defer syscall.Flock(int(d.Fd()), syscall.LOCK_UN) //nolint:errcheck // released by Close anyway
	return true, fn()
}

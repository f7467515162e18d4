/*
 * SPDX-FileCopyrightText: © Hypermode Inc. <hello@hypermode.com>
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// resize sets the size of fd to size. Growing, it allocates the new blocks
// (fallocate) rather than leaving a hole: a write through a shared mapping
// into a hole that the file system has no block for faults with SIGBUS,
// which kills the process (a disk filled by another process crashed the
// daemon in Badger's write-ahead log), while fallocate fails with ENOSPC,
// an error the caller returns. File systems without fallocate get a hole,
// as before. (moongate patch, README.moongate.md section 4.)
func resize(fd *os.File, size int64) error {
	fi, err := fd.Stat()
	if err != nil {
		return err
	}
	cur := fi.Size()
	if size <= cur {
		return fd.Truncate(size)
	}
	err = unix.Fallocate(int(fd.Fd()), 0, cur, size-cur)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return fd.Truncate(size)
	}
	if err != nil {
		// A failed fallocate may have allocated (and grown the file by)
		// part of the range: the size goes back to what the mapping has.
		_ = fd.Truncate(cur)
		return &os.PathError{Op: "fallocate", Path: fd.Name(), Err: err}
	}
	return nil
}

// Truncate would truncate the mmapped file to the given size. On Linux, we truncate
// the underlying file and then call mremap, but on other systems, we unmap first,
// then truncate, then re-map.
func (m *MmapFile) Truncate(maxSz int64) error {
	if err := m.Sync(); err != nil {
		return fmt.Errorf("while sync file: %s, error: %v\n", m.Fd.Name(), err)
	}
	if err := resize(m.Fd, maxSz); err != nil {
		return fmt.Errorf("while truncate file: %s, error: %w", m.Fd.Name(), err)
	}

	var err error
	m.Data, err = mremap(m.Data, int(maxSz)) // Mmap up to max size.
	return err
}

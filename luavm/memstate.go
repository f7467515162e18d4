package luavm

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
)

// MemState is an in-memory StateReader for tests and `moongate fn test`.
// It holds one flat key space (the function argument of GetState is
// ignored: use one MemState per function). It is safe for concurrent use;
// the zero value is an empty, usable MemState.
type MemState struct {
	mu    sync.Mutex
	m     map[string][]byte
	blobs map[string][]byte // bucket + "/" + name
}

// SetBlob stores a blob that ReadBlob serves.
func (s *MemState) SetBlob(bucket, name string, data []byte) {
	s.mu.Lock()
	if s.blobs == nil {
		s.blobs = map[string][]byte{}
	}
	s.blobs[bucket+"/"+name] = data
	s.mu.Unlock()
}

// ReadBlob implements BlobReader over the blobs given to SetBlob (a blob
// not set is an error).
func (s *MemState) ReadBlob(_ context.Context, bucket, name string, off int64, n int) ([]byte, int64, error) {
	s.mu.Lock()
	b, ok := s.blobs[bucket+"/"+name]
	s.mu.Unlock()
	if !ok {
		return nil, 0, fmt.Errorf("blob %s/%s not found", bucket, name)
	}
	if off < 0 || n < 0 {
		return nil, 0, fmt.Errorf("negative offset or length")
	}
	size := int64(len(b))
	if off >= size {
		return []byte{}, size, nil
	}
	end := min(size, off+int64(n))
	return append([]byte(nil), b[off:end]...), size, nil
}

// MemoryState returns an empty MemState.
func MemoryState() *MemState { return &MemState{m: map[string][]byte{}} }

// GetState implements StateReader.
func (s *MemState) GetState(_ context.Context, _ string, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	return v, ok, nil
}

// Set stores a JSON value.
func (s *MemState) Set(key string, value []byte) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[key] = value
	s.mu.Unlock()
}

// Snapshot returns a copy of all values.
func (s *MemState) Snapshot() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.m)
}

// Apply commits the state operations of a Result in order: StateIncr adds
// its Delta to the stored number (missing = 0). It stops at the first
// error; operations before it stay applied.
func (s *MemState) Apply(ops []StateOp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	for _, op := range ops {
		switch op.Op {
		case StateSet:
			s.m[op.Key] = append([]byte(nil), op.Value...)
		case StateDelete:
			delete(s.m, op.Key)
		case StateIncr:
			cur := 0.0
			if v, ok := s.m[op.Key]; ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(string(v)), 64)
				if err != nil {
					return fmt.Errorf("luavm: incr %q: stored value %q is not a number", op.Key, v)
				}
				cur = f
			}
			b, err := appendJSONNumber(nil, cur+op.Delta)
			if err != nil {
				return fmt.Errorf("luavm: incr %q: %w", op.Key, err)
			}
			s.m[op.Key] = b
		default:
			return fmt.Errorf("luavm: unknown state op %d", op.Op)
		}
	}
	return nil
}

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
	mu sync.Mutex
	m  map[string][]byte
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
			e := jsonEncoder{}
			e.number(cur + op.Delta)
			if e.err != nil {
				return fmt.Errorf("luavm: incr %q: %w", op.Key, e.err)
			}
			s.m[op.Key] = e.buf
		default:
			return fmt.Errorf("luavm: unknown state op %d", op.Op)
		}
	}
	return nil
}

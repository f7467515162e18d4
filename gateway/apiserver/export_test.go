package apiserver

import (
	"testing"
	"time"
)

// SetResponseWriteTimeout sets how long a response to a request holding a
// body reservation may take to write, until the test ends. Call it before
// the server starts.
func SetResponseWriteTimeout(t testing.TB, d time.Duration) {
	old := responseWriteTimeout
	responseWriteTimeout = d
	t.Cleanup(func() { responseWriteTimeout = old })
}

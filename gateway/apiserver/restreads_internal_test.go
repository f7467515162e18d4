package apiserver

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestRESTReadsSlotByExactPath: only the log follow and the records
// aggregate go without a read slot, by their exact paths: a GetState of a
// key ending in ":aggregate" (a value of up to 1 MiB) skipped the slots.
// Found by a review (TestRevRESTReadsStateKeyAggregateSuffix).
func TestRESTReadsSlotByExactPath(t *testing.T) {
	s := &Server{reads: make(chan struct{}, restReadCalls)}
	held := -1
	h := s.restReads(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { held = len(s.reads) }))
	for p, want := range map[string]int{
		"/v1/functions/f/state/big":           1,
		"/v1/functions/f/state/big:aggregate": 1,
		"/v1/functions/f/state/x:follow":      1,
		aggregatePath:                         0,
		logsFollowPath:                        0,
	} {
		held = -1
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", p, nil))
		if held != want {
			t.Errorf("GET %s: %d read slots held while built, want %d", p, held, want)
		}
		if len(s.reads) != 0 {
			t.Fatalf("GET %s: %d slots still held after it", p, len(s.reads))
		}
	}
}

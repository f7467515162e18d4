package apiserver_test

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/apiserver"
)

// A blob download that the client stops reading (its HTTP/2 window kept
// at 0) is cut once a write has waited responseWriteTimeout: the blob
// routes are outside limitBody and had no write deadline, so such a
// read-token client kept every handler, its copy buffer and the blob's
// open file for ever.
func TestStalledBlobGETIsCutOff(t *testing.T) {
	apiserver.SetResponseWriteTimeout(t, 500*time.Millisecond)
	e := startDaemon(t, daemonConfig(t.TempDir(), "blobs: {buckets: {photos: {}}}\n"))
	req, _ := http.NewRequest("PUT", e.base+"/v1/blobs/photos/big.bin", bytes.NewReader(bytes.Repeat([]byte("x"), 2<<20)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT blob: %d", resp.StatusCode)
	}
	addr := strings.TrimPrefix(e.base, "http://")
	var resets atomic.Int32
	const conns, streams = 2, 16
	for i := 0; i < conns; i++ {
		stalledGETs(t, addr, "/v1/blobs/photos/big.bin", streams, &resets)
	}
	// Poll for 10 x the write deadline.
	deadline := time.Now().Add(5 * time.Second)
	for resets.Load() < conns*streams && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := resets.Load(); got < conns*streams {
		t.Fatalf("%d of %d stalled blob GET responses reset 5 s after the response write deadline (500 ms)", got, conns*streams)
	}
}

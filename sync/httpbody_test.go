package sync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/moongate-edge/moongate/store"
)

// lateReader is a RoundTripper that answers at once and reads the request
// body afterwards, when told: net/http's transport may do that (RoundTrip
// "may close the body in a separate goroutine even after RoundTrip
// returns", when the server answered before it read the whole body).
type lateReader struct {
	read chan struct{} // closed by the test: read the body now
	got  chan []byte   // what was read
	body io.ReadCloser // the body of the last request
}

func (l *lateReader) RoundTrip(req *http.Request) (*http.Response, error) {
	l.body = req.Body
	go func() {
		<-l.read
		b, _ := io.ReadAll(l.body)
		_ = l.body.Close()
		l.got <- b
	}()
	return &http.Response{StatusCode: http.StatusServiceUnavailable, Body: io.NopCloser(bytes.NewReader(nil)), Header: http.Header{}, Request: req}, nil
}

// The target's pooled body buffer went back to the pool as soon as
// Client.Do returned, and the next encoding (Prepare, while a batch is in
// flight) wrote into it while the transport could still be sending it:
// the upstream got the next batch's bytes under this batch's headers.
func TestHTTPBodyBufferKeptUntilTheTransportClosesIt(t *testing.T) {
	cfg := fastTarget("cloud", "http")
	cfg.HTTP.URL = "http://127.0.0.1:9/x" // not dialled: the transport below answers
	cfg.HTTP.Compression = "none"
	cfg.withDefaults()
	tgt, err := newHTTPTarget(cfg, Env{GatewayID: "gw", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	lr := &lateReader{read: make(chan struct{}), got: make(chan []byte, 1)}
	tgt.(*httpTarget).client.Transport = lr
	batch := func(tag string) []store.OutboxEntry {
		var b []store.OutboxEntry
		for i := range 4 {
			b = append(b, store.OutboxEntry{Seq: uint64(i + 1), Size: 8, Record: store.Record{ID: fmt.Sprintf("gw-%s%d", tag, i), Stream: "s", Function: "f", Data: []byte(`"` + tag + `"`)}})
		}
		return b
	}
	a := batch("a")
	want, err := tgt.(*httpTarget).encode(a)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := bytes.Clone(want.Bytes())
	if _, err := tgt.Deliver(context.Background(), a); err == nil {
		t.Fatal("no error from a 503")
	}
	for range 8 {
		tgt.(Preparer).Prepare(batch("b")) // takes pooled buffers
	}
	close(lr.read)
	if got := <-lr.got; !bytes.Equal(got, wantBytes) {
		t.Fatalf("the transport sent\n%s\nfor the batch\n%s", got, wantBytes)
	}
}

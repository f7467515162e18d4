package sync

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	gosync "sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/moongate-edge/moongate/store"
)

// Blob sends over http: one PUT {url}/blobs/{bucket}/{name} per blob,
// streamed from the object file (never whole in memory), with
// Content-Length, the blob's Content-Type, Content-Digest (RFC 9530,
// sha-256) and X-Moongate-Sha256 (hex), and an Idempotency-Key computed as
// for a batch of records: the hex SHA-256 of the send's id and a newline,
// the same across retries and restarts. The answer is read as for a batch:
// 2xx delivered; 408, 429, 5xx, 3xx, the endpoint failures (retryStatus:
// 401, 403, 404, 405, 407, 410, 421, 426, 431, 451) and network errors
// retried with the target's
// backoff; 417 (no 100-continue upstream) sends it again at once without
// Expect; any other 4xx refuses the blob for good (dead letter).
// An object whose size or hash no longer matches its send, or that is
// missing, is refused for good too: the bytes would never be right.

// blobChunk is the most one read of a blob's content takes.
const blobChunk = 32 << 10

var (
	errObjectCorrupt = errors.New("blob object does not match its send")
	errStalled       = errors.New("blob upload made no progress")
)

// SendsBlobContent reports true: the http target uploads blobs.
func (t *httpTarget) SendsBlobContent() bool { return true }

// blobURL is the target's URL with /blobs/{bucket}/{name} appended to its
// path (each name segment escaped).
func (t *httpTarget) blobURL(bucket, name string) (string, error) {
	u, err := url.Parse(t.cfg.HTTP.URL)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	// JoinPath takes its elements as escaped path text: escape each
	// segment, or a name with '%' would be decoded on the way ("a%41" sent
	// as "aA") or break the join (the blob PUT to the base URL).
	segs := []string{"blobs", url.PathEscape(bucket)}
	for _, s := range strings.Split(name, "/") {
		segs = append(segs, url.PathEscape(s))
	}
	return u.JoinPath(segs...).String(), nil
}

// sendBlob sends the blob of batch[idx] and records the outcome in res.
// It returns an error when the send must be retried.
func (t *httpTarget) sendBlob(ctx context.Context, e *store.OutboxEntry, idx int, res *Result) error {
	refuse := func(reason string) {
		res.Done = idx + 1
		res.Rejected = append(res.Rejected, Rejection{Index: idx, Reason: reason})
	}
	status, body, err := t.putBlob(ctx, e, true)
	if err == nil && status == http.StatusExpectationFailed {
		// A server or proxy that does not do 100-continue: send it plainly.
		status, body, err = t.putBlob(ctx, e, false)
	}
	switch {
	case errors.Is(err, errObjectCorrupt) || errors.Is(err, store.ErrNotFound):
		refuse(err.Error())
		return nil
	case err != nil:
		return err
	case status >= 200 && status < 300:
		res.Done = idx + 1
		return nil
	case retryStatus(status):
		return &RetryError{After: retryAfter(body.retryAfter, time.Now()), Err: fmt.Errorf("http %d (blob %s/%s): %s", status, e.Blob.Bucket, e.Blob.Name, body.text)}
	}
	refuse(fmt.Sprintf("http %d: %s", status, body.text))
	return nil
}

// putBlob sends one blob; expect asks for 100-continue first.
func (t *httpTarget) putBlob(ctx context.Context, e *store.OutboxEntry, expect bool) (int, respBody, error) {
	bs := e.Blob
	if t.env.Objects == nil {
		return 0, respBody{}, fmt.Errorf("%w: blob send %s without a blob store", store.ErrNotFound, bs.ID)
	}
	want, err := hex.DecodeString(bs.SHA256)
	if err != nil || len(want) != sha256.Size {
		return 0, respBody{}, fmt.Errorf("%w: blob send %s: bad hash %q", errObjectCorrupt, bs.ID, bs.SHA256)
	}
	f, err := t.env.Objects.OpenBlobObject(bs.SHA256)
	if err != nil {
		return 0, respBody{}, fmt.Errorf("blob %s/%s: %w", bs.Bucket, bs.Name, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return 0, respBody{}, fmt.Errorf("blob %s/%s: %w", bs.Bucket, bs.Name, err)
	} else if fi.Size() != bs.Size {
		return 0, respBody{}, fmt.Errorf("%w: blob %s/%s: object of %d bytes, send of %d", errObjectCorrupt, bs.Bucket, bs.Name, fi.Size(), bs.Size)
	}
	u, err := t.blobURL(bs.Bucket, bs.Name)
	if err != nil {
		return 0, respBody{}, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The stall timer bounds each step: the first read (after the
	// transport's wait for 100 Continue), every next read, the answer
	// after the last one, and the answer's body.
	first := t.cfg.AckTimeout + t.blobClient.Transport.(*http.Transport).ExpectContinueTimeout
	body := &blobBody{ctx: ctx, f: f, h: sha256.New(), want: want, left: bs.Size, limiter: t.blobLimiter, timeout: t.cfg.AckTimeout,
		started: time.Now(), stall: time.AfterFunc(first, func() { cancel(errStalled) })}
	defer body.stall.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, body)
	if err != nil {
		return 0, respBody{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	req.ContentLength = bs.Size
	if bs.Size == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", blobContentType(bs.ContentType))
	req.Header.Set("Content-Digest", "sha-256=:"+base64.StdEncoding.EncodeToString(want)+":")
	req.Header.Set("X-Moongate-Sha256", bs.SHA256)
	req.Header.Set("Idempotency-Key", IdempotencyKey([]store.OutboxEntry{*e}))
	req.Header.Set("X-Moongate-Gateway", t.env.GatewayID)
	req.Header.Set("X-Moongate-Blob-Id", bs.ID)
	req.Header.Set("User-Agent", "moongate-sync")
	if bs.Size > 0 && expect {
		// An upstream that refuses (401, 413...) says so before the body.
		req.Header.Set("Expect", "100-continue")
	}
	for k, v := range t.cfg.HTTP.Headers {
		req.Header.Set(k, v)
	}
	resp, err := t.blobClient.Do(req)
	if err != nil {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, errStalled):
			return 0, respBody{}, fmt.Errorf("http put blob %s/%s: no progress for %s: %w", bs.Bucket, bs.Name, t.cfg.AckTimeout, errStalled)
		case body.failed() != nil:
			return 0, respBody{}, body.failed()
		}
		return 0, respBody{}, fmt.Errorf("http put blob %s/%s: %w", bs.Bucket, bs.Name, redactURLError(err))
	}
	defer resp.Body.Close()
	body.stall.Reset(t.cfg.AckTimeout)
	// The answer may come before the whole body was read; a body that
	// failed its hash check must not count as delivered.
	if err := body.failed(); errors.Is(err, errObjectCorrupt) {
		return 0, respBody{}, err
	}
	// The status decides, as for a batch (post): the answer's body is
	// read for the dead letter or the error, within the ack timeout (the
	// stall timer cancels the read), and a body that fails or comes too
	// late is ignored. A 2xx whose body was slow is a stored blob: taking
	// it for a stall sent it again and again, holding the outbox.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // keep the connection reusable
	if err := body.failed(); errors.Is(err, errObjectCorrupt) {
		return 0, respBody{}, err
	}
	return resp.StatusCode, respBody{text: strings.ToValidUTF8(strings.TrimSpace(string(b)), "\uFFFD"), retryAfter: resp.Header.Get("Retry-After")}, nil
}

// blobBody streams an object as a request body. It hashes what it reads
// and checks the hash before it hands over the last bytes, so that the
// upstream never receives a complete body that is not the blob; each read
// re-arms the stall timer, and reads are paced by the limiter. The
// transport reads it from its own goroutine, possibly after Do returned:
// the error is read through failed.
type blobBody struct {
	ctx     context.Context
	f       *os.File
	h       hash.Hash
	want    []byte
	left    int64
	limiter *rate.Limiter
	stall   *time.Timer
	timeout time.Duration
	started time.Time

	mu  gosync.Mutex
	err error // the first error returned
}

func (b *blobBody) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	return b.err
}

func (b *blobBody) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *blobBody) Read(p []byte) (int, error) {
	if err := b.failed(); err != nil {
		return 0, err
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.left, blobChunk))
	if b.limiter != nil {
		n = min(n, b.limiter.Burst())
		b.stall.Stop() // waiting for the limiter is not a stall
		if err := b.limiter.WaitN(b.ctx, n); err != nil {
			return 0, b.fail(err)
		}
	}
	b.stall.Reset(b.timeout)
	m, err := io.ReadFull(b.f, p[:n])
	b.h.Write(p[:m])
	b.left -= int64(m)
	if err != nil {
		// Shorter than its send: the object changed under us.
		return 0, b.fail(fmt.Errorf("%w: read object: %v", errObjectCorrupt, err))
	}
	if b.left == 0 {
		// The answer comes once the upstream has read what the socket
		// buffers still hold and stored it: allow the ack timeout plus as
		// long as handing the body over took.
		b.stall.Reset(b.timeout + time.Since(b.started))
		if got := b.h.Sum(nil); string(got) != string(b.want) {
			return 0, b.fail(fmt.Errorf("%w: content hash %x, want %x", errObjectCorrupt, got, b.want))
		}
	}
	return m, nil
}

// Close is a no-op: the caller closes the file.
func (b *blobBody) Close() error { return nil }

// blobContentType is the Content-Type header of a blob sent with content
// type ct: application/octet-stream when it has none, or one the store no
// longer accepts (a send queued before content types were checked:
// net/http would refuse the request, and the target retry it for ever,
// holding up everything behind it).
func blobContentType(ct string) string {
	if ct == "" || store.ValidContentType(ct) != nil {
		return "application/octet-stream"
	}
	return ct
}

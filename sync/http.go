package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/time/rate"

	"github.com/moongate-edge/moongate/store"
)

// HTTPConfig configures an http target: each batch of records is one POST
// of NDJSON (one AppendRecord object per line) to URL; each blob send is
// one PUT of the blob's content to URL/blobs/{bucket}/{name} (httpblob.go).
type HTTPConfig struct {
	URL     string            // http:// or https://
	Headers map[string]string // added to every request (e.g. Authorization)
	// Compression is "gzip" (default; Content-Encoding: gzip) or "none".
	Compression string
	TLS         TLSConfig
}

func init() {
	mustRegister(Module{ID: ModulePrefix + "http", New: newHTTPTarget})
}

// maxErrorBody bounds how much of a refusal's response body is kept in the
// dead letter.
const maxErrorBody = 4 << 10

type httpTarget struct {
	cfg    TargetConfig
	env    Env
	client *http.Client
	// blobClient sends blobs: no overall timeout (see putBlob), the same
	// transport.
	blobClient  *http.Client
	blobLimiter *rate.Limiter // paces blob content to BandwidthLimit; nil: none
	gz          bool
	bufPool     gosync.Pool // *bytes.Buffer
	gzPool      gosync.Pool // *gzip.Writer
	prepMu      gosync.Mutex
	prep        *preparedBody
	closed      chan struct{}
	once        gosync.Once
}

func newHTTPTarget(cfg TargetConfig, env Env) (Target, error) {
	h := cfg.HTTP
	u, err := url.Parse(h.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: http url %q: want http(s)://host/path", ErrInvalidConfig, safeURL(h.URL))
	}
	switch h.Compression {
	case "", "gzip", "none":
	default:
		return nil, fmt.Errorf("%w: http compression %q (gzip or none)", ErrInvalidConfig, h.Compression)
	}
	if u.Scheme == "http" && h.TLS != (TLSConfig{}) {
		return nil, fmt.Errorf("%w: http tls is set but url %q is plain http (the settings would be ignored and headers sent in clear): use https://", ErrInvalidConfig, safeURL(h.URL))
	}
	tlsCfg, err := h.TLS.build("")
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	tr.MaxIdleConnsPerHost = 4
	tr.ResponseHeaderTimeout = cfg.AckTimeout
	// An answer's headers: Go's default is 10 MiB per request.
	tr.MaxResponseHeaderBytes = maxResponseHeader
	// A redirect would turn the POST into a GET: report it instead.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	// Blobs: no timeout on the whole request nor on the answer after the
	// body, whose last bytes may still be in the socket's buffers; the
	// upload's progress bounds it instead (putBlob).
	btr := tr.Clone()
	btr.ResponseHeaderTimeout = 0
	t := &httpTarget{cfg: cfg, env: env, gz: h.Compression != "none", closed: make(chan struct{}),
		client:     &http.Client{Transport: tr, Timeout: cfg.AckTimeout, CheckRedirect: noRedirect},
		blobClient: &http.Client{Transport: btr, CheckRedirect: noRedirect}}
	if cfg.BandwidthLimit > 0 {
		t.blobLimiter = rate.NewLimiter(rate.Limit(cfg.BandwidthLimit), int(min(cfg.BandwidthLimit, blobChunk)))
	}
	return t, nil
}

// redactURLError hides what may be a secret in the URL that net/http
// puts in its errors (a token in the query string, a password): the
// errors end in the target's last error, which /v1/sync shows to every
// read token.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = safeURL(ue.URL)
	}
	return err
}

// safeURL is s without its password, query and fragment.
func safeURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = "redacted", false
	}
	u.Fragment, u.RawFragment = "", ""
	return u.Redacted()
}

// IdempotencyKey is the Idempotency-Key of a batch: the hex SHA-256 of its
// record ids joined by newlines. A retried batch is the same entries, so
// it carries the same key.
func IdempotencyKey(batch []store.OutboxEntry) string {
	h := sha256.New()
	for i := range batch {
		h.Write([]byte(batch[i].Record.ID))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// maxResponseHeader bounds the headers of an upstream's answer.
const maxResponseHeader = 64 << 10

func (t *httpTarget) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.client.CloseIdleConnections()
		t.blobClient.CloseIdleConnections()
	})
	return nil
}

func (t *httpTarget) Deliver(ctx context.Context, batch []store.OutboxEntry) (Result, error) {
	select {
	case <-t.closed:
		return Result{}, ErrClosed
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-t.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	var res Result
	for i := 0; i < len(batch); {
		if batch[i].Blob != nil {
			// One blob per call: the manager reads the priority outbox
			// again before the rest.
			err := t.sendBlob(ctx, &batch[i], i, &res)
			return res, err
		}
		j := i + 1
		for j < len(batch) && batch[j].Blob == nil {
			j++
		}
		if err := t.deliver(ctx, batch[i:j], i, &res); err != nil {
			return res, err
		}
		i = j
	}
	return res, nil
}

// retryStatus reports whether an HTTP answer is a failure of the endpoint
// rather than of the records sent, to retry with the same batch after the
// backoff: 408 and 429, 5xx, 1xx and 3xx (a redirect is not followed), and
// the 4xx that say the request cannot reach a working endpoint whatever it
// holds: 401 and 403 (credentials: an expired token must not move a
// backlog to the dead letters), 404 and 405 (a wrong url), 407 (proxy
// credentials), 410 (an endpoint gone), 421 (misdirected), 426 (the
// endpoint wants another protocol), 431 (the configured headers too
// large) and 451: each would refuse every record alike, and moved the
// whole backlog to the dead letters. Any other 4xx (400, 413, 415,
// 422...) refuses the records.
func retryStatus(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed,
		http.StatusProxyAuthRequired, http.StatusGone, http.StatusMisdirectedRequest, http.StatusUpgradeRequired,
		http.StatusRequestHeaderFieldsTooLarge, http.StatusUnavailableForLegalReasons:
		return true
	}
	return status < 200 || (status >= 300 && status < 400) || status >= 500
}

// deliver posts batch (which starts at index base of the Deliver batch).
// A refusal (4xx) of several records is split in halves to find the
// records the upstream refuses, so that one bad record does not take its
// neighbours to the dead letters.
func (t *httpTarget) deliver(ctx context.Context, batch []store.OutboxEntry, base int, res *Result) error {
	status, body, err := t.post(ctx, batch)
	if err != nil {
		return err
	}
	switch {
	case status >= 200 && status < 300:
		res.Done = base + len(batch)
		return nil
	case retryStatus(status):
		// Whole-batch failures (the endpoint, its credentials, a proxy, an
		// overload): the same batch again later, never split.
		return &RetryError{After: retryAfter(body.retryAfter, time.Now()), Err: fmt.Errorf("http %d: %s", status, body.text)}
	}
	if len(batch) == 1 {
		res.Done = base + 1
		res.Rejected = append(res.Rejected, Rejection{Index: base, Reason: fmt.Sprintf("http %d: %s", status, body.text)})
		return nil
	}
	half := len(batch) / 2
	if err := t.deliver(ctx, batch[:half], base, res); err != nil {
		return err
	}
	return t.deliver(ctx, batch[half:], base+half, res)
}

type respBody struct {
	text       string
	retryAfter string
}

// encode returns the batch as NDJSON (gzipped unless disabled) in a
// pooled buffer.
func (t *httpTarget) encode(batch []store.OutboxEntry) (*bytes.Buffer, error) {
	buf, _ := t.bufPool.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	line := make([]byte, 0, 512)
	var w io.Writer = buf
	var zw *gzip.Writer
	if t.gz {
		zw, _ = t.gzPool.Get().(*gzip.Writer)
		if zw == nil {
			zw, _ = gzip.NewWriterLevel(buf, gzip.BestSpeed)
		} else {
			zw.Reset(buf)
		}
		defer t.gzPool.Put(zw)
		w = zw
	}
	for i := range batch {
		line = AppendRecord(line[:0], t.env.GatewayID, &batch[i].Record)
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return nil, err
		}
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// Prepare encodes the batch the manager will most likely deliver next,
// while the current one is in flight (see Preparer).
func (t *httpTarget) Prepare(batch []store.OutboxEntry) {
	if len(batch) == 0 {
		return
	}
	for i := range batch {
		if batch[i].Blob != nil {
			return // sent in parts: the encoding would not be used
		}
	}
	buf, err := t.encode(batch)
	if err != nil {
		return
	}
	t.prepMu.Lock()
	old := t.prep
	t.prep = &preparedBody{key: keyOf(batch), body: buf}
	t.prepMu.Unlock()
	if old != nil {
		t.bufPool.Put(old.body)
	}
}

// preparedBody is a batch encoded ahead by Prepare.
type preparedBody struct {
	key  batchKey
	body *bytes.Buffer
}

// body returns the encoded batch: the prepared one if it is this batch.
func (t *httpTarget) body(batch []store.OutboxEntry) (*bytes.Buffer, error) {
	t.prepMu.Lock()
	p := t.prep
	if p != nil && p.key == keyOf(batch) {
		t.prep = nil
		t.prepMu.Unlock()
		return p.body, nil
	}
	t.prepMu.Unlock()
	return t.encode(batch)
}

func (t *httpTarget) post(ctx context.Context, batch []store.OutboxEntry) (int, respBody, error) {
	buf, err := t.body(batch)
	if err != nil {
		return 0, respBody{}, err
	}
	// The buffer goes back to the pool once the transport closed every
	// reader of it, not when Do returns: RoundTrip may still read a body
	// after it returned (an upstream that answered before reading it all),
	// and the next batch was being encoded into the buffer it sent.
	body := &pooledBody{buf: buf, put: t.bufPool.Put, refs: 1}
	defer body.release()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.cfg.HTTP.URL, body.reader())
	if err != nil {
		return 0, respBody{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	req.ContentLength = int64(buf.Len())
	req.GetBody = func() (io.ReadCloser, error) { return body.reader(), nil }
	req.Header.Set("Content-Type", "application/x-ndjson")
	if t.gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	req.Header.Set("Idempotency-Key", IdempotencyKey(batch))
	req.Header.Set("X-Moongate-Gateway", t.env.GatewayID)
	req.Header.Set("X-Moongate-Records", strconv.Itoa(len(batch)))
	req.Header.Set("User-Agent", "moongate-sync")
	for k, v := range t.cfg.HTTP.Headers {
		req.Header.Set(k, v)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, respBody{}, fmt.Errorf("http post: %w", redactURLError(err))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // keep the connection reusable
	return resp.StatusCode, respBody{text: strings.ToValidUTF8(strings.TrimSpace(string(b)), "\uFFFD"), retryAfter: resp.Header.Get("Retry-After")}, nil
}

// pooledBody is a pooled buffer sent as request bodies: it goes back to
// its pool (put) once the caller (refs starts at 1) and every reader given
// to the transport released it. Safe for concurrent use.
type pooledBody struct {
	buf  *bytes.Buffer
	put  func(any)
	mu   gosync.Mutex
	refs int
}

// reader returns a reader of the whole buffer; closing it releases it.
func (p *pooledBody) reader() io.ReadCloser {
	p.mu.Lock()
	p.refs++
	p.mu.Unlock()
	return &pooledReader{Reader: bytes.NewReader(p.buf.Bytes()), p: p}
}

func (p *pooledBody) release() {
	p.mu.Lock()
	p.refs--
	last := p.refs == 0
	p.mu.Unlock()
	if last {
		p.put(p.buf)
	}
}

// pooledReader is one reader of a pooledBody.
type pooledReader struct {
	*bytes.Reader
	p    *pooledBody
	once gosync.Once
}

func (r *pooledReader) Close() error {
	r.once.Do(r.p.release)
	return nil
}

// retryAfter parses a Retry-After header (delay in seconds or an HTTP
// date); 0 when absent or malformed, at most one hour.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return min(time.Duration(min(n, 3600))*time.Second, time.Hour)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), time.Hour)
	}
	return 0
}

package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moongate-edge/moongate/store"
)

// Blobs is what the API needs for file uploads (/v1/blobs/...): the store's
// blob reads and the gateway's upload, which also runs the functions the
// upload triggers. Errors wrap store's sentinels.
type Blobs interface {
	PutBlob(ctx context.Context, bucket, name, contentType string, body io.Reader) (store.BlobInfo, error)
	StatBlob(ctx context.Context, bucket, name string) (store.BlobInfo, error)
	OpenBlob(ctx context.Context, bucket, name string) (*store.Blob, error)
	ListBlobs(ctx context.Context, bucket, prefix string, limit int, cursor string) ([]store.BlobInfo, string, error)
	DeleteBlob(ctx context.Context, bucket, name string) error
}

// blobJSON is a blob's metadata in REST answers.
type blobJSON struct {
	Bucket      string `json:"bucket"`
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	SHA256      string `json:"sha256"`
	Created     string `json:"created"` // RFC 3339, UTC
}

func toBlobJSON(bi store.BlobInfo) blobJSON {
	return blobJSON{Bucket: bi.Bucket, Name: bi.Name, Size: bi.Size, ContentType: bi.ContentType, SHA256: bi.SHA256,
		Created: time.UnixMilli(bi.Created).UTC().Format(time.RFC3339Nano)}
}

// blobListJSON is the answer of GET /v1/blobs/{bucket}.
type blobListJSON struct {
	Blobs      []blobJSON `json:"blobs"`
	NextCursor string     `json:"next_cursor"`
}

// blobHTTPError answers err with the status the rest of the API would use,
// except for what only uploads meet: a blob over the bucket's size limit is
// 413, a full bucket or disk 507.
func blobHTTPError(w http.ResponseWriter, err error) codes.Code {
	switch {
	case errors.Is(err, store.ErrTooLarge):
		writeStatus(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, err.Error())
		return codes.ResourceExhausted
	case errors.Is(err, store.ErrQuota), errors.Is(err, store.ErrStoreFull):
		writeStatus(w, http.StatusInsufficientStorage, codes.ResourceExhausted, err.Error())
		return codes.ResourceExhausted
	case errors.Is(err, errUploadStalled):
		w.Header().Set("Connection", "close")
		writeStatus(w, http.StatusRequestTimeout, codes.DeadlineExceeded, err.Error())
		return codes.DeadlineExceeded
	}
	st, _ := status.FromError(toStatus(err))
	writeStatus(w, runtime.HTTPStatusFromCode(st.Code()), st.Code(), st.Message())
	return st.Code()
}

// serveBlob serves /v1/blobs/{bucket}/{name...}: PUT (admin) stores the
// body, streamed; GET and HEAD (read) return it; DELETE (admin) deletes it.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	need := ScopeRead
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPut, http.MethodDelete:
		need = ScopeAdmin
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		writeStatus(w, http.StatusMethodNotAllowed, codes.Unimplemented, fmt.Sprintf("method %s not allowed on a blob", clip(r.Method)))
		return
	}
	tok, err := s.tokens.authenticate(r.Header.Get("Authorization"), need)
	if err != nil {
		st, _ := status.FromError(err)
		s.metrics.call("/v1/blobs", st.Code())
		writeStatus(w, runtime.HTTPStatusFromCode(st.Code()), st.Code(), st.Message())
		return
	}
	// A download must not stall for ever (a client that never reads held
	// the handler and the open file): each write must go out within
	// responseWriteTimeout, whatever the blob's size.
	s.metrics.call("/v1/blobs", s.blob(&deadlineWriter{ResponseWriter: w, rolling: true}, r, tok))
}

func (s *Server) blob(w http.ResponseWriter, r *http.Request, tok Token) codes.Code {
	bucket, name := r.PathValue("bucket"), r.PathValue("name")
	b := s.cfg.Blobs
	if b == nil {
		writeStatus(w, http.StatusNotFound, codes.NotFound, "no blob buckets are configured (blobs.buckets)")
		return codes.NotFound
	}
	ctx := r.Context()
	switch r.Method {
	case http.MethodPut:
		ctype := r.Header.Get("Content-Type")
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		body := &deadlineBody{r: r.Body, rc: http.NewResponseController(w), timeout: s.cfg.UploadReadTimeout}
		bi, err := b.PutBlob(ctx, bucket, name, ctype, body)
		body.clear()
		s.log.Info("blob put", "audit", "blob_put", "token", tok.Name, "peer", r.RemoteAddr, "bucket", clip(bucket), "name", clip(name),
			"size", bi.Size, "sha256", bi.SHA256, "err", err)
		if err != nil {
			return blobHTTPError(w, err)
		}
		writeJSON(w, http.StatusCreated, toBlobJSON(bi))
		return codes.OK
	case http.MethodDelete:
		err := b.DeleteBlob(ctx, bucket, name)
		s.log.Info("blob delete", "audit", "blob_delete", "token", tok.Name, "peer", r.RemoteAddr, "bucket", clip(bucket), "name", clip(name), "err", err)
		if err != nil {
			return blobHTTPError(w, err)
		}
		w.WriteHeader(http.StatusNoContent)
		return codes.OK
	}
	blob, err := b.OpenBlob(ctx, bucket, name)
	if err != nil {
		return blobHTTPError(w, err)
	}
	defer blob.Close()
	h := w.Header()
	h.Set("Content-Type", blob.Info.ContentType)
	h.Set("ETag", `"`+blob.Info.SHA256+`"`)
	// The content type is the uploader's: a browser must not run it as a
	// page of the API's origin.
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	h.Set("X-Moongate-Sha256", blob.Info.SHA256)
	// ServeContent streams the object and handles Range and conditional
	// requests (If-None-Match against the ETag); its own error answers
	// (416 for a range it cannot serve) become JSON statuses like the
	// rest of the API's.
	ew := &statusErrors{ResponseWriter: w}
	http.ServeContent(ew, r, "", time.UnixMilli(blob.Info.Created), io.NewSectionReader(blob, 0, blob.Info.Size))
	if ew.code != 0 {
		code := codes.InvalidArgument
		switch ew.code {
		case http.StatusRequestedRangeNotSatisfiable:
			code = codes.OutOfRange
		case http.StatusPreconditionFailed:
			code = codes.FailedPrecondition
		}
		msg := strings.TrimSpace(ew.msg.String())
		if msg == "" {
			msg = strings.ToLower(http.StatusText(ew.code))
		}
		h.Del("X-Content-Type-Options")
		writeStatus(w, ew.code, code, msg)
		return code
	}
	return codes.OK
}

// statusErrors holds back an error answer (status 400 and above) that
// http.ServeContent writes as plain text, for the caller to write as a
// JSON status; other answers pass through.
type statusErrors struct {
	http.ResponseWriter
	code int
	msg  strings.Builder
}

func (e *statusErrors) WriteHeader(code int) {
	if code >= 400 {
		e.code = code
		return
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *statusErrors) Write(b []byte) (int, error) {
	if e.code != 0 {
		if e.msg.Len() < 512 {
			e.msg.Write(b[:min(len(b), 512-e.msg.Len())])
		}
		return len(b), nil
	}
	return e.ResponseWriter.Write(b)
}

// serveBlobList serves GET /v1/blobs/{bucket}?prefix=&limit=&cursor= (read).
func (s *Server) serveBlobList(w http.ResponseWriter, r *http.Request) {
	if _, err := s.tokens.authenticate(r.Header.Get("Authorization"), ScopeRead); err != nil {
		st, _ := status.FromError(err)
		s.metrics.call("/v1/blobs", st.Code())
		writeStatus(w, runtime.HTTPStatusFromCode(st.Code()), st.Code(), st.Message())
		return
	}
	s.metrics.call("/v1/blobs", s.blobList(&deadlineWriter{ResponseWriter: w}, r))
}

func (s *Server) blobList(w http.ResponseWriter, r *http.Request) codes.Code {
	if s.cfg.Blobs == nil {
		writeStatus(w, http.StatusNotFound, codes.NotFound, "no blob buckets are configured (blobs.buckets)")
		return codes.NotFound
	}
	q := r.URL.Query()
	for k := range q {
		if k != "prefix" && k != "limit" && k != "cursor" {
			writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, fmt.Sprintf("unknown query parameter %q", clip(k)))
			return codes.InvalidArgument
		}
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > store.MaxQueryLimit {
			// As the gRPC routes: a limit over the maximum is refused, not cut.
			writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, fmt.Sprintf("limit %q out of range [0, %d]", clip(v), store.MaxQueryLimit))
			return codes.InvalidArgument
		}
		limit = n
	}
	list, next, err := s.cfg.Blobs.ListBlobs(r.Context(), r.PathValue("bucket"), q.Get("prefix"), limit, q.Get("cursor"))
	if err != nil {
		return blobHTTPError(w, err)
	}
	out := blobListJSON{Blobs: make([]blobJSON, 0, len(list)), NextCursor: next}
	for _, bi := range list {
		out.Blobs = append(out.Blobs, toBlobJSON(bi))
	}
	writeJSON(w, http.StatusOK, out)
	return codes.OK
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// UploadChunk is the amount of an upload's body that must arrive within
// Config.UploadReadTimeout.
const UploadChunk = 64 << 10

var errUploadStalled = errors.New("upload stalled")

// deadlineBody reads an upload's body under a read deadline on the
// connection (the HTTP/2 stream), renewed for each UploadChunk bytes: a
// client that sends less within the timeout gets an error wrapping
// errUploadStalled, which the store's staging sees as a failed read
// (removing its temporary file). A server connection that cannot set
// deadlines (http.ErrNotSupported) reads without one.
type deadlineBody struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
	left    int  // bytes before the next renewal
	set     bool // a deadline is set
}

func (d *deadlineBody) Read(p []byte) (int, error) {
	if d.left <= 0 {
		d.set = d.rc.SetReadDeadline(time.Now().Add(d.timeout)) == nil
		d.left = UploadChunk
	}
	if len(p) > d.left {
		p = p[:d.left]
	}
	n, err := d.r.Read(p)
	d.left -= n
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return n, fmt.Errorf("%w: less than %d bytes of the body came in %s: %w", errUploadStalled, UploadChunk, d.timeout, err)
	}
	return n, err
}

// clear removes the deadline once the body is read, for the answer.
func (d *deadlineBody) clear() {
	if d.set {
		_ = d.rc.SetReadDeadline(time.Time{})
	}
}

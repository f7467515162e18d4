package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// Uploads: a blob committed to a bucket (an upload over the API, or a
// function's blob.write) runs the functions with an upload trigger on that
// bucket whose name glob matches. Their inbox entries are derived inside
// the store commit that makes the blob visible (store.Commit.Chain, like
// stream and state triggers), so each stored blob runs each of them exactly
// once. Events of one bucket and name run in order.

// BlobStore is what the gateway needs of the store for blobs (*store.Store).
// It is optional: a Store that does not implement it has no blobs.
type BlobStore interface {
	StageBlob(ctx context.Context, bucket string, r io.Reader, maxSize int64) (*store.StagedBlob, error)
	PutBlob(ctx context.Context, p store.BlobPut, derive func(store.BlobInfo) []store.InboxEntry) (store.BlobInfo, []store.InboxEntry, error)
}

// uploadWatch is one upload trigger of a deployed function.
type uploadWatch struct {
	fn   *Function
	trig trigger.UploadTrigger
}

// uploadEvent is the payload of an upload-triggered event.
type uploadEvent struct {
	Bucket      string `json:"bucket"`
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	SHA256      string `json:"sha256"`
}

func (ci *chainIndex) uploadCount(bucket, name string) int {
	n := 0
	for _, w := range ci.byBucket[bucket] {
		if w.trig.Matches(bucket, name) {
			n++
		}
	}
	return n
}

// uploadEntries returns the inbox entries of the functions a stored blob
// triggers: origins (hops 0: an upload over the API) or chained events of
// the given hop count and chain budget (a blob a function wrote).
func (g *Gateway) uploadEntries(ci *chainIndex, bi *store.BlobInfo, hops, budget int) []store.InboxEntry {
	var out []store.InboxEntry
	for _, w := range ci.byBucket[bi.Bucket] {
		if !w.trig.Matches(bi.Bucket, bi.Name) {
			continue
		}
		payload, _ := json.Marshal(uploadEvent{Bucket: bi.Bucket, Name: bi.Name, Size: bi.Size, ContentType: bi.ContentType, SHA256: bi.SHA256})
		ev := luavm.Event{ID: g.newEventID(), Payload: payload, TS: bi.Created, Trigger: string(trigger.KindUpload),
			Captures: map[string]string{"bucket": bi.Bucket, "name": bi.Name}}
		out = append(out, store.InboxEntry{Function: w.fn.Name, Key: "blob:" + bi.Bucket + "/" + bi.Name, Event: encodeUpload(&ev, hops, budget)})
	}
	return out
}

// encodeUpload encodes an upload-triggered event: an origin (hops 0) or a
// chained event.
func encodeUpload(ev *luavm.Event, hops, budget int) []byte {
	if hops == 0 {
		return encodeEvent(ev)
	}
	return encodeChained(ev, hops, budget)
}

// PutBlob stores an upload (streamed from body) and runs the functions it
// triggers: their inbox entries are committed with the blob. Errors are the
// store's (store.ErrNotFound for an unknown bucket, ErrInvalid, ErrTooLarge,
// ErrQuota, ErrStoreFull), or ErrNoBlobs. Safe for concurrent use.
func (g *Gateway) PutBlob(ctx context.Context, bucket, name, contentType string, body io.Reader) (store.BlobInfo, error) {
	bs, ok := g.opts.Store.(BlobStore)
	if !ok {
		return store.BlobInfo{}, ErrNoBlobs
	}
	// The functions it triggers are those deployed when it is committed,
	// not when the upload began (a function deployed during a long upload
	// runs on it).
	staged := func() (int, func(store.BlobInfo) []store.InboxEntry) {
		ci := &g.funcs.Load().chain
		return ci.uploadCount(bucket, name), func(bi store.BlobInfo) []store.InboxEntry { return g.uploadEntries(ci, &bi, 0, -1) }
	}
	bi, _, err := bs.PutBlob(ctx, store.BlobPut{Bucket: bucket, Name: name, ContentType: contentType, Body: body, Staged: staged}, nil)
	if err != nil {
		return store.BlobInfo{}, err
	}
	g.signalCommit()
	// The entries of the functions it triggers were queued by the store's
	// committer (Run: SetChained).
	return bi, nil
}

// stageBlobs writes the objects of an invocation's blob.write effects and
// adds its blob writes and deletes to c. The returned release must be
// called once c is committed (or abandoned). An error is permanent (bad
// bucket or name, blob too large: the event goes to the dead letters) when
// errPermanent reports it so.
func (g *Gateway) stageBlobs(ctx context.Context, c *store.Commit, res *luavm.Result) (release func(), err error) {
	var staged []*store.StagedBlob
	release = func() {
		for _, sb := range staged {
			sb.Release()
		}
	}
	for i := range res.Effects {
		ef := &res.Effects[i]
		switch ef.Kind {
		case luavm.EffectBlobWrite:
			bs, ok := g.opts.Store.(BlobStore)
			if !ok {
				return release, ErrNoBlobs
			}
			if err := store.ValidBlobName(ef.Name); err != nil {
				return release, fmt.Errorf("blob.write(%q, %q): %w", ef.Bucket, ef.Name, err)
			}
			if err := store.ValidContentType(ef.ContentType); err != nil {
				return release, fmt.Errorf("blob.write(%q, %q): %w", ef.Bucket, ef.Name, err)
			}
			sb, err := bs.StageBlob(ctx, ef.Bucket, bytes.NewReader(ef.Payload), 0)
			if err != nil {
				return release, fmt.Errorf("blob.write(%q, %q): %w", ef.Bucket, ef.Name, err)
			}
			staged = append(staged, sb)
			c.Blobs = append(c.Blobs, store.BlobOp{Bucket: ef.Bucket, Name: ef.Name, ContentType: ef.ContentType, Object: sb})
		case luavm.EffectBlobDelete:
			c.Blobs = append(c.Blobs, store.BlobOp{Bucket: ef.Bucket, Name: ef.Name, Delete: true})
		}
	}
	return release, nil
}

// blobPermanent reports whether a blob error will not go away by retrying.
func blobPermanent(err error) bool {
	return errors.Is(err, ErrNoBlobs) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) ||
		errors.Is(err, store.ErrTooLarge)
}

// invokeState is what an invocation reads through: the store's state, and
// its blobs one version per invocation (luavm.BlobVersionReader: a
// function reading a blob in chunks never mixes two versions when the blob
// is replaced meanwhile). Safe for concurrent use.
type invokeState struct {
	Store
}

// blobOpener is the store's OpenBlob (*store.Store).
type blobOpener interface {
	OpenBlob(ctx context.Context, bucket, name string) (*store.Blob, error)
}

// ReadBlob implements luavm.BlobReader.
func (s *invokeState) ReadBlob(ctx context.Context, bucket, name string, off int64, n int) ([]byte, int64, error) {
	r, ok := s.Store.(luavm.BlobReader)
	if !ok {
		return nil, 0, ErrNoBlobs
	}
	return r.ReadBlob(ctx, bucket, name, off, n)
}

// OpenBlobVersion implements luavm.BlobVersionReader: the open object of
// the blob's current version, readable until closed even if the blob is
// replaced or deleted.
func (s *invokeState) OpenBlobVersion(ctx context.Context, bucket, name string) (luavm.BlobVersion, error) {
	o, ok := s.Store.(blobOpener)
	if !ok {
		return nil, ErrNoBlobs
	}
	b, err := o.OpenBlob(ctx, bucket, name)
	if err != nil {
		return nil, err
	}
	return b, nil
}

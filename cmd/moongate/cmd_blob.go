package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// The blob commands stream files to and from /v1/blobs. Transfers are not
// bounded by --request-timeout (a large file takes as long as it takes);
// Ctrl-C stops them.

func init() {
	registerRemote(&remoteCmd{
		name: "blob put", summary: "upload a file into a bucket",
		usage: "usage: moongate blob put BUCKET/NAME FILE|- [--content-type T] [flags]\n\nStreams FILE (- for standard input) to the gateway as blob NAME of BUCKET,\nreplacing a blob of that name, and prints its metadata. The content type\ndefaults to the file extension's. Needs a token of scope admin.\n",
		nargs: exactArgs(2, "BUCKET/NAME and FILE"),
		setup: setupBlobPut,
	})
	registerRemote(&remoteCmd{
		name: "blob get", summary: "download a blob",
		usage: "usage: moongate blob get BUCKET/NAME [-o FILE] [flags]\n\nWrites the blob to standard output, or to FILE (written beside it and\nrenamed, so a failed download leaves nothing under that name).\n",
		nargs: exactArgs(1, "BUCKET/NAME"),
		setup: setupBlobGet,
	})
	registerRemote(&remoteCmd{
		name: "blob ls", summary: "list the blobs of a bucket",
		usage: "usage: moongate blob ls BUCKET [--prefix P] [flags]\n\nLists every blob whose name starts with --prefix, in name order: size,\ncreation time, SHA-256, content type, name.\n",
		nargs: exactArgs(1, "BUCKET"),
		setup: setupBlobLs,
	})
	registerRemote(&remoteCmd{
		name: "blob rm", summary: "delete a blob",
		usage: "usage: moongate blob rm BUCKET/NAME [flags]\n\nDeletes the blob. Needs a token of scope admin.\n",
		nargs: exactArgs(1, "BUCKET/NAME"),
		setup: func(*flag.FlagSet) remoteRun { return runBlobRm },
	})
}

// blobPath checks BUCKET/NAME as the server would and returns the blob's
// REST path, each segment escaped.
func blobPath(arg string) (string, error) {
	bucket, name, ok := strings.Cut(arg, "/")
	if !ok || bucket == "" || name == "" {
		return "", usagef("want BUCKET/NAME, got %q", arg)
	}
	if !store.ValidBucket(bucket) {
		return "", usagef("invalid bucket name %q: use [a-z0-9][a-z0-9_-]{0,62}", bucket)
	}
	if err := store.ValidBlobName(name); err != nil {
		return "", usagef("%v", err)
	}
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return "/v1/blobs/" + bucket + "/" + strings.Join(segs, "/"), nil
}

// blobDo makes a streaming request: any 2xx answer is returned (the
// caller closes the body), others become an *apiError.
func (c *apiClient) blobDo(ctx context.Context, method, path string, query url.Values, body io.Reader, size int64, ctype string) (*http.Response, error) {
	req, err := c.newRequest(ctx, request{method: method, path: path, query: query})
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Body = io.NopCloser(body)
		req.ContentLength = size // -1: unknown, sent chunked
		if size == 0 {
			req.Body = http.NoBody
		}
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &connError{server: c.base.Redacted(), err: unwrapURLError(err)}
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return nil, decodeStatus(resp.StatusCode, b)
}

func setupBlobPut(fs *flag.FlagSet) remoteRun {
	ctype := fs.String("content-type", "", "content type (default: from the file extension, else application/octet-stream)")
	return func(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
		path, err := blobPath(args[0])
		if err != nil {
			return err
		}
		body := stdin
		if e, ok := body.(readStdinError); ok && args[1] == "-" {
			return usagef("FILE -: %s", e.msg)
		}
		size := int64(-1)
		ct := *ctype
		if args[1] != "-" {
			f, err := os.Open(args[1])
			if err != nil {
				return usagef("%v", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return usagef("%v", err)
			}
			if st.IsDir() {
				// Opened, but unreadable: the upload failed as it sent, and
				// the error said the server could not be reached.
				return usagef("%s is a directory", args[1])
			}
			if st.Mode().IsRegular() {
				size = st.Size() // lets the server refuse an oversized file at once
			}
			body = f
			if ct == "" {
				ct = mime.TypeByExtension(filepath.Ext(args[1]))
			}
		}
		if ct == "" {
			ct = "application/octet-stream"
		}
		resp, err := c.blobDo(ctx, http.MethodPut, path, nil, body, size, ct)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return &connError{server: c.base.Redacted(), err: err}
		}
		return printJSON(stdout, raw)
	}
}

func setupBlobGet(fs *flag.FlagSet) remoteRun {
	out := fs.String("o", "", "write to this file (default: standard output)")
	return func(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
		path, err := blobPath(args[0])
		if err != nil {
			return err
		}
		resp, err := c.blobDo(ctx, http.MethodGet, path, nil, nil, 0, "")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		// The content is checked against the SHA-256 the server keeps for
		// it (a stored object damaged on the gateway's disk is served as
		// it is): with -o nothing is left under FILE then; on standard
		// output the bytes went out, and the exit status says they are
		// wrong.
		sum := sha256.New()
		body := io.TeeReader(resp.Body, sum)
		check := func() error {
			want := resp.Header.Get("X-Moongate-Sha256")
			if got := hex.EncodeToString(sum.Sum(nil)); want != "" && got != want {
				return fmt.Errorf("download: content has SHA-256 %s, the server's record says %s: the stored blob is damaged", got, want)
			}
			return nil
		}
		if *out == "" {
			if _, err := io.Copy(stdout, body); err != nil {
				return &connError{server: c.base.Redacted(), err: err}
			}
			return check()
		}
		tmp, err := createBeside(*out)
		if err != nil {
			return err
		}
		if st, err := os.Stat(*out); err == nil && st.Mode().IsRegular() {
			// Replacing a file: it keeps its permissions (a private one
			// stays private), as writing into it would.
			_ = tmp.Chmod(st.Mode().Perm())
		}
		_, err = io.Copy(tmp, body)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = check()
		}
		if err == nil {
			err = os.Rename(tmp.Name(), *out)
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
			if !strings.HasPrefix(err.Error(), "download: ") {
				err = fmt.Errorf("download: %w", err)
			}
			return err
		}
		return nil
	}
}

// createBeside creates a new file next to path, to be renamed to it, with
// the permissions a new file gets (0666 less the umask; os.CreateTemp's
// 0600 would stay on the download).
func createBeside(path string) (*os.File, error) {
	for range 100 {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		name := filepath.Join(filepath.Dir(path), ".moongate-blob-"+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
	return nil, fmt.Errorf("create a file beside %s: too many name clashes", path)
}

// blobMeta is a blob in the answers of /v1/blobs.
type blobMeta struct {
	Bucket      string `json:"bucket"`
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	SHA256      string `json:"sha256"`
	Created     string `json:"created"`
}

func setupBlobLs(fs *flag.FlagSet) remoteRun {
	prefix := fs.String("prefix", "", "only names starting with this")
	return func(ctx context.Context, c *apiClient, args []string, stdout, _ io.Writer) error {
		if !store.ValidBucket(args[0]) {
			return usagef("invalid bucket name %q: use [a-z0-9][a-z0-9_-]{0,62}", args[0])
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		if !c.json {
			fmt.Fprintln(tw, "SIZE\tCREATED\tSHA256\tTYPE\tNAME")
		}
		cursor := ""
		for {
			q := url.Values{"prefix": {*prefix}, "limit": {"1000"}}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			resp, err := c.blobDo(ctx, http.MethodGet, "/v1/blobs/"+args[0], q, nil, 0, "")
			if err != nil {
				return err
			}
			// Each blob is kept as the server sent it: --json prints it
			// as is, fields this CLI does not know included.
			var page struct {
				Blobs      []json.RawMessage `json:"blobs"`
				NextCursor string            `json:"next_cursor"`
			}
			err = json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(&page)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("the server's answer is not a blob list: %w", err)
			}
			for _, raw := range page.Blobs {
				var b blobMeta
				if err := json.Unmarshal(raw, &b); err != nil {
					return fmt.Errorf("the server's answer is not a blob list: %w", err)
				}
				if c.json {
					if err := printJSON(stdout, raw); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", strconv.FormatInt(b.Size, 10), fmtRFC3339(b.Created), b.SHA256[:min(12, len(b.SHA256))], b.ContentType, b.Name)
			}
			if page.NextCursor == "" {
				return tw.Flush()
			}
			cursor = page.NextCursor
		}
	}
}

func runBlobRm(ctx context.Context, c *apiClient, args []string, _, _ io.Writer) error {
	path, err := blobPath(args[0])
	if err != nil {
		return err
	}
	resp, err := c.blobDo(ctx, http.MethodDelete, path, nil, nil, 0, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// fmtRFC3339 prints an RFC 3339 time from the server as the other tables
// do (UTC, milliseconds: "...05.7Z" came out as sent); text that does not
// parse is printed as it is.
func fmtRFC3339(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

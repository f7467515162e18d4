package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moongate-edge/moongate/store"
)

// The blob commands talk to a running daemon's REST API (/v1/blobs). They
// carry their own small HTTP client: --server (or MOONGATE_SERVER, default
// http://127.0.0.1:8080) and --token (or MOONGATE_TOKEN).

func init() {
	register(&command{name: "blob put", summary: "upload a file: blob put BUCKET/NAME FILE|-", run: runBlobPut})
	register(&command{name: "blob get", summary: "download a blob: blob get BUCKET/NAME [-o FILE]", run: runBlobGet})
	register(&command{name: "blob ls", summary: "list blobs: blob ls BUCKET [--prefix P]", run: runBlobLs})
	register(&command{name: "blob rm", summary: "delete a blob: blob rm BUCKET/NAME", run: runBlobRm})
}

type blobConn struct {
	server, token string
}

func (c *blobConn) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "", "API address (default $MOONGATE_SERVER or http://127.0.0.1:8080)")
	fs.StringVar(&c.token, "token", "", "bearer token (default $MOONGATE_TOKEN)")
}

func (c *blobConn) resolve() error {
	if c.server == "" {
		c.server = os.Getenv("MOONGATE_SERVER")
	}
	if c.server == "" {
		c.server = "http://127.0.0.1:8080"
	}
	if !strings.Contains(c.server, "://") {
		c.server = "http://" + c.server
	}
	c.server = strings.TrimRight(c.server, "/")
	if c.token == "" {
		c.token = strings.TrimSpace(os.Getenv("MOONGATE_TOKEN"))
	}
	if c.token == "" {
		return errors.New("no API token: pass --token or set MOONGATE_TOKEN")
	}
	return nil
}

// blobPath turns BUCKET/NAME into the escaped URL path of the blob.
func blobPath(arg string) (string, error) {
	bucket, name, ok := strings.Cut(arg, "/")
	if !ok || bucket == "" || name == "" {
		return "", fmt.Errorf("want BUCKET/NAME, got %q", arg)
	}
	if !store.ValidBucket(bucket) {
		return "", fmt.Errorf("invalid bucket name %q: use [a-z0-9][a-z0-9_-]{0,62}", bucket)
	}
	if err := store.ValidBlobName(name); err != nil {
		return "", err
	}
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return "/v1/blobs/" + url.PathEscape(bucket) + "/" + strings.Join(segs, "/"), nil
}

func (c *blobConn) do(ctx context.Context, method, path string, body io.Reader, header http.Header, length int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, body)
	if err != nil {
		return nil, err
	}
	if length >= 0 && body != nil {
		// A known length lets the server refuse an oversized file at once.
		req.ContentLength = length
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var st struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &st) == nil && st.Message != "" {
			return nil, fmt.Errorf("%s (HTTP %d)", st.Message, resp.StatusCode)
		}
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// blobFlags parses fs over args, letting flags follow positional arguments.
func blobFlags(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, int) {
	fs.SetOutput(stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK
			}
			return nil, exitUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, -1
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runBlobPut(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("blob put", flag.ContinueOnError)
	var c blobConn
	c.register(fs)
	ctype := fs.String("content-type", "", "content type (default: from the file extension, else application/octet-stream)")
	pos, code := blobFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "usage: moongate blob put BUCKET/NAME FILE|- [--content-type T]")
		return exitUsage
	}
	path, err := blobPath(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob put:", err)
		return exitUsage
	}
	if err := c.resolve(); err != nil {
		fmt.Fprintln(stderr, "moongate blob put:", err)
		return exitUsage
	}
	var body io.Reader = os.Stdin
	var size int64 = -1
	if pos[1] != "-" {
		f, err := os.Open(pos[1])
		if err != nil {
			fmt.Fprintln(stderr, "moongate blob put:", err)
			return exitUsage
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			size = st.Size()
		}
		body = f
		if *ctype == "" {
			*ctype = mime.TypeByExtension(filepath.Ext(pos[1]))
		}
	}
	if *ctype == "" {
		*ctype = "application/octet-stream"
	}
	resp, err := c.do(ctx, http.MethodPut, path, body, http.Header{"Content-Type": {*ctype}}, size)
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob put:", err)
		return exitFailure
	}
	defer resp.Body.Close()
	_, _ = io.Copy(stdout, resp.Body)
	return exitOK
}

func runBlobGet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("blob get", flag.ContinueOnError)
	var c blobConn
	c.register(fs)
	out := fs.String("o", "", "write to this file (default: standard output)")
	pos, code := blobFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: moongate blob get BUCKET/NAME [-o FILE]")
		return exitUsage
	}
	path, err := blobPath(pos[0])
	if err == nil {
		err = c.resolve()
	}
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob get:", err)
		return exitUsage
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil, nil, -1)
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob get:", err)
		return exitFailure
	}
	defer resp.Body.Close()
	if *out == "" {
		if _, err := io.Copy(stdout, resp.Body); err != nil {
			fmt.Fprintln(stderr, "moongate blob get:", err)
			return exitFailure
		}
		return exitOK
	}
	// Written next to the target and renamed: a failed download leaves
	// no partial file under the requested name.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".moongate-blob-*")
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob get:", err)
		return exitFailure
	}
	_, err = io.Copy(tmp, resp.Body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), *out)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		fmt.Fprintln(stderr, "moongate blob get:", err)
		return exitFailure
	}
	return exitOK
}

func runBlobLs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("blob ls", flag.ContinueOnError)
	var c blobConn
	c.register(fs)
	prefix := fs.String("prefix", "", "only names starting with this")
	asJSON := fs.Bool("json", false, "one JSON object per blob")
	pos, code := blobFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 || strings.Contains(pos[0], "/") {
		fmt.Fprintln(stderr, "usage: moongate blob ls BUCKET [--prefix P] [--json]")
		return exitUsage
	}
	if err := c.resolve(); err != nil {
		fmt.Fprintln(stderr, "moongate blob ls:", err)
		return exitUsage
	}
	cursor := ""
	for {
		q := url.Values{"prefix": {*prefix}, "limit": {"1000"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		resp, err := c.do(ctx, http.MethodGet, "/v1/blobs/"+url.PathEscape(pos[0])+"?"+q.Encode(), nil, nil, -1)
		if err != nil {
			fmt.Fprintln(stderr, "moongate blob ls:", err)
			return exitFailure
		}
		var page struct {
			Blobs []struct {
				Name        string `json:"name"`
				Size        int64  `json:"size"`
				ContentType string `json:"content_type"`
				SHA256      string `json:"sha256"`
				Created     string `json:"created"`
			} `json:"blobs"`
			NextCursor string `json:"next_cursor"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			fmt.Fprintln(stderr, "moongate blob ls: decode answer:", err)
			return exitFailure
		}
		for _, b := range page.Blobs {
			if *asJSON {
				j, _ := json.Marshal(b)
				fmt.Fprintln(stdout, string(j))
				continue
			}
			created := b.Created
			if ts, err := time.Parse(time.RFC3339Nano, b.Created); err == nil {
				created = ts.Format(time.RFC3339)
			}
			fmt.Fprintf(stdout, "%12s  %s  %s  %s  %s\n", strconv.FormatInt(b.Size, 10), created, b.SHA256[:min(12, len(b.SHA256))], b.ContentType, b.Name)
		}
		if page.NextCursor == "" {
			return exitOK
		}
		cursor = page.NextCursor
	}
}

func runBlobRm(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("blob rm", flag.ContinueOnError)
	var c blobConn
	c.register(fs)
	pos, code := blobFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: moongate blob rm BUCKET/NAME")
		return exitUsage
	}
	path, err := blobPath(pos[0])
	if err == nil {
		err = c.resolve()
	}
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob rm:", err)
		return exitUsage
	}
	resp, err := c.do(ctx, http.MethodDelete, path, nil, nil, -1)
	if err != nil {
		fmt.Fprintln(stderr, "moongate blob rm:", err)
		return exitFailure
	}
	resp.Body.Close()
	return exitOK
}

package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
)

// HTTPFunctionScope is the scope a token needs to call an HTTP-triggered
// function at /fn/NAME/...: any token (the function's author chose to
// expose it; its effects are those of the function, not arbitrary writes).
const HTTPFunctionScope = ScopeRead

// hiddenHeaders are not shown to functions: the caller's credentials.
var hiddenHeaders = map[string]bool{"Authorization": true, "Proxy-Authorization": true, "Cookie": true}

// FunctionHeader is how a request header named name is shown to a
// function in event.http.headers: its name in lower case, and whether it
// is shown at all (the caller's credentials are not). `moongate fn test`
// applies it to the headers of its event file.
func FunctionHeader(name string) (key string, shown bool) {
	if hiddenHeaders[http.CanonicalHeaderKey(name)] {
		return "", false
	}
	return strings.ToLower(name), true
}

// maxHeaders and maxQuery bound what an HTTP request hands to a function.
const (
	maxHeaders = 100
	maxQuery   = 100
)

// serveFunction runs an HTTP-triggered function: the request becomes the
// event, the function's return value the response. Its effects are
// committed durably before the response is written.
func (s *Server) serveFunction(w http.ResponseWriter, r *http.Request) {
	if _, err := s.tokens.authenticate(r.Header.Get("Authorization"), HTTPFunctionScope); err != nil {
		st, _ := status.FromError(err)
		s.metrics.call("/fn", st.Code())
		writeStatus(w, runtime.HTTPStatusFromCode(st.Code()), st.Code(), st.Message())
		return
	}
	code := s.runHTTPFunction(w, r)
	s.metrics.call("/fn", code)
}

func (s *Server) runHTTPFunction(w http.ResponseWriter, r *http.Request) codes.Code {
	name := r.PathValue("name")
	fail := func(httpCode int, code codes.Code, format string, args ...any) codes.Code {
		writeStatus(w, httpCode, code, fmt.Sprintf(format, args...))
		return code
	}
	if !trigger.ValidFunctionName(name) {
		return fail(http.StatusNotFound, codes.NotFound, "no function %q", clip(name))
	}
	rf, ok := s.cfg.Functions.Running(name)
	if !ok || len(rf.HTTPMethods) == 0 {
		return fail(http.StatusNotFound, codes.NotFound, "no function %q with an http trigger", name)
	}
	if !slices.Contains(rf.HTTPMethods, r.Method) {
		w.Header().Set("Allow", strings.Join(rf.HTTPMethods, ", "))
		return fail(http.StatusMethodNotAllowed, codes.Unimplemented, "function %s does not take %s (allowed: %s)", name, clip(r.Method), strings.Join(rf.HTTPMethods, ", "))
	}
	if len(r.Header) > maxHeaders {
		return fail(http.StatusBadRequest, codes.InvalidArgument, "more than %d headers", maxHeaders)
	}
	q := r.URL.Query()
	if len(q) > maxQuery {
		return fail(http.StatusBadRequest, codes.InvalidArgument, "more than %d query parameters", maxQuery)
	}
	body, err := readAll(r)
	if err != nil {
		return fail(http.StatusBadRequest, codes.InvalidArgument, "read body: %v", err)
	}
	hreq := &luavm.HTTPRequest{Method: r.Method, Path: "/" + r.PathValue("path"), Query: q, Headers: map[string]string{}, Body: body}
	for k, vs := range r.Header {
		if key, shown := FunctionHeader(k); shown && len(vs) > 0 {
			hreq.Headers[key] = vs[0]
		}
	}
	// The response is built before the commit: a return value that is no
	// response fails the invocation (502) with nothing of it applied, so
	// a client retrying on 502 does not apply its effects twice.
	var resp fnResponse
	accept := func(res *luavm.Result) error {
		var err error
		if resp, err = httpResponse(res); err != nil {
			return fmt.Errorf("%w: %w", errBadResponse, err)
		}
		return nil
	}
	inv, err := s.cfg.Functions.Invoke(r.Context(), name, &luavm.Event{Trigger: "http", HTTP: hreq}, true, accept)
	if err != nil {
		// As the REST routes answer it (restErrorHandler): 507 for a
		// store that is full, the status's details kept.
		st, _ := status.FromError(toStatus(err))
		b, _ := Marshaler().Marshal(st.Proto())
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(httpStatusOf(st))
		_, _ = w.Write(b)
		return st.Code()
	}
	switch {
	case errors.Is(inv.Err, errBadResponse):
		return fail(http.StatusBadGateway, codes.Unknown, "function %s returned an invalid response (nothing committed): %v", name, inv.Err)
	case errors.Is(inv.Err, luavm.ErrBusy):
		// At capacity: nothing ran; worth retrying later.
		w.Header().Set("Retry-After", "1")
		return fail(http.StatusServiceUnavailable, codes.Unavailable, "function %s is busy: %v", name, inv.Err)
	case inv.Err != nil:
		return fail(http.StatusBadGateway, codes.Unknown, "function %s failed: %v", name, inv.Err)
	}
	for k, v := range resp.headers {
		w.Header().Set(k, v)
	}
	w.WriteHeader(resp.status)
	_, _ = w.Write(resp.body)
	return codes.OK
}

// errBadResponse marks a return value that is not an HTTP response.
var errBadResponse = errors.New("not an HTTP response")

func readAll(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	return io.ReadAll(r.Body) // bounded by limitBody
}

type fnResponse struct {
	status  int
	headers map[string]string
	body    []byte
}

// CheckHTTPResponse is what /fn makes of the return value of an
// HTTP-triggered function: the status, headers and body it sends, or the
// error for which it answers 502 and commits nothing (`moongate fn test`
// checks its runs with it).
func CheckHTTPResponse(res *luavm.Result) (status int, headers map[string]string, body []byte, err error) {
	r, err := httpResponse(res)
	return r.status, r.headers, r.body, err
}

// httpResponse turns a function's return value into a response: nil is
// 204; a string is a text/plain body; a JSON object with a status, headers
// or body key is {status=, headers=, body=} (body a string, sent as is, or
// any JSON value, sent as JSON); any other JSON value is a JSON body.
func httpResponse(res *luavm.Result) (fnResponse, error) {
	out := fnResponse{status: http.StatusOK, headers: map[string]string{}}
	switch res.Kind {
	case luavm.ResultNone:
		out.status = http.StatusNoContent
		return out, nil
	case luavm.ResultString:
		out.headers["Content-Type"] = "text/plain; charset=utf-8"
		out.body = res.Value
		return out, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(res.Value, &obj); err != nil || !(has(obj, "status") || has(obj, "headers") || has(obj, "body")) {
		out.headers["Content-Type"] = "application/json"
		out.body = res.Value
		return out, nil
	}
	for k := range obj {
		if k != "status" && k != "headers" && k != "body" {
			return out, fmt.Errorf("unknown response field %q (status, headers, body)", clip(k))
		}
	}
	if raw, ok := obj["status"]; ok {
		if err := json.Unmarshal(raw, &out.status); err != nil || out.status < 200 || out.status > 599 {
			return out, fmt.Errorf("status must be an integer from 200 to 599")
		}
	}
	if raw, ok := obj["headers"]; ok && string(raw) != "{}" && string(raw) != "[]" {
		var hs map[string]string
		if err := json.Unmarshal(raw, &hs); err != nil {
			return out, fmt.Errorf("headers must map names to strings")
		}
		for k, v := range hs {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
				return out, fmt.Errorf("invalid header %q", clip(k))
			}
			if gatewayHeaders[http.CanonicalHeaderKey(k)] {
				// A Content-Length that disagrees with the body would cut
				// the response or hang the client; framing is the server's.
				return out, fmt.Errorf("header %q is set by the gateway, not by functions", clip(k))
			}
			if _, twice := out.headers[http.CanonicalHeaderKey(k)]; twice {
				// (x-a and X-A: which one was sent depended on map order.)
				return out, fmt.Errorf("header %q given twice (header names are case-insensitive)", clip(http.CanonicalHeaderKey(k)))
			}
			out.headers[http.CanonicalHeaderKey(k)] = v
		}
	}
	if raw, ok := obj["body"]; ok {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			out.body = []byte(s)
			if res.Body != nil {
				out.body = res.Body // binary: as the function returned it, not as JSON carried it
			}
			if _, set := out.headers["Content-Type"]; !set {
				out.headers["Content-Type"] = "text/plain; charset=utf-8"
			}
		} else {
			out.body = raw
			if _, set := out.headers["Content-Type"]; !set {
				out.headers["Content-Type"] = "application/json"
			}
		}
	}
	if len(out.body) > 0 && (out.status == http.StatusNoContent || out.status == http.StatusNotModified) {
		// net/http would drop the body without a word.
		return out, fmt.Errorf("status %d has no body", out.status)
	}
	return out, nil
}

// gatewayHeaders are the response headers a function may not set: the
// message framing and hop-by-hop headers, which net/http manages.
var gatewayHeaders = map[string]bool{
	"Content-Length": true, "Transfer-Encoding": true, "Connection": true, "Keep-Alive": true,
	"Upgrade": true, "Trailer": true, "Te": true, "Proxy-Connection": true,
}

func has(m map[string]json.RawMessage, k string) bool {
	_, ok := m[k]
	return ok
}

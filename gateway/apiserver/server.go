package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"golang.org/x/sync/semaphore"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// Store is what the API reads and writes in the store (*store.Store).
type Store interface {
	QueryRecords(ctx context.Context, q store.Query) ([]store.Record, string, error)
	Aggregate(ctx context.Context, q store.AggQuery) ([]store.AggBucket, error)
	GetState(ctx context.Context, function, key string) ([]byte, bool, error)
	ListState(ctx context.Context, function, prefix string, limit int, cursor string) ([]store.KV, string, error)
	PutState(ctx context.Context, function, key string, value []byte) error
	DeleteState(ctx context.Context, function, key string) error
	ScanLogs(ctx context.Context, function, invocationID string, after uint64, limit int) ([]store.LogRecord, uint64, error)
	LogsNext() uint64
	ListDeadLetters(ctx context.Context, function string, after uint64, limit int) ([]store.DeadLetter, error)
	DeleteDeadLetter(ctx context.Context, seq uint64) error
	PurgeDeadLetters(ctx context.Context, function string) (int, error)
	QueryUsage(ctx context.Context, function string, from, to int64, bucket time.Duration) ([]store.Usage, error)
	GetFunction(ctx context.Context, name string, version int64) (store.FunctionRecord, error)
	EachFunction(ctx context.Context, fn func(store.FunctionRecord) error) error
	EachVersion(ctx context.Context, name string, fn func(store.FunctionRecord) error) error
}

// Functions is what the API needs of the gateway: function changes,
// synchronous invocation and dead-letter replay. Errors wrap this
// package's sentinels (ErrInvalidArgument, ErrNotFound,
// ErrFailedPrecondition, ErrUnavailable), store's errors or
// *luavm.CompileError so that the API answers with the right status.
type Functions interface {
	// Deploy validates a function and unless dryRun stores it as the next
	// version and activates it atomically. unchanged: identical to the
	// active version, nothing stored.
	Deploy(ctx context.Context, name string, manifest, source []byte, dryRun bool) (rec store.FunctionRecord, unchanged bool, err error)
	// Rollback activates version (0: the one below the active one).
	Rollback(ctx context.Context, name string, version int64) (store.FunctionRecord, error)
	// Delete removes the function and its versions; it returns how many.
	Delete(ctx context.Context, name string) (int, error)
	// Running reports the version of name the gateway runs, if any.
	Running(name string) (RunningFunction, bool)
	// Invoke runs name once on ev; the outputs are committed when commit.
	// accept, when not nil, may refuse a successful result before anything
	// is committed: the invocation then fails with its error
	// (Invocation.Err) and commits only its logs and usage.
	Invoke(ctx context.Context, name string, ev *luavm.Event, commit bool, accept func(*luavm.Result) error) (Invocation, error)
	// Requeue puts a dead letter's event back into the inbox durably and,
	// in the same atomic write, deletes dead letter deadLetter (when not 0;
	// a not-found error when it is already gone).
	Requeue(ctx context.Context, function, key string, event []byte, deadLetter uint64) error
	// DecodeEvent decodes a stored event (a dead letter's).
	DecodeEvent(b []byte) (*luavm.Event, error)
	// Committed returns a channel closed after the next commit.
	Committed() <-chan struct{}
}

// RunningFunction is a function as the gateway runs it.
type RunningFunction struct {
	Version     int64
	HTTPMethods []string // methods of its http triggers
}

// Invocation is the outcome of Functions.Invoke.
type Invocation struct {
	Result    *luavm.Result // never nil
	Err       error         // the function's failure, or nil
	Committed bool
	EventID   string
}

// Sync reports the upstream sync targets.
type Sync interface {
	SyncStatus(ctx context.Context) ([]SyncTarget, error)
}

// SyncTarget is the state of one upstream sync target.
type SyncTarget struct {
	Name, Kind         string
	Connected          bool
	BacklogRecords     int64
	BacklogBytes       int64
	OldestPendingAge   time.Duration
	DeliveredTotal     int64
	DeliveredPerSecond float64
	DroppedByQuota     int64
	LastError          string
	LastErrorTime      time.Time
	// Blob sends (buckets with sync): waiting, their content's bytes,
	// acknowledged since start, refused since start (dead letters),
	// dropped by the outbox quota.
	BlobsPending     int64
	BlobBytesPending int64
	BlobsDelivered   int64
	BlobsFailed      int64
	BlobsDropped     int64
}

// NoSync is a Sync without targets.
type NoSync struct{}

// SyncStatus returns no targets.
func (NoSync) SyncStatus(context.Context) ([]SyncTarget, error) { return nil, nil }

// Config configures a Server. Store and Functions are required.
type Config struct {
	Store     Store
	Functions Functions
	Sync      Sync  // default NoSync
	Blobs     Blobs // file uploads; nil: none (every bucket is 404)
	Tokens    []Token
	// MaxBodyBytes bounds request bodies (REST, /fn) and gRPC messages
	// (default 4 MiB). Larger bodies get 413.
	MaxBodyBytes int64
	// Health serves the paths the API does not own (/healthz, /readyz).
	Health http.Handler
	// Metrics returns the daemon's metrics for /metrics (may be nil).
	Metrics func() []Metric
	// System fills the system status (version, gateway id, counters, data dir).
	System SystemInfo
	Logger *slog.Logger
	// UploadReadTimeout bounds the wait for each UploadChunk bytes of a
	// blob upload's body (default 30s): a slower upload is cut off with
	// 408, and its partial file removed.
	UploadReadTimeout time.Duration
	// FollowPoll is how often a log follower re-reads the store without a
	// commit signal (default 2s; commits wake it at once).
	FollowPoll time.Duration
	// MaxFollowers bounds the log follows open at once (default 64); one
	// more is refused with RESOURCE_EXHAUSTED. Each holds a stream and is
	// woken by every commit.
	MaxFollowers int
	// BodyBudget bounds the request bytes buffered at once over all
	// requests (default 4 x MaxBodyBytes): a request whose body does not
	// fit is refused with 503 and Retry-After. Without it, many
	// connections (and HTTP/2 streams) each sending up to MaxBodyBytes
	// could take any amount of memory.
	BodyBudget int64
}

// Server is the management API. Create it with New.
type Server struct {
	cfg     Config
	log     *slog.Logger
	tokens  *tokenSet
	grpc    *grpc.Server
	lis     *bufconn.Listener
	conn    *grpc.ClientConn
	rest    *runtime.ServeMux
	mux     *http.ServeMux
	metrics *callMetrics
	sys     *systemSampler
	serveWG sync.WaitGroup
	closeMu sync.Once
	// bodies holds BodyBudget: the request bytes being buffered.
	bodies *semaphore.Weighted
	// followers counts the open log follows (MaxFollowers).
	followers atomic.Int32
	// native holds a slot for each unary call of a native gRPC client
	// being answered (nativeCalls): their stored JSON becomes its
	// protobuf encoding, up to 5.5 times its size (wirejson.go).
	native chan struct{}
	// aggs holds a slot for each records aggregate running
	// (aggregateCalls).
	aggs chan struct{}
	// reads holds a slot for each REST read being answered until its
	// response starts (restReads).
	reads chan struct{}
}

// restReadCalls bounds the REST reads (GET /v1/...) built at once.
const restReadCalls = 4

// aggregatePath is the one REST aggregate route (its exact path: a state
// key may end in ":aggregate" too).
const aggregatePath = "/v1/records:aggregate"

// aggregateCalls bounds the records aggregates running at once (REST and
// gRPC): each decodes every record it scans.
const aggregateCalls = 2

// New builds the server: the gRPC server with its interceptors, the
// in-memory connection the REST gateway calls it through, and the HTTP
// routes.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Functions == nil {
		return nil, errors.New("apiserver: Config.Store and Functions are required")
	}
	if cfg.Sync == nil {
		cfg.Sync = NoSync{}
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 4 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.UploadReadTimeout <= 0 {
		cfg.UploadReadTimeout = 30 * time.Second
	}
	if cfg.FollowPoll <= 0 {
		cfg.FollowPoll = 2 * time.Second
	}
	if cfg.MaxFollowers <= 0 {
		cfg.MaxFollowers = 64
	}
	if cfg.BodyBudget <= 0 {
		cfg.BodyBudget = 4 * cfg.MaxBodyBytes
	}
	cfg.BodyBudget = max(cfg.BodyBudget, cfg.MaxBodyBytes+1)
	ts, err := newTokenSet(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, tokens: ts, metrics: newCallMetrics(), sys: newSystemSampler(cfg.System), native: make(chan struct{}, nativeCalls), aggs: make(chan struct{}, aggregateCalls), reads: make(chan struct{}, restReadCalls),
		bodies: semaphore.NewWeighted(cfg.BodyBudget)}
	// Room for the JSON/proto framing around a body of MaxBodyBytes.
	maxMsg := int(cfg.MaxBodyBytes) + 64<<10
	s.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		grpc.MaxRecvMsgSize(maxMsg),
	)
	v1.RegisterFunctionServiceServer(s.grpc, &functionService{s: s})
	v1.RegisterRecordServiceServer(s.grpc, &recordService{s: s})
	v1.RegisterStateServiceServer(s.grpc, &stateService{s: s})
	v1.RegisterLogServiceServer(s.grpc, &logService{s: s})
	v1.RegisterDeadLetterServiceServer(s.grpc, &deadLetterService{s: s})
	v1.RegisterUsageServiceServer(s.grpc, &usageService{s: s})
	v1.RegisterStatusServiceServer(s.grpc, &statusService{s: s})

	s.lis = bufconn.Listen(256 << 10)
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		_ = s.grpc.Serve(s.lis)
	}()
	s.conn, err = grpc.NewClient("passthrough:///moongate-internal",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(maxMsg)),
	)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("apiserver: internal connection: %w", err)
	}
	if err := s.buildREST(context.Background()); err != nil {
		s.Close()
		return nil, err
	}
	s.buildMux()
	return s, nil
}

// Close stops the gRPC server (open streams are cancelled) and the
// internal connection. It is safe to call more than once.
func (s *Server) Close() {
	s.closeMu.Do(func() {
		if s.conn != nil {
			_ = s.conn.Close()
		}
		s.grpc.Stop()
		s.serveWG.Wait()
	})
}

// Marshaler is the REST JSON encoding: proto field names, zero scalars
// written (unset messages left out), unknown fields refused, and stored
// JSON passed through as it is (see rawMarshaler).
func Marshaler() runtime.Marshaler {
	return &runtime.HTTPBodyMarshaler{Marshaler: rawMarshaler{&runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}}
}

func (s *Server) buildREST(ctx context.Context) error {
	s.rest = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, Marshaler()),
		// Only Authorization (always passed) and the annotator's peer
		// address reach the gRPC side: no client-chosen metadata.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMetadata(func(_ context.Context, r *http.Request) metadata.MD {
			md := metadata.Pairs(peerMetadata, r.RemoteAddr)
			if r.URL.RawQuery != "" {
				for k := range r.URL.Query() {
					md.Append(queryKeysMetadata, k)
				}
			}
			return md
		}),
		runtime.SetQueryParameterParser(strictQueryParser{}),
		runtime.WithForwardResponseOption(startStream),
		runtime.WithDisablePathLengthFallback(),
		runtime.WithErrorHandler(restErrorHandler),
		// A state key may hold "/": sent as %2F, it stays one segment. The
		// mux decodes a single-segment parameter fully, once (so the key
		// reaches the service decoded: it must not be decoded again).
		runtime.WithUnescapingMode(runtime.UnescapingModeAllExceptSlash),
	)
	for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		v1.RegisterFunctionServiceHandler, v1.RegisterRecordServiceHandler, v1.RegisterStateServiceHandler,
		v1.RegisterLogServiceHandler, v1.RegisterDeadLetterServiceHandler, v1.RegisterUsageServiceHandler,
		v1.RegisterStatusServiceHandler,
	} {
		if err := reg(ctx, s.rest, s.conn); err != nil {
			return fmt.Errorf("apiserver: register REST handlers: %w", err)
		}
	}
	return nil
}

// peerMetadata carries the REST client's address to the gRPC side (for
// the audit log). Client headers cannot set it: the header matcher
// forwards none.
const peerMetadata = "moongate-rest-peer"

// queryKeysMetadata carries the names of the REST request's query
// parameters to the gRPC side, where each must name a field of the request
// message (checkQuery): grpc-gateway calls the query parser (and so
// strictQueryParser) only for routes with query fields, and ignores every
// parameter of the others. Binary ("-bin"), so that any key passes.
const queryKeysMetadata = "moongate-query-keys-bin"

// checkQuery refuses a request whose REST query names no field of req, or
// any query of a method whose route takes the whole request from the body
// (body "*": grpc-gateway reads no query there, so ?dry_run=true on a
// deploy was accepted and the function deployed).
func checkQuery(ctx context.Context, method string, req any) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return nil
	}
	keys := md.Get(queryKeysMetadata)
	if len(keys) == 0 {
		return nil
	}
	msg, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if wholeBody(method) {
		return status.Errorf(codes.InvalidArgument, "query parameter %q: this call reads its parameters from the body only", clip(keys[0]))
	}
	for _, k := range keys {
		if !knownField(msg.ProtoReflect().Descriptor(), k) {
			return status.Errorf(codes.InvalidArgument, "unknown query parameter %q", clip(k))
		}
	}
	return nil
}

func (s *Server) buildMux() {
	m := http.NewServeMux()
	m.HandleFunc("GET /metrics", s.serveMetrics)
	m.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(v1.OpenAPI)
	})
	m.Handle("/v1/", s.limitBody(s.restReads(plainStreamErrors(validPath(s.rest)))))
	// Blobs are streamed: not through limitBody (the bucket's size limit
	// bounds an upload), authorised by their handlers before any read.
	m.HandleFunc("/v1/blobs/{bucket}/{name...}", s.serveBlob)
	m.HandleFunc("GET /v1/blobs/{bucket}", s.serveBlobList)
	m.Handle("/fn/{name}", s.limitBody(http.HandlerFunc(s.serveFunction)))
	m.Handle("/fn/{name}/{path...}", s.limitBody(http.HandlerFunc(s.serveFunction)))
	if s.cfg.Health != nil {
		m.Handle("/", s.cfg.Health)
	}
	s.mux = m
}

// Handler serves the whole API on one port: gRPC (HTTP/2 with Content-Type
// application/grpc), REST under /v1/, HTTP functions under /fn/, /metrics,
// and Config.Health for the rest. The http.Server that serves it needs
// HTTP/2: h2 with TLS, or unencrypted HTTP/2 (http.Protocols) without.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			// grpc-go reads a whole message (up to its receive limit)
			// before the interceptor sees the token: a client without a
			// valid one is answered before its body is read, as limitBody
			// does for REST (anonymous streams held 4 MiB each before).
			if _, err := s.tokens.authenticate(r.Header.Get("Authorization"), ScopeRead); err != nil {
				st, _ := status.FromError(err)
				s.metrics.call("grpc", st.Code())
				writeGRPCStatus(w, st)
				return
			}
			if r.URL.Path != v1.LogService_FollowLogs_FullMethodName {
				// As for REST (limitBody): a client that never reads the
				// answer held the handler and the response for ever.
				w = &deadlineWriter{ResponseWriter: w}
			}
			s.grpc.ServeHTTP(w, r)
			return
		}
		if dotOrEmptySegment(r.URL.EscapedPath()) {
			// The mux would answer with a redirect to the cleaned path,
			// which a client following it (Go's does, with the body and
			// the token) takes for the answer: a PUT of a blob named
			// photos/cam1/../../other/x was stored in the bucket other.
			writeStatus(w, http.StatusBadRequest, codes.InvalidArgument,
				"the path has a '.' or '..' segment or an empty one: send a name that holds one percent-encoded (%2E, %2E%2E)")
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// dotOrEmptySegment reports whether the escaped path p has a "." or ".."
// segment or an empty one before its end (a trailing slash is not one).
func dotOrEmptySegment(p string) bool {
	segs := strings.Split(p, "/")
	for i, seg := range segs[1:] {
		if seg == "." || seg == ".." || (seg == "" && i+2 < len(segs)) {
			return true
		}
	}
	return false
}

// limitBody reads the request body up front, refusing with 413 a body over
// MaxBodyBytes (declared or actual) before anything decodes it. A request
// without a valid token is refused before its body is read (the scope is
// checked later, by the interceptor): an anonymous client cannot make the
// server buffer bodies.
func (s *Server) limitBody(h http.Handler) http.Handler {
	limit := s.cfg.MaxBodyBytes
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.tokens.authenticate(r.Header.Get("Authorization"), ScopeRead); err != nil {
			st, _ := status.FromError(err)
			s.metrics.call("http", st.Code())
			writeStatus(w, runtime.HTTPStatusFromCode(st.Code()), st.Code(), st.Message())
			return
		}
		if r.ContentLength > limit {
			writeStatus(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted,
				fmt.Sprintf("request body is %d bytes, larger than the limit of %d (api.max_body_bytes)", r.ContentLength, limit))
			return
		}
		if r.Body != nil && r.Body != http.NoBody && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			// No GET route reads a body. Taken, it held its share of the
			// body budget for as long as the handler ran: a log follow
			// sent with one held it for as long as it stayed open. An
			// empty chunked body (a Go client given an empty reader) is
			// no body.
			empty := r.ContentLength <= 0
			if empty {
				rc := http.NewResponseController(w)
				_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
				var one [1]byte
				n, err := io.ReadFull(r.Body, one[:])
				_ = rc.SetReadDeadline(time.Time{})
				empty = n == 0 && errors.Is(err, io.EOF)
			}
			if !empty {
				writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, "a "+r.Method+" request takes no body")
				return
			}
			r.Body = http.NoBody
		}
		if r.Body != nil && r.Body != http.NoBody {
			// The bytes it may buffer are reserved first, out of what all
			// requests may hold at once.
			need := r.ContentLength
			if need < 0 {
				need = limit + 1 // chunked: up to the limit
			}
			if !s.bodies.TryAcquire(need) {
				w.Header().Set("Retry-After", "1")
				writeStatus(w, http.StatusServiceUnavailable, codes.Unavailable,
					fmt.Sprintf("busy: other requests are sending their bodies (%d bytes at once at most); try again", s.cfg.BodyBudget))
				return
			}
			defer s.bodies.Release(need)
			// A body that stalls gives its reservation back.
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
			b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
			_ = rc.SetReadDeadline(time.Time{})
			if err != nil {
				writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, "read request body: "+err.Error())
				return
			}
			if int64(len(b)) > limit {
				writeStatus(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted,
					fmt.Sprintf("request body is larger than the limit of %d bytes (api.max_body_bytes)", limit))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		if r.URL.Path != logsFollowPath {
			// A response must not stall for ever: a client that never
			// reads it (an HTTP/2 window kept at 0) held the handler, the
			// whole response (an HTTP function's, up to max_result_bytes;
			// a page of up to 1 MiB) and any body reservation (four of
			// them made every request with a body 503). Log follows
			// stream for as long as they are open.
			w = &deadlineWriter{ResponseWriter: w}
		}
		h.ServeHTTP(w, r)
	})
}

// restReads makes REST reads (GET, but log follows and aggregates, which
// have their own bounds) take a slot (restReadCalls) from before the
// handler runs until their response starts: a page of records, logs,
// state or dead letters (up to 1 MiB stored) is read from the store,
// carried to the REST gateway and marshaled there, about 3.5 times the
// page at its peak, and nothing else bounded how many were built at once
// (32 concurrent record queries of a read token: 114 MiB of heap; the
// connection limit allowed 128). Once the response is written the slot
// is free again, whether or not the client reads it.
func (s *Server) restReads(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path == logsFollowPath || r.URL.Path == aggregatePath {
			h.ServeHTTP(w, r)
			return
		}
		select {
		case s.reads <- struct{}{}:
		case <-r.Context().Done():
			return // the client is gone
		}
		sw := &slotWriter{ResponseWriter: w, release: func() { <-s.reads }}
		defer sw.free()
		h.ServeHTTP(sw, r)
	})
}

// slotWriter frees a slot once the response starts (or the handler
// returns without one).
type slotWriter struct {
	http.ResponseWriter
	release func()
	freed   bool
}

func (w *slotWriter) free() {
	if !w.freed {
		w.freed = true
		w.release()
	}
}

func (w *slotWriter) WriteHeader(code int) {
	w.free()
	w.ResponseWriter.WriteHeader(code)
}

func (w *slotWriter) Write(b []byte) (int, error) {
	w.free()
	return w.ResponseWriter.Write(b)
}

// Flush keeps streaming responses streaming.
func (w *slotWriter) Flush() {
	w.free()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *slotWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bodyReadTimeout bounds the reading of one request body (up to
// MaxBodyBytes, 4 MiB by default: 70 KB/s at least).
const bodyReadTimeout = time.Minute

// responseWriteTimeout bounds the writing of a response (all but log
// follows), from its first byte (a variable for tests).
var responseWriteTimeout = time.Minute

// deadlineWriter sets a write deadline of responseWriteTimeout when the
// response starts (not before: the handler may run a function for minutes
// first). On HTTP/2 the deadline is the stream's.
type deadlineWriter struct {
	http.ResponseWriter
	armed bool
	// rolling moves the deadline at each write (a blob download: each
	// write within responseWriteTimeout, not the whole response).
	rolling bool
}

func (d *deadlineWriter) arm() {
	if !d.armed || d.rolling {
		d.armed = true
		_ = http.NewResponseController(d.ResponseWriter).SetWriteDeadline(time.Now().Add(responseWriteTimeout))
	}
}

func (d *deadlineWriter) WriteHeader(code int) {
	d.arm()
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Write(b []byte) (int, error) {
	d.arm()
	return d.ResponseWriter.Write(b)
}

// Flush keeps streaming responses streaming.
func (d *deadlineWriter) Flush() {
	d.arm()
	_ = http.NewResponseController(d.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// writeGRPCStatus answers a gRPC call with st and nothing else (a
// "trailers-only" response: the status in the headers).
func writeGRPCStatus(w http.ResponseWriter, st *status.Status) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(int(st.Code())))
	h.Set("Grpc-Message", url.PathEscape(st.Message()))
	w.WriteHeader(http.StatusOK)
}

// writeStatus writes a JSON google.rpc.Status.
func writeStatus(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	b, _ := Marshaler().Marshal(status.New(code, msg).Proto())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	_, _ = w.Write(b)
}

// wholeBodyMethods caches wholeBody by full method name.
var wholeBodyMethods sync.Map

// wholeBody reports whether the REST route of the gRPC method (full name,
// "/pkg.Service/Method") takes its whole request from the body.
func wholeBody(method string) bool {
	if v, ok := wholeBodyMethods.Load(method); ok {
		return v.(bool)
	}
	whole := false
	name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", "."))
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(name); err == nil {
		if md, ok := d.(protoreflect.MethodDescriptor); ok {
			rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
			whole = rule != nil && rule.Body == "*"
		}
	}
	wholeBodyMethods.Store(method, whole)
	return whole
}

// strictQueryParser refuses query parameters that name no field of the
// request (grpc-gateway ignores them by default), then parses as usual.
type strictQueryParser struct{}

func (strictQueryParser) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	for key, vs := range values {
		if !knownField(msg.ProtoReflect().Descriptor(), key) {
			return status.Errorf(codes.InvalidArgument, "unknown query parameter %q", clip(key))
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return status.Errorf(codes.InvalidArgument, "query parameter %q is not valid UTF-8", clip(key))
			}
		}
	}
	if err := (&runtime.DefaultQueryParser{}).Parse(msg, values, filter); err != nil {
		return status.Errorf(codes.InvalidArgument, "query parameters: %v", err)
	}
	return nil
}

// knownField reports whether key (a dotted path, proto or JSON names, an
// optional [map key] suffix) names a field of md.
func knownField(md protoreflect.MessageDescriptor, key string) bool {
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	parts := strings.Split(key, ".")
	for i, p := range parts {
		fd := md.Fields().ByName(protoreflect.Name(p))
		if fd == nil {
			fd = md.Fields().ByJSONName(p)
		}
		if fd == nil {
			return false
		}
		if i == len(parts)-1 {
			return true
		}
		if fd.Message() == nil {
			return false
		}
		md = fd.Message()
	}
	return false
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// streamStartedMD is the header metadata a streaming method sends once its
// arguments and token are checked.
const streamStartedMD = "moongate-stream"

// startStream writes the HTTP status and headers of a REST stream as soon
// as the gRPC stream has started (grpc-gateway would wait for the first
// message: a follower of a quiet function would see nothing, not even a
// 200). A stream that failed before starting is left alone: its error
// becomes the response (see plainStreamErrors).
func startStream(ctx context.Context, w http.ResponseWriter, msg proto.Message) error {
	if msg != nil {
		return nil
	}
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok || len(md.HeaderMD.Get(streamStartedMD)) == 0 {
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// logsFollowPath is the REST path of the log follow, the one response
// that streams for as long as it is open: only it goes without a write
// deadline (a suffix test let /fn/NAME/x:follow, or a state key ending in
// ":follow", stall for ever).
const logsFollowPath = "/v1/logs:follow"

// plainStreamErrors makes an error that ends a stream before its first
// message (bad arguments, no token) a plain google.rpc.Status body like
// every other error, instead of grpc-gateway's {"error": Status} chunk.
func plainStreamErrors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != logsFollowPath {
			h.ServeHTTP(w, r)
			return
		}
		uw := &unwrapWriter{ResponseWriter: w}
		h.ServeHTTP(uw, r)
		uw.finish()
	})
}

// unwrapWriter holds back an error status until it sees the body.
type unwrapWriter struct {
	http.ResponseWriter
	code    int    // error status held back
	held    []byte // error body held back
	started bool   // passing through
}

func (u *unwrapWriter) WriteHeader(code int) {
	if u.started || u.code != 0 {
		return
	}
	if code < 400 {
		u.started = true
		u.ResponseWriter.WriteHeader(code)
		return
	}
	u.code = code
}

func (u *unwrapWriter) Write(b []byte) (int, error) {
	if u.code != 0 && !u.started {
		u.held = append(u.held, b...)
		return len(b), nil
	}
	u.started = true
	return u.ResponseWriter.Write(b)
}

func (u *unwrapWriter) Flush() {
	if u.started {
		if f, ok := u.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
	}
}

func (u *unwrapWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func (u *unwrapWriter) finish() {
	if u.started || u.code == 0 {
		return
	}
	var chunk struct {
		Error json.RawMessage `json:"error"`
	}
	body := u.held
	if json.Unmarshal(bytes.TrimSpace(u.held), &chunk) == nil && len(chunk.Error) > 0 {
		body = chunk.Error
	}
	u.ResponseWriter.Header().Del("Transfer-Encoding")
	u.ResponseWriter.WriteHeader(u.code)
	_, _ = u.ResponseWriter.Write(body)
}

// validPath refuses a path that is not valid UTF-8 once decoded (path
// parameters are proto strings, which must be).
func validPath(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !utf8.ValidString(r.URL.Path) {
			writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, "the path is not valid UTF-8")
			return
		}
		h.ServeHTTP(w, r)
	})
}

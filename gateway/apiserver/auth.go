package apiserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Scope is what a token may do.
type Scope int

// Scopes, in increasing power. A method's required scope is in methodScopes.
const (
	ScopeNone  Scope = iota // open: no token needed
	ScopeRead               // queries
	ScopeAdmin              // everything
)

// String returns the configuration name of the scope.
func (s Scope) String() string {
	switch s {
	case ScopeRead:
		return "read"
	case ScopeAdmin:
		return "admin"
	}
	return "none"
}

// ParseScope parses "read" or "admin".
func ParseScope(s string) (Scope, error) {
	switch s {
	case "read":
		return ScopeRead, nil
	case "admin":
		return ScopeAdmin, nil
	}
	return ScopeNone, fmt.Errorf("%w: unknown token scope %q (admin or read)", ErrInvalidArgument, s)
}

// Token is one accepted bearer token: its name (for the audit log), its
// scope, and its hash as in the configuration ("sha256:" + hex).
type Token struct {
	Name  string
	Scope Scope
	Hash  string
}

// TokenPrefix starts every token NewToken makes (it lets secret scanners
// recognise leaked moongate tokens).
const TokenPrefix = "mgt_"

// NewToken returns a new random token (32 bytes from crypto/rand) and its
// configuration hash.
func NewToken() (token, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("random token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashToken(token), nil
}

// HashToken returns the configuration hash of token: "sha256:" and the hex
// SHA-256 of its bytes.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// tokenSet checks presented tokens against the configured hashes.
type tokenSet struct {
	tokens []Token
	sums   [][]byte // decoded hashes, same order
}

func newTokenSet(tokens []Token) (*tokenSet, error) {
	ts := &tokenSet{tokens: tokens}
	for _, t := range tokens {
		h, ok := strings.CutPrefix(t.Hash, "sha256:")
		b, err := hex.DecodeString(h)
		if !ok || err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: token %q: hash must be \"sha256:\" and 64 hex digits", ErrInvalidArgument, t.Name)
		}
		if t.Scope != ScopeRead && t.Scope != ScopeAdmin {
			return nil, fmt.Errorf("%w: token %q: no scope", ErrInvalidArgument, t.Name)
		}
		ts.sums = append(ts.sums, b)
	}
	return ts, nil
}

// lookup returns the token whose hash matches presented. Every configured
// hash is compared, in constant time, whatever matches.
func (ts *tokenSet) lookup(presented string) (Token, bool) {
	sum := sha256.Sum256([]byte(presented))
	found := -1
	for i, h := range ts.sums {
		if subtle.ConstantTimeCompare(sum[:], h) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Token{}, false
	}
	return ts.tokens[found], true
}

// maxTokenLen bounds the presented token: longer ones are refused unhashed.
const maxTokenLen = 512

// authenticate checks an Authorization value ("Bearer TOKEN") against need.
// It returns the token, or an UNAUTHENTICATED or PERMISSION_DENIED status.
func (ts *tokenSet) authenticate(authz string, need Scope) (Token, error) {
	if need == ScopeNone {
		return Token{}, nil
	}
	scheme, tok, ok := strings.Cut(authz, " ")
	if authz == "" {
		return Token{}, status.Error(codes.Unauthenticated, "missing bearer token (Authorization: Bearer TOKEN)")
	}
	if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" || len(tok) > maxTokenLen {
		return Token{}, status.Error(codes.Unauthenticated, "malformed Authorization header: want \"Bearer TOKEN\"")
	}
	t, ok := ts.lookup(strings.TrimSpace(tok))
	if !ok {
		return Token{}, status.Error(codes.Unauthenticated, "unknown or revoked token")
	}
	if t.Scope < need {
		return Token{}, status.Errorf(codes.PermissionDenied, "token %q has scope %s; this call needs %s", t.Name, t.Scope, need)
	}
	return t, nil
}

type tokenKey struct{}

// tokenFrom returns the token that authorised the call in ctx.
func tokenFrom(ctx context.Context) Token {
	t, _ := ctx.Value(tokenKey{}).(Token)
	return t
}

// authorize checks the call's token against the method's scope. Methods
// missing from methodScopes are refused: a new method cannot be open by
// mistake.
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	need, ok := methodScopes[method]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "method %s has no scope: refused", method)
	}
	var authz string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			authz = v[0]
		}
	}
	t, err := s.tokens.authenticate(authz, need)
	if err != nil {
		return nil, err
	}
	return context.WithValue(ctx, tokenKey{}, t), nil
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorize(ctx, info.FullMethod)
	if err == nil {
		err = checkQuery(ctx, info.FullMethod, req)
	}
	if err != nil {
		s.metrics.call(info.FullMethod, status.Code(err))
		return nil, err
	}
	resp, err := handler(ctx, req)
	err = toStatus(err)
	s.metrics.call(info.FullMethod, status.Code(err))
	return resp, err
}

// nativeCalls bounds the answers of native gRPC clients being built from
// stored JSON at once (structSlot).
const nativeCalls = 2

// structSlot waits for a slot to build a native gRPC client's answer from
// stored JSON: its protobuf encoding, up to 5.5 times the JSON
// (wirejson.go), so a few at a time whatever the number of connections
// and streams. Taken
// after the store was read or the function ran (a long scan or invocation
// holds none: ListLogs, QueryRecords, ListState, GetState, InvokeFunction) and
// released when the handler returns, just before the answer is encoded.
// REST calls, which get the stored JSON as it is, need none. The returned
// release is never nil.
func (s *Server) structSlot(ctx context.Context) (func(), error) {
	if fromGateway(ctx) {
		return func() {}, nil
	}
	select {
	case s.native <- struct{}{}:
		return func() { <-s.native }, nil
	case <-ctx.Done():
		return func() {}, ctx.Err()
	}
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		s.metrics.call(info.FullMethod, status.Code(err))
		return err
	}
	err = toStatus(handler(srv, &authedStream{ServerStream: ss, ctx: ctx, method: info.FullMethod}))
	s.metrics.call(info.FullMethod, status.Code(err))
	return err
}

// authedStream is a stream with the caller's token in its context; its
// request (the first message received) is checked against the REST
// query (checkQuery).
type authedStream struct {
	grpc.ServerStream
	ctx     context.Context
	method  string
	checked bool
}

func (a *authedStream) Context() context.Context { return a.ctx }

func (a *authedStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !a.checked {
		a.checked = true
		return checkQuery(a.ctx, a.method, m)
	}
	return nil
}

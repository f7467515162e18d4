// Package apiserver is moongate's management API: the gRPC services of
// api/moongate/v1 (functions, invoke, records, state, logs, dead letters,
// usage, sync and system status), their REST/JSON face (grpc-gateway),
// HTTP-triggered functions at /fn/NAME/..., the OpenAPI description at
// /v1/openapi.json and Prometheus metrics at /metrics.
//
// # One port, one path through the interceptors
//
// Server.Handler serves everything on the daemon's api.listen address. A
// request with Content-Type application/grpc over HTTP/2 (h2c on plain
// TCP, h2 with TLS) goes to the gRPC server. A REST request under /v1/ goes
// to the grpc-gateway mux, which calls the same gRPC server through an
// in-memory connection (bufconn), never in-process registration: so REST
// calls go through the very interceptors that check tokens and map errors,
// and server streaming (log follow) works over REST as newline-delimited
// JSON. Stored JSON (records' data, state values, results, log fields)
// crosses the in-memory connection as text, not as google.protobuf.Value
// messages (see rawjson.go); gRPC clients get it as messages.
// /healthz, /readyz and /metrics are open; /v1/openapi.json is open
// (it is the public description of the API); everything else needs a
// bearer token.
//
// # Tokens
//
// Tokens are random 32-byte strings ("mgt_" and 43 base64url characters),
// kept in the configuration only as "sha256:" and their hex SHA-256. A fast
// hash is right for a high-entropy token (there is nothing to brute-force,
// unlike a password, so bcrypt's cost would only slow every call down on a
// Pi); the presented token's hash is compared with every configured hash in
// constant time. Scope read allows queries, admin everything. Revocation is
// removing the token from the configuration and restarting the daemon.
//
// The Server is safe for concurrent use. Its zero value is not usable:
// create it with New and Close it when done.
package apiserver

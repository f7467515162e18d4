#!/usr/bin/env bash
# Regenerates the Go code of the API protobuf definitions (api/moongate/v1)
# offline: protoc from Debian's protobuf-compiler, the plugins built from the
# versions pinned as `tool` dependencies in go.mod, the googleapis and
# openapiv2 annotation protos vendored in api/third_party.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler (scripts/test-deps.sh)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" $GO install tool
protos=(api/moongate/v1/*.proto)
protoc -I api -I api/third_party \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --plugin=protoc-gen-grpc-gateway="$bin/protoc-gen-grpc-gateway" \
  --plugin=protoc-gen-openapiv2="$bin/protoc-gen-openapiv2" \
  --go_out=api --go_opt=paths=source_relative \
  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out=api --grpc-gateway_opt=paths=source_relative \
  --openapiv2_out=api/moongate/v1 \
  --openapiv2_opt=allow_merge=true,merge_file_name=moongate,json_names_for_fields=false,disable_default_errors=false \
  "${protos[@]}"

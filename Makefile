# moongate Makefile. `make test` is the whole suite (what CI runs).
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PKGS      := ./...

.PHONY: all build test test-deps vet fmt-check tidy-check bench fuzz-smoke generate generate-check

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/moongate ./cmd/moongate

test-deps:
	./scripts/test-deps.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# The whole suite: formatting, vet, a one-iteration run of every benchmark
# (so none rots), then the race-enabled tests.
test: test-deps fmt-check vet generate-check
	$(GO) test -run '^$$' -bench . -benchtime 1x $(PKGS) >/dev/null
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

tidy-check:
	$(GO) mod tidy && git diff --exit-code go.mod go.sum

# Regenerates the API code from api/moongate/v1/*.proto (offline: protoc
# from Debian, plugins pinned as go.mod tools, annotation protos vendored).
generate:
	GO=$(GO) ./scripts/generate.sh

# Fails when the committed generated code differs from what `make generate`
# produces (stale after a .proto edit, or edited by hand).
generate-check: generate
	@git diff --exit-code -- api/ || { echo "generated API code is stale: run make generate and commit"; exit 1; }
	@out=$$(git status --porcelain --untracked-files=all -- api/); if [ -n "$$out" ]; then echo "untracked generated files:"; echo "$$out"; exit 1; fi

# The device fleet simulator (firmware-examples/devsim).
.PHONY: build-devsim
build-devsim:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/moongate-devsim ./cmd/moongate-devsim

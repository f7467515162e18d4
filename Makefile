# moongate Makefile. `make test` is the whole suite (what CI runs).
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PKGS      := ./...

.PHONY: all build test test-deps vet fmt-check tidy-check bench bench-go bench-short generate generate-check test-mochi test-badger test-gopher-lua
.PHONY: build-all deb test-arm footprint test-systemd

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
test: test-deps fmt-check vet generate-check test-mochi test-badger test-gopher-lua
	$(GO) test -run '^$$' -bench . -benchtime 1x $(PKGS) >/dev/null
	$(GO) test -race -count=1 -timeout 12m $(PKGS)
	GOARCH=386 $(GO) test -count=1 -run 'FitsInt' ./sync/
	$(MAKE) bench-short

# mochi's own test suite against the patched copy moongate builds
# (mqtt/third_party/mochi/README.moongate.md).
test-mochi:
	./mqtt/third_party/mochi/upstream-tests/run.sh

# gopher-lua's own tests against the patched copy
# (luavm/third_party/gopher-lua/README.moongate.md).
test-gopher-lua:
	cd luavm/third_party/gopher-lua && $(GO) test -count=1 ./...

# Badger's own tests (the parts moongate's patch touches; FULL=1 for all)
# against the patched copy (store/third_party/badger/README.moongate.md).
test-badger:
	./store/third_party/badger-tests.sh

# The Go benchmarks of every package.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# The end-to-end benchmark (docs/performance.md): brokers, moongate and
# simulated devices on loopback, one table. Needs mosquitto (test-deps).
bench: build
	$(GO) run ./cmd/moongate-bench --binary bin/moongate

# The same in its short mode (a few seconds per scenario): fails when any
# scenario loses an acknowledged event. Part of `make test`.
bench-short: build
	$(GO) run ./cmd/moongate-bench --binary bin/moongate --short

tidy-check:
	$(GO) mod tidy && git diff --exit-code go.mod go.sum

# The device fleet simulator (firmware-examples/devsim).
.PHONY: build-devsim
build-devsim:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/moongate-devsim ./cmd/moongate-devsim
# Regenerates the API code from api/moongate/v1/*.proto (offline: protoc
# from Debian, plugins pinned as go.mod tools, annotation protos vendored).
generate:
	GO=$(GO) ./scripts/generate.sh

# Fails when the committed generated code differs from what `make generate`
# produces (stale after a .proto edit, or edited by hand).
generate-check: generate
	@git diff --exit-code -- api/ || { echo "generated API code is stale: run make generate and commit"; exit 1; }
	@out=$$(git status --porcelain --untracked-files=all -- api/); if [ -n "$$out" ]; then echo "untracked generated files:"; echo "$$out"; exit 1; fi


# Release binaries for the Raspberry Pi family and amd64: static
# (CGO_ENABLED=0), -trimpath, version and commit stamped, stripped (-s -w).
# armv6: Pi Zero/1; armv7: Pi 2/3 on 32-bit Raspberry Pi OS; arm64: Pi 3/4/5
# on 64-bit. Prints the size of each binary.
DIST      ?= dist
PLATFORMS := armv6:arm:6 armv7:arm:7 arm64:arm64: amd64:amd64:

build-all:
	@mkdir -p $(DIST)
	@set -e; for p in $(PLATFORMS); do \
	  name=$${p%%:*}; rest=$${p#*:}; arch=$${rest%%:*}; arm=$${rest#*:}; \
	  echo "building $(DIST)/moongate-linux-$$name"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(DIST)/moongate-linux-$$name ./cmd/moongate; \
	done
	@for p in $(PLATFORMS); do f=$(DIST)/moongate-linux-$${p%%:*}; \
	  stat -c '%n %s' $$f | awk '{ printf "%-28s %9d bytes  %5.1f MiB\n", $$1, $$2, $$2 / 1048576 }'; done

# Debian packages (amd64, arm64, armhf with the armv6 binary) in $(DIST).
# A tag v1.2.3 gives version 1.2.3 (1.2.3+4+gHASH past it); an untagged
# tree 0.0.0+git<commit time>.<hash>, so that later commits sort as newer
# versions (a bare hash sorts at random: apt would see downgrades).
DEB_VERSION ?= $(shell v='$(VERSION)'; if echo "$$v" | grep -q '^v[0-9]'; then echo "$$v" | sed -e 's/^v//' -e 's/-/+/g'; else echo "0.0.0+git$$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || echo 0).$$v" | sed -e 's/-/+/g'; fi)

deb: build-all
	GO=$(GO) deploy/package.sh amd64 $(DIST)/moongate-linux-amd64 $(DEB_VERSION) $(DIST)
	GO=$(GO) deploy/package.sh arm64 $(DIST)/moongate-linux-arm64 $(DEB_VERSION) $(DIST)
	GO=$(GO) deploy/package.sh armhf $(DIST)/moongate-linux-armv6 $(DEB_VERSION) $(DIST)

# The ARM checks alone (they also run in `make test`): the store's whole
# suite for GOARCH=arm under qemu-arm, and the smoke scenario of the armv7
# and arm64 binaries under qemu-arm / qemu-aarch64.
test-arm: test-deps
	$(GO) test -count=1 -run 'TestQEMUArm32' -v ./store/ | tail -n 20
	$(GO) test -count=1 -run 'TestARMSmoke' -v ./deploy/

# The amd64 package and install.sh under a live systemd: boots Debian
# bookworm in systemd-nspawn and checks the running service (docs/deploy.md).
# Not part of `make test`: needs root, a Debian mirror the first time (the
# container's root filesystem is cached in /var/cache/moongate-sysd) and
# about 20 s per run.
test-systemd: build
	GO=$(GO) deploy/test-systemd.sh bin/moongate $(DEB_VERSION)

# Start-up time, idle RSS and RSS at 1,000 events/s with the reference
# function: natively (amd64) and for arm64 under qemu-aarch64 (emulated
# figures). See docs/performance.md.
# Each binary runs twice: on the default configuration (memory_limit auto),
# and without a memory limit (memory_limit: off) for comparison.
NO_LIMIT := -config 'memory_limit: off'

footprint: build-all
	$(GO) run ./deploy/footprint -bin $(DIST)/moongate-linux-amd64
	$(GO) run ./deploy/footprint -bin $(DIST)/moongate-linux-amd64 $(NO_LIMIT)
	$(GO) run ./deploy/footprint -bin $(DIST)/moongate-linux-arm64 -qemu qemu-aarch64
	$(GO) run ./deploy/footprint -bin $(DIST)/moongate-linux-arm64 -qemu qemu-aarch64 $(NO_LIMIT)

#!/bin/sh
# Runs mochi v2.7.9's own test suite against moongate's patched copy: the
# release from the module proxy, its sources replaced by ours, its tests
# adapted where they asserted the behaviour the patch changes
# (upstream-tests.patch; README.moongate.md lists why). Needs the Go module
# proxy (testify) and git (to apply the patch).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "$here" && go mod download -json github.com/mochi-mqtt/server/v2@v2.7.9 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "mochi v2.7.9 not downloaded" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -R "$src"/. "$tmp"
chmod -R u+w "$tmp"
(cd "$here" && find . -name '*.go') | while read -r f; do cp "$here/$f" "$tmp/$f"; done
cd "$tmp"
git apply -p1 "$here/upstream-tests/upstream-tests.patch"
# TestServerProcessPublishACLCheckDeny is flaky in the release itself (its
# v4 QoS 2 case fails now and then: 2 failures in 30 runs
# of the unpatched v2.7.9 with -race, 2026-11-27), so it is skipped.
out="$tmp/test.out"
if GOFLAGS=-mod=mod go test -race -count=1 -skip '^TestServerProcessPublishACLCheckDeny$' \
	. ./packets ./listeners ./hooks/storage ./system ./mempool >"$out" 2>&1; then
	cat "$out"
	exit 0
fi
cat "$out"
# Many of the release's tests wait with a fixed sleep (1 ms, 100 us) where
# they should wait for readiness: the server tests before closing the
# client's pipe, the listener tests before their first request to a server
# that Serve starts listening in a goroutine. They fail now and then on a
# busy machine (TestPublishToSubscribers once in a CI run, 2026-11-27;
# TestHTTPHealthCheckServeAndCloseMethodNotAllowed, "connection refused",
# 2026-11-29). Tests that failed are run again, alone, in the packages that
# failed, twice; they must pass both times. A build or setup failure stands.
if grep -q '^FAIL[[:space:]].*\[\(build\|setup\) failed\]' "$out"; then
	exit 1
fi
failed=$(grep -o -- '--- FAIL: Test[A-Za-z0-9_]*' "$out" | sed 's/--- FAIL: //' | sort -u | paste -sd'|' -)
pkgs=$(sed -n 's|^FAIL[[:space:]]*github.com/mochi-mqtt/server/v2\(/[a-z/]*\)\{0,1\}[[:space:]].*|.\1|p' "$out" | sort -u)
[ -n "$failed" ] && [ -n "$pkgs" ] || exit 1
echo "run.sh: running the failed tests again, alone, twice: $failed in" $pkgs
# shellcheck disable=SC2086 # one word per package
GOFLAGS=-mod=mod go test -race -count=2 -run "^($failed)\$" $pkgs

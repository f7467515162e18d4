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
# Many of the release's server tests wait for the client's write loop with a
# fixed sleep (1 ms, 100 us) before closing its pipe, and fail now and then
# on a busy machine (TestPublishToSubscribers once in a CI run, 2026-11-27).
# Tests of the root package that failed are run again, alone, twice; they
# must pass both times. A failure anywhere else, or of the build, stands.
if grep -v '^FAIL[[:space:]]*github.com/mochi-mqtt/server/v2[[:space:]]' "$out" | grep -q '^FAIL[[:space:]]*github.com/'; then
	exit 1
fi
failed=$(grep -o -- '--- FAIL: Test[A-Za-z0-9_]*' "$out" | sed 's/--- FAIL: //' | sort -u | paste -sd'|' -)
[ -n "$failed" ] || exit 1
echo "run.sh: running the failed tests again, alone, twice: $failed"
GOFLAGS=-mod=mod go test -race -count=2 -run "^($failed)\$" .

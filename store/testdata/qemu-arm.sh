#!/usr/bin/env bash
# Cross-compiles the store test binary for 32-bit ARM (GOARCH=arm GOARM=7,
# the Raspberry Pi 2/3/Zero 2 userland) and runs it under qemu-arm with the
# default low-memory profile. Extra arguments go to the test binary, e.g.
#   store/testdata/qemu-arm.sh -test.run 'TestCrash$' -test.v
# Without arguments it runs the whole store suite in -test.short mode.
# Needs qemu-user (scripts/test-deps.sh installs it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
command -v qemu-arm >/dev/null || { echo "qemu-arm not found: apt-get install qemu-user" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$here" && CGO_ENABLED=0 GOARCH=arm GOARM=7 go test -c -o "$out/store.arm.test" .)
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-test.short -test.timeout 10m)
cd "$here"
MOONGATE_STORE_EXEC_WRAPPER=qemu-arm MOONGATE_STORE_CRASH_KILLS="${MOONGATE_STORE_CRASH_KILLS:-25}" \
  qemu-arm "$out/store.arm.test" "${args[@]}"

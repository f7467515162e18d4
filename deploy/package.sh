#!/bin/sh
# Builds one moongate Debian package with nfpm (the version pinned in go.mod
# as a tool: works offline once the module cache is filled).
#
#   deploy/package.sh DEB_ARCH BINARY VERSION OUTDIR
#
# DEB_ARCH is amd64, arm64 or armhf; BINARY the matching static binary
# (make build-all); VERSION a Debian upstream version (starts with a digit).
# Prints the path of the .deb.
set -eu
[ $# -eq 4 ] || { echo "usage: $0 DEB_ARCH BINARY VERSION OUTDIR" >&2; exit 2; }
arch=$1 bin=$2 version=$3 out=$4
case "$arch" in amd64|arm64|armhf) ;; *) echo "package.sh: unsupported arch $arch" >&2; exit 2 ;; esac
case "$version" in [0-9]*) ;; *) echo "package.sh: version $version must start with a digit" >&2; exit 2 ;; esac
[ -f "$bin" ] || { echo "package.sh: no binary $bin (make build-all)" >&2; exit 1; }
# Paths given relative to the caller's directory stay valid after the cd.
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$(pwd)" "$1" ;; esac; }
bin=$(abs "$bin") out=$(abs "$out")
if [ -n "${MOONGATE_CONFIG_FILE:-}" ]; then MOONGATE_CONFIG_FILE=$(abs "$MOONGATE_CONFIG_FILE"); fi
cd "$(dirname "$0")/.."
go=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# MOONGATE_CONFIG_FILE (tests) ships another configuration.
if [ -n "${MOONGATE_CONFIG_FILE:-}" ]; then cp "$MOONGATE_CONFIG_FILE" "$tmp/config.yaml"; else deploy/config.sh >"$tmp/config.yaml"; fi
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat >"$tmp/changelog.Debian" <<CHANGELOG
moongate ($version-1) unstable; urgency=medium

  * Upstream build $version. See the repository history for changes.

 -- moongate maintainers <maintainers@moongate-edge.invalid>  $date
CHANGELOG
gzip -9n "$tmp/changelog.Debian"
mkdir -p "$out"
MOONGATE_DEB_ARCH=$arch MOONGATE_BIN=$bin MOONGATE_DEB_VERSION=$version \
  MOONGATE_CONFIG=$tmp/config.yaml MOONGATE_CHANGELOG=$tmp/changelog.Debian.gz \
  "$go" tool nfpm package -f deploy/nfpm.yaml -p deb -t "$out/moongate_${version}-1_${arch}.deb" >&2
echo "$out/moongate_${version}-1_${arch}.deb"

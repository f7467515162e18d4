#!/bin/sh
# install.sh: installs moongate on a Raspberry Pi (or any Linux with
# systemd) without the Debian package.
#
#   sudo deploy/install.sh                 install or upgrade (idempotent)
#   sudo deploy/install.sh --uninstall     remove binary and unit; keep
#                                          /etc/moongate and /var/lib/moongate
#   sudo deploy/install.sh --uninstall --purge   remove the config, the data
#                                          and the moongate user too
#
# Options:
#   --binary PATH  the moongate binary to install (default: the one for this
#                  machine in dist/, from `make build-all`, or
#                  moongate-linux-ARCH next to this script, e.g. when
#                  both were copied to the Pi together with the files
#                  this script uses beside it: moongate.service,
#                  config.sh and config.example.yaml, i.e. the deploy/
#                  directory)
#   --arch ARCH    armv6 | armv7 | arm64 | amd64 (default: detected)
#   --root DIR     install below DIR instead of / (also $DESTDIR): files,
#                  the user (in DIR/etc/passwd when it exists) and the
#                  enable symlink; nothing is started. Used by the tests.
#
# What it installs: /usr/local/bin/moongate, the unit
# /etc/systemd/system/moongate.service, the system user and group moongate,
# /etc/moongate/config.yaml (only when missing: yours is never overwritten),
# /etc/moongate/functions/ and /var/lib/moongate/. With systemd running it
# enables and (re)starts the service; otherwise it only enables it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root="${DESTDIR:-}"
binary=""
arch=""
action=install
purge=no

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --arch) [ $# -ge 2 ] || die "--arch needs a value"; arch=$2; shift 2 ;;
    --arch=*) arch=${1#*=}; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ "$purge" = no ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"
if [ -n "$root" ]; then
  [ -d "$root" ] || die "--root $root: not a directory"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo $0 ...), or use --root DIR"
fi

BIN=$root/usr/local/bin/moongate
UNIT=$root/etc/systemd/system/moongate.service
ETC=$root/etc/moongate
DATA=$root/var/lib/moongate
WANTS=$root/etc/systemd/system/multi-user.target.wants/moongate.service

# UNIT_MARKER is the first line of the unit install.sh writes: the Debian
# package's preinst looks for it (deploy/debian/preinst).
UNIT_MARKER="# Installed by deploy/install.sh: remove with install.sh --uninstall."

# package_installed: the moongate Debian package is installed (in the dpkg
# database of the target root). install.sh must then neither install over
# it nor remove its service, configuration, data or user (dpkg's stat
# override of config.yaml would break).
package_status() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  if [ -n "$root" ]; then set -- "--admindir=$root/var/lib/dpkg"; else set --; fi
  dpkg-query "$@" -W -f '${db:Status-Status}' moongate 2>/dev/null || true
}

package_installed() { [ "$(package_status)" = installed ]; }

# systemd is running (not a container or chroot, not a --root install).
systemd_up() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

# detect_arch prints armv6, armv7, arm64 or amd64 for this machine. The
# userland decides, not the kernel: 32-bit Raspberry Pi OS on a Pi 4 runs
# an aarch64 kernel with an armhf userland.
detect_arch() {
  if command -v dpkg >/dev/null 2>&1; then
    case "$(dpkg --print-architecture)" in
      amd64) echo amd64; return ;;
      arm64) echo arm64; return ;;
      armhf|armel)
        case "$(uname -m)" in armv6*) echo armv6 ;; *) echo armv7 ;; esac
        return ;;
    esac
  fi
  case "$(uname -m)" in
    x86_64|amd64) echo amd64 ;;
    aarch64|arm64)
      if [ "$(getconf LONG_BIT 2>/dev/null || echo 64)" = 32 ]; then echo armv7; else echo arm64; fi ;;
    armv7*|armv8*) echo armv7 ;;
    armv6*) echo armv6 ;;
    *) die "unsupported machine $(uname -m): use --arch and --binary" ;;
  esac
}

# user_ids prints "UID GID" of moongate in the target root, or nothing.
user_ids() {
  if [ -n "$root" ]; then
    [ -f "$root/etc/passwd" ] || return 0
    awk -F: '$1 == "moongate" { print $3, $4 }' "$root/etc/passwd"
  else
    id -u moongate >/dev/null 2>&1 && echo "$(id -u moongate) $(id -g moongate)"
  fi
  return 0
}

create_user() {
  if [ -n "$(user_ids)" ]; then return 0; fi
  if [ -n "$root" ] && [ ! -f "$root/etc/passwd" ]; then
    say "no $root/etc/passwd: skipping the moongate user"
    return 0
  fi
  set -- --system --user-group --home-dir /var/lib/moongate --no-create-home \
    --shell /usr/sbin/nologin --comment "moongate gateway"
  if [ -n "$root" ]; then
    useradd --prefix "$root" "$@" moongate
  else
    useradd "$@" moongate
  fi
  say "created system user moongate"
}

install_files() {
  for f in moongate.service config.sh config.example.yaml; do
    [ -f "$here/$f" ] || die "$here/$f is missing: copy the whole deploy/ directory with this script"
  done
  if [ -z "$binary" ]; then
    [ -n "$arch" ] || arch=$(detect_arch)
    for c in "$here/../dist/moongate-linux-$arch" "$here/moongate-linux-$arch"; do
      if [ -f "$c" ]; then binary=$c; break; fi
    done
    [ -n "$binary" ] || die "no moongate binary for $arch: run 'make build-all' or pass --binary PATH"
  fi
  [ -f "$binary" ] || die "--binary $binary: no such file"
  case $(package_status) in
    "" | not-installed) ;;
    installed) die "the moongate Debian package is installed: upgrade it with dpkg/apt instead" ;;
    *)
      # Removed but not purged (config-files): a later dpkg -P (or apt
      # autopurge) would delete /etc/moongate and /var/lib/moongate, which
      # this installation would be using.
      die "the moongate Debian package was removed but not purged (dpkg status $(package_status)): a later 'dpkg -P moongate' would delete $ETC and $DATA. Copy them aside, run 'dpkg -P moongate', put them back, then run this script again" ;;
  esac
  create_user
  ids=$(user_ids)

  install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$ETC" "$ETC/functions"
  # Install the binary atomically: a running daemon keeps its old inode.
  install -m 0755 "$binary" "$BIN.new"
  mv -f "$BIN.new" "$BIN"
  { echo "$UNIT_MARKER"; sed 's|/usr/bin/moongate|/usr/local/bin/moongate|g' "$here/moongate.service"; } >"$UNIT.new"
  chmod 0644 "$UNIT.new"
  mv -f "$UNIT.new" "$UNIT"
  if [ -e "$ETC/config.yaml" ]; then
    say "keeping $ETC/config.yaml"
    if ! "$here/config.sh" | cmp -s - "$ETC/config.yaml"; then
      "$here/config.sh" >"$ETC/config.yaml.dist"
      say "the configuration shipped with this version is $ETC/config.yaml.dist"
    fi
  else
    "$here/config.sh" >"$ETC/config.yaml.new"
    chmod 0640 "$ETC/config.yaml.new"
    mv -f "$ETC/config.yaml.new" "$ETC/config.yaml"
  fi
  install -d -m 0750 "$DATA"
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # "UID GID"
    set -- $ids
    chown "0:$2" "$ETC/config.yaml"
    chown "$1:$2" "$DATA"
  fi

  if [ -n "$root" ]; then
    systemctl --root="$root" enable moongate.service >/dev/null 2>&1 ||
      { install -d "$(dirname "$WANTS")" && ln -sf /etc/systemd/system/moongate.service "$WANTS"; }
  elif systemd_up; then
    systemctl daemon-reload
    systemctl enable moongate.service
    systemctl restart moongate.service
    say "started: systemctl status moongate; journalctl -u moongate"
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl enable moongate.service >/dev/null 2>&1 || say "could not enable moongate.service"
    say "systemd is not running here: start moongate yourself"
  fi
  say "installed $("$BIN" version 2>/dev/null || echo "$BIN")"
}

uninstall_files() {
  if package_installed; then
    die "moongate was installed by the Debian package: use dpkg -r moongate (keeps the configuration and data) or dpkg -P moongate (removes them)"
  fi
  if systemd_up; then
    systemctl disable --now moongate.service 2>/dev/null || true
  elif [ -n "$root" ]; then
    systemctl --root="$root" disable moongate.service >/dev/null 2>&1 || true
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl disable moongate.service >/dev/null 2>&1 || true
  fi
  rm -f "$WANTS" "$UNIT" "$BIN"
  if systemd_up; then systemctl daemon-reload; fi
  if [ "$purge" = yes ]; then
    rm -rf "$ETC" "$DATA"
    if [ -n "$(user_ids)" ]; then
      if [ -n "$root" ]; then userdel --prefix "$root" moongate; else userdel moongate; fi
    fi
    say "removed moongate, its configuration, its data and its user"
  else
    say "removed moongate; kept $ETC and $DATA (--purge removes them)"
  fi
}

case "$action" in
  install) install_files ;;
  uninstall) uninstall_files ;;
esac

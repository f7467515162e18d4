#!/bin/bash
# test-systemd.sh: the moongate Debian package and deploy/install.sh under a
# live systemd. Boots a Debian bookworm container (systemd-nspawn, private
# network: only its own loopback), installs the amd64 package with dpkg -i
# and checks what the unit promises against the running service: enabled
# and active after install, the moongate user, the state and configuration
# directories, the hardening and limits systemctl reports and the kernel
# applies, a restart after kill -9, the journal, a clean stop on SIGTERM, an
# MQTT event that becomes a record read back with `moongate data query`, the
# start at boot, an upgrade, dpkg -r (stopped, data kept), dpkg -P (purged),
# then install.sh and its --uninstall [--purge]. Stops at the first failed
# check, always removes the container, and prints a report.
#
#   sudo deploy/test-systemd.sh BINARY VERSION      (make test-systemd)
#
# BINARY is the linux/amd64 moongate binary, VERSION the Debian upstream
# version to package it as (the upgrade check packages it again as
# VERSION+upgrade). Needs root, systemd-nspawn (systemd-container),
# debootstrap and a Debian mirror the first time: the container's root
# filesystem is built once with debootstrap and cached in
# $MOONGATE_SYSD_CACHE (default /var/cache/moongate-sysd); each run boots a
# copy of it. DEBOOTSTRAP_MIRROR overrides debootstrap's default mirror.
# Not part of `make test`: root, the mirror, and about 20 s per run once the
# root filesystem is cached (debootstrap adds about a minute).
#
# On a host whose PID 1 is not systemd (this project's build machines),
# nspawn runs with --register=no --keep-unit in cgroups of its own, and in a
# private mount namespace with a tmpfs on /run/systemd/nspawn when /run is
# not a tmpfs. The container always gets the unified (v2) cgroup hierarchy,
# as on Raspberry Pi OS bookworm. Where the memory and pids controllers are
# not available to the container (a host that binds them to cgroup v1),
# MemoryMax= and TasksMax= are reported by systemctl but cannot be enforced:
# the report says so instead of passing those checks.
# Single quotes around $ are meant throughout (awk, dpkg-query formats, the
# launcher run by sh inside unshare).
# shellcheck disable=SC2016
set -euo pipefail

usage() { echo "usage: $0 BINARY VERSION" >&2; exit 2; }
[ $# -eq 2 ] || usage
bin=$(readlink -f "$1")
version=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MOONGATE_SYSD_CACHE:-/var/cache/moongate-sysd}
suite=bookworm
include=systemd,systemd-sysv,dbus,adduser,mosquitto-clients,curl
machine=moongate-sysd

die() { echo "test-systemd: $*" >&2; exit 1; }
say() { echo "test-systemd: $*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

[ "$(id -u)" -eq 0 ] || die "needs root (it boots a container and installs packages in it)"
[ -x "$bin" ] || die "no binary $1 (make build)"
case "$version" in [0-9]*) ;; *) die "version $version must start with a digit" ;; esac
[ "$(dpkg --print-architecture)" = amd64 ] || die "the check installs the amd64 package: needs an amd64 host"
for t in nsenter unshare flock pgrep; do command -v "$t" >/dev/null || die "needs $t"; done
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing systemd-container and debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >/dev/null
fi

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -n 9 || die "another test-systemd run holds $cache/lock"
rm -f "$cache/last-nspawn.log"
# Leftovers of a run that was killed (SIGKILL leaves no time to clean up):
# its copy of the root filesystem and its cgroups, once nothing runs there.
for d in "$cache"/run-*; do
  [ -d "$d" ] || continue
  old=${d##*/run-}
  busy=no
  [ -d "/proc/$old" ] && busy=yes
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -d "$h/moongate-sysd-$old" ]; then
      if [ -n "$(find "$h/moongate-sysd-$old" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]; then
        busy=yes
      else
        find "$h/moongate-sysd-$old" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      fi
    fi
  done
  if [ "$busy" = no ]; then
    say "removing $d, left by an interrupted run"
    rm -rf --one-file-system "$d"
  fi
done

# --- state the cleanup needs -------------------------------------------------
tmp=$(mktemp -d)
work="$cache/run-$$"
nspawn_pid=""
cpid=""
cgroups=()
bg_pids=()
passed=0
report=()
notes=()
result=FAILED

# A process entered with nsenter and still running when the container shuts
# down hangs the shutdown: systemd-shutdown SIGSTOPs every process, nsenter
# (outside the container) then stops itself too and never reaps its child,
# and the PID namespace waits for it. So end our background nsenters first.
stop_background() {
  local p
  for p in "${bg_pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    kill -CONT "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  bg_pids=()
}

stop_container() {
  stop_background
  [ -n "$nspawn_pid" ] || return 0
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn shuts the container down cleanly
    for _ in $(seq 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      echo "test-systemd: the container did not stop in 30 s: killing it" >&2
      kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
  fi
  wait "$nspawn_pid" 2>/dev/null || true
  nspawn_pid=""
  cpid=""
}

cleanup() {
  local rc=$?
  set +e
  stop_container
  if [ "$rc" -ne 0 ]; then
    cp "$tmp/nspawn.log" "$cache/last-nspawn.log" 2>/dev/null
    what=FAILED
    [ "$rc" -eq 130 ] && what=INTERRUPTED
    echo "test-systemd: $what after $passed passed checks (container removed; its console: $cache/last-nspawn.log)" >&2
  fi
  for cg in "${cgroups[@]}"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  if [ -n "$work" ] && [ -d "$work" ]; then rm -rf --one-file-system "$work"; fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the cached root filesystem ----------------------------------------------
stamp=$(printf '%s %s %s\n' "$suite" "$include" amd64 | sha256sum | cut -c1-12)
rootfs="$cache/$suite-$stamp"
if [ ! -d "$rootfs" ]; then
  say "building the $suite root filesystem once (debootstrap, minbase + $include)"
  rm -rf "$rootfs.tmp"
  t0=$(now_ms)
  # shellcheck disable=SC2086 # DEBOOTSTRAP_MIRROR is one word or none
  if ! debootstrap --variant=minbase --include="$include" --arch=amd64 "$suite" "$rootfs.tmp" ${DEBOOTSTRAP_MIRROR:-} >"$cache/debootstrap.log" 2>&1; then
    tail -n 20 "$cache/debootstrap.log" >&2
    die "debootstrap failed (log: $cache/debootstrap.log)"
  fi
  mv "$rootfs.tmp" "$rootfs"
  say "root filesystem built in $(( ($(now_ms) - t0) / 1000 )) s: $rootfs"
fi

# --- the packages -----------------------------------------------------------
v1=$version v2=$version+upgrade
mkdir -p "$tmp/dist"
deb1=$(GO=${GO:-go} sh "$repo/deploy/package.sh" amd64 "$bin" "$v1" "$tmp/dist" 2>"$tmp/package.log" | tail -n 1) || { cat "$tmp/package.log" >&2; die "package.sh failed"; }
deb2=$(GO=${GO:-go} sh "$repo/deploy/package.sh" amd64 "$bin" "$v2" "$tmp/dist" 2>>"$tmp/package.log" | tail -n 1) || { cat "$tmp/package.log" >&2; die "package.sh failed"; }
deb1=/mnt/dist/$(basename "$deb1") deb2=/mnt/dist/$(basename "$deb2")
mkdir -p "$tmp/src"
cp "$bin" "$tmp/src/moongate"
cp -r "$repo/deploy" "$tmp/src/deploy"

# --- the container ----------------------------------------------------------
say "copying the root filesystem to $work"
cp -a "$rootfs" "$work"
echo "$machine" >"$work/etc/hostname"

# nspawn's own seccomp filter denies the @clock calls to a container without
# CAP_SYS_TIME; a Pi has no such filter above the unit's. Allowing adjtimex
# (read-only for the unprivileged service) leaves the unit's filter as what
# the clock check tests.
nspawn_args=(-D "$work" --boot --machine="$machine" --private-network
  --system-call-filter=adjtimex
  --bind-ro="$tmp/dist:/mnt/dist" --bind-ro="$repo/docs/examples/functions:/mnt/functions"
  --bind-ro="$tmp/src:/mnt/src")
launcher='set -e
for cg in $MG_CGROUPS; do echo $$ >"$cg/cgroup.procs"; done
if [ -n "$MG_RUN_TMPFS" ]; then mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn; fi
exec systemd-nspawn "$@"'
run_tmpfs=""
if [ -d /run/systemd/system ]; then
  systemd_host=yes
else
  # No systemd as PID 1: no machined or system bus to register with, and no
  # unit of our own; nspawn then splits the cgroup it runs in into payload/
  # and supervisor/, so give it cgroups of its own (removed afterwards).
  systemd_host=no
  nspawn_args+=(--register=no --keep-unit)
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -f "$h/cgroup.procs" ]; then
      mkdir "$h/moongate-sysd-$$"
      cgroups+=("$h/moongate-sysd-$$")
    fi
  done
  # nspawn refuses to clean up /run/systemd/nspawn/propagate when it is on
  # a disk file system.
  if [ "$(stat -f -c %T /run)" != tmpfs ]; then
    mkdir -p /run/systemd/nspawn
    run_tmpfs=yes
  fi
fi

boot() {
  local t0
  t0=$(now_ms)
  MG_CGROUPS="${cgroups[*]}" MG_RUN_TMPFS=$run_tmpfs SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 \
    unshare --mount --propagation private sh -c "$launcher" sh "${nspawn_args[@]}" >>"$tmp/nspawn.log" 2>&1 </dev/null &
  nspawn_pid=$!
  cpid=""
  for _ in $(seq 300); do
    kill -0 "$nspawn_pid" 2>/dev/null || { tail -n 30 "$tmp/nspawn.log" >&2; die "systemd-nspawn exited"; }
    for p in $(pgrep -P "$nspawn_pid" || true); do
      if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ]; then cpid=$p; fi
    done
    [ -n "$cpid" ] && break
    sleep 0.1
  done
  [ -n "$cpid" ] || { tail -n 30 "$tmp/nspawn.log" >&2; die "no systemd in the container after 30 s"; }
  # Until systemd's private socket is up, systemctl cannot connect at all.
  local state=""
  for _ in $(seq 300); do
    state=$(timeout 120 nsenter --target "$cpid" --all systemctl is-system-running --wait 2>&1 || true)
    case "$state" in *"Failed to connect"*) sleep 0.1 ;; *) break ;; esac
  done
  if [ "$state" != running ]; then
    C systemctl --failed --no-pager >&2 || true
    tail -n 30 "$tmp/nspawn.log" >&2
    die "the container's systemd is '$state', not 'running'"
  fi
  boot_ms=$(( $(now_ms) - t0 ))
}

# C runs a command inside the container, as root, with a clean environment.
C() {
  nsenter --target "$cpid" --all env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

diagnose() {
  [ -n "$cpid" ] || return 0
  echo "--- systemctl status moongate" >&2
  C systemctl status moongate --no-pager -l >&2 2>&1 || true
  echo "--- journalctl -u moongate (last 40)" >&2
  C journalctl -u moongate --no-pager -n 40 >&2 2>&1 || true
}

fail() { echo "test-systemd: FAIL: $*" >&2; diagnose; exit 1; }
ok() { passed=$((passed + 1)); echo "  ok  $*"; }

# check DESCRIPTION COMMAND...: the command must succeed.
check() {
  local what=$1
  shift
  "$@" >/dev/null 2>&1 || fail "$what"
  ok "$what"
}

# expect DESCRIPTION GOT WANT
expect() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  ok "$1 = $3"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls the command every 100 ms.
wait_for() {
  local secs=$1 what=$2 deadline=$(( $(now_ms) + $1 * 1000 ))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -lt "$deadline" ] || fail "timed out after $secs s waiting for: $what"
    sleep 0.1
  done
}

prop() { C systemctl show moongate -p "$1" --value; }
main_pid() { prop MainPID; }
ready() { C curl -sf --max-time 2 "http://$api/readyz"; }
new_ready_pid() { local p; p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$1" ] && ready; }
fails() { ! "$@"; }
# journal_has TEXT: a line the service's own process (uid moongate) logged.
journal_has() { C journalctl _SYSTEMD_UNIT=moongate.service _UID="$uid" --no-pager -o cat | grep -qF -- "$1"; }
# journal_prio PRIO TEXT: a line of the service's process at exactly that
# syslog priority (the daemon prefixes each line with "<N>" when its stderr
# is the journal; journald strips the prefix and keeps the priority).
journal_prio() { C journalctl _SYSTEMD_UNIT=moongate.service _UID="$uid" -p "$1..$1" --no-pager -o cat | grep -F -- "$2" | grep -qv '^<'; }
# systemd_logged TEXT: a line systemd logged about the unit.
systemd_logged() { C journalctl -u moongate --no-pager -o cat | grep -qF -- "$1"; }

# to_bytes 160M -> 167772160 (systemd's suffixes are powers of 1024).
to_bytes() {
  local v=$1 n m=1
  case "$v" in
    *K) m=1024 ;; *M) m=$((1024 * 1024)) ;; *G) m=$((1024 * 1024 * 1024)) ;; *T) m=$((1024 * 1024 * 1024 * 1024)) ;;
  esac
  n=${v%[KMGT]}
  echo $(( n * m ))
}
unit_value() { sed -n "s/^$1=//p" "$repo/deploy/moongate.service" | tail -n 1; }

records() { C env MOONGATE_TOKEN="$token" moongate data query --server "http://$api" --stream reference --json; }
record_count() { records | grep -o '"stream":"reference"' | wc -l; }
has_records() { [ "$(record_count)" -eq "$1" ]; }

# --- boot --------------------------------------------------------------------
say "booting $suite in systemd-nspawn (unified cgroup hierarchy, private network)"
boot
sd_version=$(C systemctl --version | head -n 1)
report+=("container: Debian $suite, $sd_version, booted to 'running' in ${boot_ms} ms")
controllers=$(C cat /sys/fs/cgroup/cgroup.controllers)
report+=("container cgroup v2 controllers: '${controllers}'")

# --- install -----------------------------------------------------------------
say "dpkg -i $(basename "$deb1")"
t0=$(now_ms)
C dpkg -i "$deb1" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i $deb1"; }
api=$(C awk '/^api:/ { a = 1; next } /^[^ #]/ { a = 0 } a && $1 == "listen:" { print $2; exit }' /etc/moongate/config.yaml)
mqtt=$(C awk '/^mqtt:/ { m = 1; next } /^[^ #]/ { m = 0 } m && $1 == "listen:" { print $2; exit }' /etc/moongate/config.yaml)
if [ -z "$api" ] || [ -z "$mqtt" ]; then fail "no api.listen / mqtt.embedded.listen in /etc/moongate/config.yaml"; fi
wait_for 20 "/readyz on $api after dpkg -i" ready
install_ms=$(( $(now_ms) - t0 ))
ok "dpkg -i: /readyz on $api answers ${install_ms} ms after dpkg -i started"
report+=("dpkg -i -> /readyz 200: ${install_ms} ms")
expect "is-enabled after install" "$(C systemctl is-enabled moongate)" enabled
expect "is-active after install" "$(C systemctl is-active moongate)" active
uid=$(C id -u moongate)
gid=$(C id -g moongate)
expect "moongate user is a system user (uid < 1000)" "$([ "$uid" -lt 1000 ] && echo yes)" yes

# --- what systemctl reports --------------------------------------------------
say "systemctl show"
props=(User Group Type Restart RestartUSec KillSignal TimeoutStopUSec ProtectSystem ProtectHome PrivateTmp
  PrivateDevices NoNewPrivileges CapabilityBoundingSet AmbientCapabilities RestrictNamespaces
  SystemCallArchitectures MemoryDenyWriteExecute MemoryHigh MemoryMax MemorySwapMax TasksMax LimitNOFILE
  Environment StateDirectory StateDirectoryMode ConfigurationDirectory ConfigurationDirectoryMode
  WorkingDirectory UMask ReadOnlyPaths ExecStart)
pargs=()
for p in "${props[@]}"; do pargs+=(-p "$p"); done
show=$(C systemctl show moongate "${pargs[@]}")
sp() { printf '%s\n' "$show" | sed -n "s/^$1=//p"; }
expect "User" "$(sp User)" moongate
expect "Group" "$(sp Group)" moongate
expect "Type" "$(sp Type)" exec
expect "Restart" "$(sp Restart)" on-failure
expect "RestartUSec" "$(sp RestartUSec)" "$(unit_value RestartSec)"
expect "KillSignal" "$(sp KillSignal)" 15
expect "ProtectSystem" "$(sp ProtectSystem)" strict
expect "ProtectHome" "$(sp ProtectHome)" yes
expect "PrivateTmp" "$(sp PrivateTmp)" yes
expect "PrivateDevices" "$(sp PrivateDevices)" yes
expect "NoNewPrivileges" "$(sp NoNewPrivileges)" yes
expect "CapabilityBoundingSet" "$(sp CapabilityBoundingSet)" ""
expect "AmbientCapabilities" "$(sp AmbientCapabilities)" ""
expect "SystemCallArchitectures" "$(sp SystemCallArchitectures)" native
expect "MemoryDenyWriteExecute" "$(sp MemoryDenyWriteExecute)" yes
memmax=$(to_bytes "$(unit_value MemoryMax)")
memhigh=$(to_bytes "$(unit_value MemoryHigh)")
expect "MemoryMax (unit: $(unit_value MemoryMax))" "$(sp MemoryMax)" "$memmax"
expect "MemoryHigh (unit: $(unit_value MemoryHigh))" "$(sp MemoryHigh)" "$memhigh"
expect "MemorySwapMax" "$(sp MemorySwapMax)" 0
expect "TasksMax" "$(sp TasksMax)" "$(unit_value TasksMax)"
expect "LimitNOFILE" "$(sp LimitNOFILE)" "$(unit_value LimitNOFILE)"
expect "Environment" "$(sp Environment)" "$(unit_value Environment)"
expect "StateDirectory" "$(sp StateDirectory)" moongate
expect "StateDirectoryMode" "$(sp StateDirectoryMode)" 0750
expect "ConfigurationDirectory" "$(sp ConfigurationDirectory)" moongate
expect "ConfigurationDirectoryMode" "$(sp ConfigurationDirectoryMode)" 0755
expect "WorkingDirectory" "$(sp WorkingDirectory)" /var/lib/moongate
expect "UMask" "$(sp UMask)" 0027
expect "ReadOnlyPaths" "$(sp ReadOnlyPaths)" /etc/moongate
report+=("systemctl show moongate:")
for p in User Type Restart RestartUSec ProtectSystem ProtectHome PrivateTmp NoNewPrivileges CapabilityBoundingSet \
  MemoryHigh MemoryMax MemorySwapMax TasksMax Environment StateDirectory StateDirectoryMode \
  ConfigurationDirectory ConfigurationDirectoryMode ReadOnlyPaths; do
  report+=("  $p=$(sp "$p")")
done

# --- what the kernel applies to the running process ---------------------------
say "the running service"
pid=$(main_pid)
status=$(C cat "/proc/$pid/status")
st() { printf '%s\n' "$status" | awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }'; }
expect "main process uids (real effective saved fs)" "$(st Uid)" "$uid $uid $uid $uid"
expect "main process gids" "$(st Gid)" "$gid $gid $gid $gid"
expect "NoNewPrivs of the main process" "$(st NoNewPrivs)" 1
expect "Seccomp mode of the main process (2 = filter)" "$(st Seccomp)" 2
expect "CapEff of the main process" "$(st CapEff)" 0000000000000000
expect "CapBnd of the main process" "$(st CapBnd)" 0000000000000000
# ProtectSystem=strict: in the service's mount namespace /usr and /etc are
# read-only even for root; the StateDirectory is writable for moongate;
# ProtectHome: /home is inaccessible to moongate.
inns() { C nsenter --target "$pid" --mount "$@"; }
asuser() { inns setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
check "/usr is read-only in the service's namespace (even for root)" fails inns touch /usr/.mg-probe
check "/etc is read-only in the service's namespace (even for root)" fails inns touch /etc/moongate/.mg-probe
check "/var/lib/moongate is writable for moongate in the service's namespace" asuser sh -c 'touch /var/lib/moongate/.mg-probe && rm /var/lib/moongate/.mg-probe'
check "/home is inaccessible to moongate in the service's namespace" fails asuser ls /home/
expect "/var/lib/moongate owner and mode" "$(C stat -c '%U:%G %a' /var/lib/moongate)" "moongate:moongate 750"
expect "/etc/moongate owner and mode" "$(C stat -c '%U:%G %a' /etc/moongate)" "root:root 755"
expect "/etc/moongate/config.yaml owner and mode" "$(C stat -c '%U:%G %a' /etc/moongate/config.yaml)" "root:moongate 640"
expect "/etc/moongate/functions owner and mode" "$(C stat -c '%U:%G %a' /etc/moongate/functions)" "root:root 755"
expect "store files owned by moongate" "$(C find /var/lib/moongate -mindepth 1 ! -user moongate | wc -l)" 0
cg=$(prop ControlGroup)
if C test -f "/sys/fs/cgroup$cg/memory.max"; then
  expect "memory.max the kernel enforces" "$(C cat "/sys/fs/cgroup$cg/memory.max")" "$memmax"
  expect "memory.high the kernel enforces" "$(C cat "/sys/fs/cgroup$cg/memory.high")" "$memhigh"
else
  notes+=("NOT CHECKED: MemoryMax/MemoryHigh enforcement: no memory controller in the container (cgroup.controllers: '$controllers'); systemctl reports the values, the kernel does not apply them here")
fi
if C test -f "/sys/fs/cgroup$cg/pids.max"; then
  expect "pids.max the kernel enforces" "$(C cat "/sys/fs/cgroup$cg/pids.max")" "$(unit_value TasksMax)"
else
  notes+=("NOT CHECKED: TasksMax enforcement: no pids controller in the container")
fi
exposure=$(C systemd-analyze security moongate.service --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for moongate.service: //p')
report+=("systemd-analyze security: overall exposure ${exposure:-unknown}")

# --- journald ----------------------------------------------------------------
check "journald has the service's lines, logged as uid $uid: gateway ready" journal_has 'msg="gateway ready"'
check "journald: api listening on $api" journal_has "msg=\"api listening\" addr=$api"
# The clock probe (adjtimex, read-only) is allowed by the unit's seccomp
# filter: the daemon reports the clock as synchronized or not, never as
# unknown (ProtectClock= and ~@privileged had denied it).
check "journald: the clock's synchronization status was read (adjtimex allowed)" journal_has 'msg="system clock'
check "journald: the clock probe was not refused" fails journal_has 'clock synchronization status unknown'
check "journald: info lines at priority info (6), prefix stripped" journal_prio 6 'msg="gateway ready"'
check "journald: no info line at priority warning or above" fails journal_prio 4 'msg="gateway ready"'

# --- a function, a token, an MQTT event, a record ----------------------------
say "MQTT event -> function -> record -> moongate data query"
C cp /mnt/functions/reference.lua /mnt/functions/reference.yaml /etc/moongate/functions/
wait_for 10 "the reference function to be deployed from /etc/moongate/functions" journal_has 'msg="function deployed" function=reference'
ok "functions_dir: reference.lua + reference.yaml picked up by the running service"
# An error line: a function whose source does not compile.
C sh -c 'printf "function handle(\n" >/etc/moongate/functions/broken.lua && cp /etc/moongate/functions/reference.yaml /etc/moongate/functions/broken.yaml'
wait_for 10 "journald: the compile error of broken.lua at priority err (3)" journal_prio 3 'compile broken:1:0: syntax error'
ok "journald: an error line (broken.lua refused) at priority err (3), prefix stripped"
C rm /etc/moongate/functions/broken.lua /etc/moongate/functions/broken.yaml
tokout=$(C moongate token create systemd-test --scope read 2>/dev/null)
token=$(printf '%s\n' "$tokout" | sed -n 1p)
tokline=$(printf '%s\n' "$tokout" | sed -n 2p)
[ "$(C grep -cx '  tokens: \[\]' /etc/moongate/config.yaml)" = 1 ] || fail "/etc/moongate/config.yaml has no single line '  tokens: []' to add the token under"
C sed -i "s|^  tokens: \[\]\$|  tokens:\n$tokline|" /etc/moongate/config.yaml
check "moongate check-config accepts the edited configuration" C moongate check-config /etc/moongate/config.yaml
pid=$(main_pid)
t0=$(now_ms)
C systemctl restart moongate
wait_for 20 "/readyz after systemctl restart" new_ready_pid "$pid"
restart_ms=$(( $(now_ms) - t0 ))
ok "systemctl restart: a new main PID answers /readyz after ${restart_ms} ms"
report+=("systemctl restart -> /readyz 200: ${restart_ms} ms")
host=${mqtt%:*} port=${mqtt##*:}
# The function publishes the fan command with QoS 0, delivered only to a
# subscriber connected at that moment: subscribe first (-d prints the
# SUBACK), publish once the broker has acknowledged the subscription.
C sh -c "stdbuf -oL mosquitto_sub -h $host -p $port -i systemd-test-sub -q 1 -t devices/pi-1/cmd -v -d -C 1 -W 20 >/tmp/sub.log 2>&1" &
sub_pid=$!
bg_pids+=("$sub_pid")
wait_for 10 "mosquitto_sub's subscription (SUBACK)" C grep -q SUBACK /tmp/sub.log
ok "mosquitto_sub: subscribed to devices/pi-1/cmd"
check "mosquitto_pub: {\"temp\": 85} to devices/pi-1/telemetry (QoS 1)" \
  C mosquitto_pub -h "$host" -p "$port" -i systemd-test-pub -q 1 -t devices/pi-1/telemetry -m '{"temp": 85}'
check "mosquitto_pub: {\"temp\": 21.5} to devices/pi-1/telemetry (QoS 1)" \
  C mosquitto_pub -h "$host" -p "$port" -i systemd-test-pub -q 1 -t devices/pi-1/telemetry -m '{"temp": 21.5}'
wait "$sub_pid" || true
bg_pids=()
cmd=$(C grep '^devices/pi-1/cmd ' /tmp/sub.log || true)
expect "the function's command to the device (mosquitto_sub)" "$cmd" 'devices/pi-1/cmd {"fan":"on"}'
wait_for 10 "two records in stream reference" has_records 2
out=$(records)
check "moongate data query: {\"temp\":21.5,\"temp_f\":70.7} from device pi-1" grep -q '"device":"pi-1".*"data":{"temp":21.5,"temp_f":70.7}' <<<"$out"
check "moongate data query: the record of {\"temp\": 85} has temp_f 185" grep -qE '"data":\{"temp":85,"temp_f":185(\.0*[0-9]*)?\}' <<<"$out"
report+=("MQTT: 2 events published with mosquitto_pub -> 2 records via 'moongate data query', {\"fan\":\"on\"} received")

# --- kill -9 -> restart --------------------------------------------------------
say "kill -9 of the main process"
pid=$(main_pid)
t0=$(now_ms)
C sh -c "kill -9 $pid"
wait_for 30 "a restarted moongate (new main PID) answering /readyz" new_ready_pid "$pid"
kill_ms=$(( $(now_ms) - t0 ))
newpid=$(main_pid)
ok "kill -9 $pid: systemd restarted it as $newpid, /readyz answers after ${kill_ms} ms (RestartSec=$(unit_value RestartSec))"
expect "NRestarts" "$(prop NRestarts)" 1
check "journald: systemd logged the SIGKILL" systemd_logged 'Main process exited, code=killed, status=9/KILL'
check "the records survived the kill (2 in stream reference)" has_records 2
report+=("kill -9 main PID -> new PID answering /readyz: ${kill_ms} ms (RestartSec=$(unit_value RestartSec))")

# --- clean stop --------------------------------------------------------------
say "systemctl stop"
t0=$(now_ms)
C systemctl stop moongate
stop_ms=$(( $(now_ms) - t0 ))
expect "ActiveState after stop" "$(prop ActiveState)" inactive
expect "Result after stop" "$(prop Result)" success
expect "ExecMainCode after stop (1 = exited, not killed)" "$(prop ExecMainCode)" 1
expect "ExecMainStatus after stop" "$(prop ExecMainStatus)" 0
check "journald: gateway stopped" journal_has 'msg="gateway stopped"'
ok "systemctl stop returned after ${stop_ms} ms (SIGTERM, exit 0)"
report+=("systemctl stop: ${stop_ms} ms, ExecMainStatus=0, Result=success")

# --- a configuration error: an unprefixed line, recorded as an error ------------
say "a configuration error"
C cp /etc/moongate/config.yaml /root/config.yaml.good
C sh -c 'echo "no_such_key: 1" >>/etc/moongate/config.yaml'
C systemctl start moongate || true
wait_for 10 "journald: the configuration error at priority err (3) (SyslogLevel=err)" journal_prio 3 'no_such_key'
ok "journald: a configuration error, written before the logger exists, is recorded at priority err"
C systemctl stop moongate || true
C cp /root/config.yaml.good /etc/moongate/config.yaml
C systemctl reset-failed moongate || true

# --- boot: enabled means started -----------------------------------------------
say "rebooting the container"
kill -TERM "$nspawn_pid" # nspawn asks the container's systemd to power off
for _ in $(seq 600); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$nspawn_pid" 2>/dev/null; then fail "the container did not power off in 60 s"; fi
nspawn_rc=0
wait "$nspawn_pid" || nspawn_rc=$?
nspawn_pid=""
expect "systemd-nspawn's exit status after the container powered off" "$nspawn_rc" 0
boot
wait_for 20 "/readyz after boot" ready
ok "started at boot (WantedBy=multi-user.target): /readyz answers, container up in ${boot_ms} ms"
check "the records survived the reboot (2 in stream reference)" has_records 2

# --- upgrade -------------------------------------------------------------------
say "upgrade: dpkg -i $(basename "$deb2")"
pid=$(main_pid)
C dpkg -i "$deb2" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i $deb2"; }
expect "version after upgrade" "$(C dpkg-query -W -f '${Version}' moongate)" "$v2-1"
wait_for 20 "the upgraded service (new main PID) answering /readyz" new_ready_pid "$pid"
ok "upgrade restarted the service (PID $pid -> $(main_pid))"
check "the edited configuration survived the upgrade (the token still works)" has_records 2

# --- dpkg -r: stopped, not started again, data kept ------------------------------
say "dpkg -r moongate"
C dpkg -r moongate >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -r"; }
expect "is-active after dpkg -r" "$(C systemctl is-active moongate || true)" inactive
expect "is-enabled after dpkg -r (deb-systemd-helper masks a removed unit)" "$(C systemctl is-enabled moongate || true)" masked
check "nothing answers on $api after dpkg -r" fails ready
check "dpkg -r removed /usr/bin/moongate and the unit" C sh -c '! test -e /usr/bin/moongate && ! test -e /lib/systemd/system/moongate.service'
check "dpkg -r kept /var/lib/moongate" C test -f /var/lib/moongate/MANIFEST
check "dpkg -r kept /etc/moongate/config.yaml (with the token)" C grep -qF 'name: "systemd-test"' /etc/moongate/config.yaml
expect "package state after dpkg -r" "$(C dpkg-query -W -f '${db:Status-Status}' moongate)" config-files

say "dpkg -i after dpkg -r"
C dpkg -i "$deb2" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i $deb2 after dpkg -r"; }
expect "is-enabled after reinstalling" "$(C systemctl is-enabled moongate)" enabled
wait_for 20 "/readyz after reinstalling" ready
check "the records kept by dpkg -r are served again (2)" has_records 2

# --- dpkg -P: purged -------------------------------------------------------------
say "dpkg -P moongate"
C rm /etc/moongate/functions/reference.lua /etc/moongate/functions/reference.yaml
C dpkg -P moongate >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -P"; }
expect "is-active after dpkg -P" "$(C systemctl is-active moongate || true)" inactive
expect "LoadState after dpkg -P" "$(prop LoadState)" not-found
check "dpkg -P removed /var/lib/moongate and /etc/moongate" C sh -c '! test -e /var/lib/moongate && ! test -e /etc/moongate'
expect "unit links left in /etc/systemd/system" "$(C find /etc/systemd/system -name 'moongate*' | wc -l)" 0
expect "deb-systemd-helper state left" "$(C find /var/lib/systemd -name 'moongate*' | wc -l)" 0
expect "dpkg-statoverride entries left" "$(C dpkg-statoverride --list | grep -c moongate || true)" 0
check "the moongate system user is kept (Debian keeps system users)" C id moongate

# --- install.sh under systemd ------------------------------------------------------
say "deploy/install.sh"
C /mnt/src/deploy/install.sh --binary /mnt/src/moongate >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "install.sh"; }
wait_for 20 "/readyz after install.sh" ready
expect "install.sh: is-enabled" "$(C systemctl is-enabled moongate)" enabled
expect "install.sh: unit path" "$(prop FragmentPath)" /etc/systemd/system/moongate.service
expect "install.sh: ExecStart binary" "$(prop ExecStart | sed -n 's/.*path=\([^ ;]*\).*/\1/p')" /usr/local/bin/moongate
pid=$(main_pid)
expect "install.sh: main process user" "$(C stat -c %U "/proc/$pid")" moongate
C /mnt/src/deploy/install.sh --binary /mnt/src/moongate >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "install.sh (second run)"; }
wait_for 20 "/readyz after install.sh ran again" new_ready_pid "$pid"
ok "install.sh again (idempotent): restarted, /readyz answers"
C /mnt/src/deploy/install.sh --uninstall >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "install.sh --uninstall"; }
expect "install.sh --uninstall: is-active" "$(C systemctl is-active moongate || true)" inactive
check "install.sh --uninstall kept /var/lib/moongate and /etc/moongate/config.yaml" C test -f /var/lib/moongate/MANIFEST -a -f /etc/moongate/config.yaml
C /mnt/src/deploy/install.sh --uninstall --purge >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "install.sh --uninstall --purge"; }
check "install.sh --uninstall --purge removed the data, the configuration and the unit" \
  C sh -c '! test -e /var/lib/moongate && ! test -e /etc/moongate && ! test -e /etc/systemd/system/moongate.service && ! test -e /usr/local/bin/moongate'
expect "install.sh --uninstall --purge: LoadState" "$(prop LoadState)" not-found

# --- done ----------------------------------------------------------------------
stop_container
result=PASSED
echo
echo "== moongate under a live systemd: $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(uname -r), systemd host: $systemd_host"
for l in "${report[@]}"; do echo "$l"; done
for l in "${notes[@]}"; do echo "$l"; done
echo "$passed passed, 0 failed, ${#notes[@]} not checkable here: $result"

#!/usr/bin/env bash
# clustersync benchmark suite: clustersync vs `rsync -a` (over ssh and local) on generated trees.
#
#   bench/run.sh [SCENARIO...]     default: all
#
# Scenarios (bench/README.md says what each measures and how):
#   initial  oneshot  small  delta  delta1  live  delete  fanout  mesh  churn  wan  scale  profile
#   (all = every one but profile). Each runs alone; the two-node ones (initial..delete) share one
#   cluster and run the initial sync first when it has not run yet.
#
# Runs as root on Debian: installs rsync, openssh, python3, iproute2, inotify-tools, zstd and
# linux-perf when missing, starts private sshds on free ports (system sshd untouched), mounts a
# tmpfs per scenario under $BENCH_TMPDIR (BENCH_FS=disk: plain directories instead), creates
# network namespaces for `wan`. Everything is removed at exit; logs, perf data and
# results.jsonl stay in $BENCH_LOG_DIR/<UTC time>/.
#
# Knobs (environment):
#   CLUSTERSYNC_BIN=path     benchmark this binary (default: cargo build --release here)
#   BENCH_BIN_DIR=/work/bench-bin  where the measured binary is copied, as clustersync-<sha>
#   BENCH_TMPDIR=/tmp  BENCH_LOG_DIR=/tmp/bench-logs  BENCH_FS=tmpfs|disk  BENCH_KEEP=0
#   BENCH_FILES=20000 BENCH_DIRS=200 BENCH_MEDIUM=20 (x 5 MiB) BENCH_BIG_MIB=256 BENCH_RUNS=3
#   BENCH_LIVE_EVENTS=200 BENCH_LIVE_GAP_MS=50 BENCH_DELETE_EVENTS=100 BENCH_DELETE_GAP_MS=100
#   BENCH_SCALE_FILES=1000000 BENCH_SCALE_DIRS=10000
#   BENCH_FANOUT_NODES=10 BENCH_FANOUT_FILES=1000
#   BENCH_MESH_NODES=30 BENCH_MESH_SIZES=20000,4096 BENCH_MESH_RUNS=3
#   BENCH_CHURN_NODES=5,10 BENCH_CHURN_RATE=100 BENCH_CHURN_SECS=60 BENCH_CHURN_SIZE=4096
#   BENCH_WAN_MIB=100 BENCH_WAN_RTT_MS=50 BENCH_WAN_RATE=100mbit BENCH_BWLIMIT=2MiB/s BENCH_BWLIMIT_MIB=24
#   BENCH_TIMEOUT=900 (s, any convergence wait)  BENCH_DAEMON_LOG=info (CLUSTERSYNC_LOG of daemons)
#   BENCH_DROP_CACHES=1 (at the start, as root: sync, drop page/dentry/inode caches, compact memory)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
say() { printf '%s\n' "$*" >&2; }
die() { say "bench: ERROR: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (packages, private sshd, tmpfs mounts, network namespaces)"

need=()
command -v rsync >/dev/null || need+=(rsync)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v python3 >/dev/null || need+=(python3)
command -v ss >/dev/null && command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
command -v inotifywait >/dev/null || need+=(inotify-tools)
command -v zstd >/dev/null || need+=(zstd)
command -v cmp >/dev/null || need+=(diffutils)
command -v top >/dev/null || need+=(procps)
command -v perf >/dev/null || need+=(linux-perf)
if ((${#need[@]})); then
    say "bench: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    made_policy=0   # keep the package's postinst from starting the system sshd
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    rc=0
    timeout 900 apt-get update -q >/dev/null || rc=$?
    ((rc == 0)) && { timeout 900 apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null || rc=$?; }
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || say "bench: WARNING: apt-get failed (status $rc) for ${need[*]}; scenarios needing them fail"
fi

SHA=$(git -C "$REPO" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || SHA=$SHA-dirty
if [[ -n ${CLUSTERSYNC_BIN:-} ]]; then
    BIN=$CLUSTERSYNC_BIN
    [[ -n ${BENCH_GIT_SHA:-} ]] && SHA=$BENCH_GIT_SHA || SHA="given-binary"
else
    command -v cargo >/dev/null || die "cargo not found (Rust >= 1.85), or set CLUSTERSYNC_BIN"
    say "bench: cargo build --release"
    (cd "$REPO" && cargo build --release 2>&1 | tail -n 3 >&2) || die "cargo build --release failed"
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/clustersync
fi
[[ -x $BIN ]] || die "no binary at $BIN"
# a stable copy: a rebuild during the run must not change what is measured
BIN_DIR=${BENCH_BIN_DIR:-/work/bench-bin}
mkdir -p "$BIN_DIR"
if [[ $BIN != "$BIN_DIR"/* ]]; then
    cp "$BIN" "$BIN_DIR/clustersync-$SHA.tmp" && mv "$BIN_DIR/clustersync-$SHA.tmp" "$BIN_DIR/clustersync-$SHA"
    BIN=$BIN_DIR/clustersync-$SHA
fi
export CLUSTERSYNC_BIN=$BIN BENCH_GIT_SHA=$SHA
exec python3 "$HERE/bench.py" "$@"

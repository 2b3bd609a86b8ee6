#!/usr/bin/env bash
# clustersync vs `rsync -a` over ssh, on one generated tree, in one run.
#
# Scenarios (see bench/README.md):
#   1. initial sync of the tree to an empty node
#   2. resync with nothing changed
#   3. a 1 MiB edit at offset 100 MiB inside a 256 MiB file
#   4. (optional, BENCH_100K=1) no-change resync with the tree grown to 100,000 files
#
# Runs as root on Debian; installs rsync/openssh/python3/iproute2 when missing, starts a
# private sshd on a free 127.0.0.1 port (system sshd config untouched), builds clustersync
# with `cargo build --release`. Everything lives under one temp dir removed on exit; daemon
# and sshd logs are copied to /tmp/bench-logs/<run>/ first.
#
# Environment knobs:
#   BENCH_FILES=20000      number of small files (1-16 KiB)
#   BENCH_DIRS=200         number of directories they are spread over
#   BENCH_BIG_MIB=256      size of the big file
#   BENCH_100K=0           1: also run scenario 4 (does not converge at present, see README)
#   BENCH_DAEMON_LOG=clustersync=debug,info   CLUSTERSYNC_LOG filter for the daemons
#   BENCH_TOTAL_100K=100000  file count for scenario 4
#   BENCH_TMPDIR=/tmp      where the temp dir is created
#   BENCH_LOG_DIR=/tmp/bench-logs
#   CLUSTERSYNC_BIN=...    use this binary instead of building
#   BENCH_TIMEOUT=900      seconds allowed for the initial-sync convergence wait
#   BENCH_TIMEOUT_100K=300 seconds allowed for scenario 4's restart to converge
set -euo pipefail
{ # whole script in one block: parsed before it runs, so editing it mid-run is harmless

NFILES=${BENCH_FILES:-20000}
NDIRS=${BENCH_DIRS:-200}
BIG_MIB=${BENCH_BIG_MIB:-256}
RUN_100K=${BENCH_100K:-0}
TOTAL_100K=${BENCH_TOTAL_100K:-100000}
TIMEOUT=${BENCH_TIMEOUT:-900}
TIMEOUT_100K=${BENCH_TIMEOUT_100K:-300}
LOG_ROOT=${BENCH_LOG_DIR:-/tmp/bench-logs}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: ERROR: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts a private sshd)"

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v rsync >/dev/null || need_pkgs+=(rsync)
[[ -x /usr/sbin/sshd ]] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need_pkgs+=(openssh-client)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v ss >/dev/null || need_pkgs+=(iproute2)
command -v cmp >/dev/null || need_pkgs+=(diffutils)
if ((${#need_pkgs[@]})); then
    say "bench: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # keep the package's postinst from starting the system sshd (restored right after)
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    rc=0
    timeout 900 apt-get update -q >/dev/null || rc=$?
    ((rc == 0)) && { timeout 900 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null || rc=$?; }
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get failed (status $rc) installing ${need_pkgs[*]}"
fi

if [[ -n ${CLUSTERSYNC_BIN:-} ]]; then
    BIN=$CLUSTERSYNC_BIN
else
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain >= 1.85 (edition 2024), e.g. via rustup, or set CLUSTERSYNC_BIN"
    say "bench: cargo build --release"
    (cd "$REPO" && cargo build --release 2>&1 | tail -n 3 >&2) || die "cargo build --release failed"
    BIN=$REPO/target/release/clustersync
fi

# ---------------------------------------------------------------- temp dir and cleanup
T=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/clustersync-bench.XXXXXX")
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
KEEP=$LOG_ROOT/$RUN_ID
mkdir -p "$T/logs" "$T/bin"
# a private copy: a rebuild of target/release during the run must not change what is measured
[[ -x $BIN ]] || die "no binary at $BIN"
cp "$BIN" "$T/bin/clustersync"
BIN=$T/bin/clustersync
PIDS=()
SSHD_PID=

stop_pid() { # pid: SIGTERM, wait up to 10 s, then SIGKILL
    local p=$1 i
    kill -0 "$p" 2>/dev/null || return 0
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$p" 2>/dev/null || return 0
        sleep 0.1
    done
    say "bench: pid $p did not stop on SIGTERM within 10 s, killing it"
    kill -KILL "$p" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    [[ -n $SSHD_PID ]] && stop_pid "$SSHD_PID"
    wait 2>/dev/null
    mkdir -p "$KEEP"
    cp -a "$T/logs/." "$KEEP/" 2>/dev/null
    [[ -f $T/cluster.toml ]] && cp "$T/cluster.toml" "$KEEP/"
    for n in a b; do
        [[ -f $T/state-$n/audit.log ]] && gzip -c "$T/state-$n/audit.log" >"$KEEP/audit-$n.log.gz"
    done
    rm -rf "$T"
    say "bench: logs kept in $KEEP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- python helper
PY=$T/helper.py
cat >"$PY" <<'EOF'
import json, os, random, socket, subprocess, sys, time

def gen(root, nfiles, ndirs, big_mib, seed, prefix="d", start=0, lo=1024, hi=16384, extras=1):
    """Deterministic tree: nfiles files of lo..hi bytes over ndirs dirs (two levels),
    plus (extras) 3 files of 5 MiB and one of big_mib MiB."""
    rnd = random.Random(seed)
    top = max(1, int(ndirs ** 0.5))
    dirs = []
    for i in range(ndirs):
        d = os.path.join(root, f"{prefix}{i // top:03d}", f"{prefix}{i:04d}")
        os.makedirs(d, exist_ok=True)
        dirs.append(d)
    for i in range(start, start + nfiles):
        with open(os.path.join(dirs[i % ndirs], f"f{i:06d}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(lo, hi)))
    if extras:
        os.makedirs(os.path.join(root, "medium"), exist_ok=True)
        for i in range(3):
            with open(os.path.join(root, "medium", f"m{i}.bin"), "wb") as f:
                f.write(rnd.randbytes(5 << 20))
        os.makedirs(os.path.join(root, "big"), exist_ok=True)
        with open(os.path.join(root, "big", "big.bin"), "wb") as f:
            for _ in range(big_mib):
                f.write(rnd.randbytes(1 << 20))

def freeports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()

def status(bin_, cfg, node, state):
    r = subprocess.run([bin_, "-c", cfg, "--node", node, "--state-dir", state, "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None

def wait_converged(bin_, cfg, node, state, group, nfiles, t0, timeout, log):
    """Poll `status --json` until the group has nfiles files and in_sync; print elapsed."""
    t0 = float(t0); deadline = time.time() + float(timeout); nfiles = int(nfiles)
    sock = os.path.join(state, "control.sock")
    last = None; next_log = 0
    while time.time() < deadline:
        # never open the index behind a starting daemon's back: wait for its control socket
        if os.path.exists(sock):
            st = status(bin_, cfg, node, state)
            if st is not None:
                last = st
                if time.time() >= next_log:
                    next_log = time.time() + 2
                    with open(log, "a") as f:
                        f.write(f"{node} +{time.time() - t0:.1f}s {json.dumps(st['groups'])} {json.dumps(st.get('transfer'))}\n")
                g = next((g for g in st["groups"] if g["name"] == group), None)
                if g and g["files"] == nfiles and g["in_sync"]:
                    t = time.time()
                    print(f"{t - t0:.3f}")
                    return 0
        # each status walks B's whole index: poll gently (resolution ~1% of elapsed, 0.1-1 s)
        time.sleep(min(1.0, max(0.1, (time.time() - t0) / 100)))
    with open(log, "a") as f:
        f.write(f"wait_converged timeout; last status: {json.dumps(last)}\n")
    print(f"timed out after {timeout}s waiting for {node} to hold {nfiles} files and be in sync; "
          f"last status: {json.dumps(last)}", file=sys.stderr)
    return 1

def wait_connected(bin_, cfg, node, state, timeout):
    deadline = time.time() + float(timeout); last = None
    sock = os.path.join(state, "control.sock")
    while time.time() < deadline:
        if os.path.exists(sock):
            st = status(bin_, cfg, node, state)
            if st is not None:
                last = st
                if st["peers"] and all(p["connected"] for p in st["peers"]):
                    return 0
        time.sleep(0.05)
    print(f"timed out waiting for {node} to connect; last status: {json.dumps(last)}", file=sys.stderr)
    return 1

def counters(bin_, cfg, node, state):
    """Print 'chunk_bytes_in inline_bytes_in chunk_bytes_out reused_bytes records_in files in_sync'."""
    st = status(bin_, cfg, node, state)
    if st is None or st.get("transfer") is None:
        print("status failed", file=sys.stderr); return 1
    t = st["transfer"]; g = st["groups"][0]
    print(t.get("chunk_bytes_in", 0), t.get("inline_bytes_in", 0), t.get("chunk_bytes_out", 0),
          t.get("reused_bytes", 0), t.get("records_in", 0), g["files"], str(g["in_sync"]).lower())
    return 0

def tcpbytes(*pids):
    """Sum bytes_sent / bytes_received over the TCP sockets owned by the given pids."""
    pids = set(pids)
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    sent = recv = 0; mine = False
    for line in out:
        if not line[:1].isspace():
            mine = any(f"pid={p}," in line for p in pids)
            continue
        if mine:
            for tok in line.split():
                if tok.startswith("bytes_sent:"): sent += int(tok.split(":")[1])
                elif tok.startswith("bytes_received:"): recv += int(tok.split(":")[1])
    print(sent, recv)
    return 0

def wait_region(path, offset, patch, t0, timeout):
    """Poll until path holds patch at offset; print elapsed since t0."""
    want = open(patch, "rb").read(); offset = int(offset)
    t0 = float(t0); deadline = time.time() + float(timeout)
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                if f.read(len(want)) == want:
                    print(f"{time.time() - t0:.3f}")
                    return 0
        except OSError:
            pass
        time.sleep(0.01)
    print(f"timed out after {timeout}s waiting for the edit to reach {path}", file=sys.stderr)
    return 1

def cpu(*pids):
    """Print user+system CPU seconds of each pid."""
    tck = os.sysconf("SC_CLK_TCK"); out = []
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            out.append(f"{(int(f[11]) + int(f[12])) / tck:.1f}")
        except OSError:
            out.append("?")
    print(" ".join(out))
    return 0

def cpu_of(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def wait_idle(timeout, *pids):
    """Wait until none of the pids uses more than 2% of a core over 2 s; print elapsed."""
    t0 = time.time(); deadline = t0 + float(timeout)
    prev = [cpu_of(p) for p in pids]; quiet = 0
    while time.time() < deadline:
        time.sleep(0.5)
        cur = [cpu_of(p) for p in pids]
        quiet = quiet + 1 if all(c - q <= 0.01 for c, q in zip(cur, prev)) else 0
        prev = cur
        if quiet >= 4:
            print(f"{time.time() - t0 - 2:.1f}")
            return 0
    print(f"{time.time() - t0:.1f}")
    return 1

def ratio(a, b):
    a, b = float(a), float(b)
    print(f"{a / b:.2f}" if b > 0 else "n/a")
    return 0

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4])); sys.exit(0)
    if cmd == "gen-more":   # root n ndirs seed start: small files only, in new dirs
        gen(args[0], int(args[1]), int(args[2]), 0, int(args[3]), prefix="x", start=int(args[4]),
            lo=512, hi=4096, extras=0); sys.exit(0)
    if cmd == "patch":
        with open(args[0], "wb") as f: f.write(random.Random(int(args[1])).randbytes(1 << 20))
        sys.exit(0)
    sys.exit({"freeports": lambda: freeports(int(args[0])),
              "wait-converged": lambda: wait_converged(*args),
              "wait-connected": lambda: wait_connected(*args),
              "counters": lambda: counters(*args),
              "tcpbytes": lambda: tcpbytes(*args),
              "wait-region": lambda: wait_region(*args),
              "cpu": lambda: cpu(*args),
              "wait-idle": lambda: wait_idle(*args),
              "ratio": lambda: ratio(*args)}[cmd]())
EOF
py() { python3 "$PY" "$@"; }
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "$1 B"; }

# ---------------------------------------------------------------- data set
SRC=$T/a/data           # node A's tree, also rsync's source
mkdir -p "$SRC" "$T/b/data" "$T/r"
say "bench: generating $NFILES files over $NDIRS dirs + 3 x 5 MiB + 1 x ${BIG_MIB} MiB under $T"
t=$(now)
py gen "$SRC" "$NFILES" "$NDIRS" "$BIG_MIB" 42
NTOTAL=$(find "$SRC" -type f | wc -l)
TREE_BYTES=$(du -sb "$SRC" | cut -f1)
say "bench: $NTOTAL files, $(human "$TREE_BYTES") generated in $(elapsed "$t" "$(now)") s"

# ---------------------------------------------------------------- private sshd
mkdir -p "$T/ssh" /run/sshd
chmod 700 "$T/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/host_key" -C bench-host
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/id" -C bench-client
cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
read -r SSH_PORT PORT_A PORT_B < <(py freeports 3)
cat >"$T/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $T/ssh/host_key
PidFile $T/ssh/sshd.pid
AuthorizedKeysFile $T/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel INFO
EOF
/usr/sbin/sshd -t -f "$T/ssh/sshd_config" || die "sshd rejects the generated config"
/usr/sbin/sshd -D -f "$T/ssh/sshd_config" -E "$T/logs/sshd.log" &
SSHD_PID=$!
SSH="ssh -F /dev/null -p $SSH_PORT -i $T/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=$T/ssh/known_hosts -o BatchMode=yes -o LogLevel=ERROR"
deadline=$((SECONDS + 20))
until $SSH root@127.0.0.1 true 2>>"$T/logs/ssh-probe.log"; do
    ((SECONDS < deadline)) || die "private sshd on 127.0.0.1:$SSH_PORT not reachable after 20 s (see $T/logs/sshd.log)"
    kill -0 "$SSHD_PID" 2>/dev/null || die "private sshd exited (see logs)"
    sleep 0.2
done
say "bench: private sshd on 127.0.0.1:$SSH_PORT"

rsync_run() { # label -> prints "seconds bytes_sent", keeps the --stats output
    local label=$1 t0 t1 out
    out=$T/logs/rsync-$label.txt
    t0=$(now)
    timeout "$TIMEOUT" rsync -a --stats -e "$SSH" "$SRC/" "root@127.0.0.1:$T/r/data/" >"$out" 2>&1 ||
        { cat "$out" >&2; die "rsync ($label) failed"; }
    t1=$(now)
    local sent
    sent=$(sed -n 's/^Total bytes sent: *//p' "$out" | tr -d ',.')
    [[ -n $sent ]] || die "no 'Total bytes sent' in $out"
    echo "$(elapsed "$t0" "$t1") $sent"
}

# ---------------------------------------------------------------- clustersync cluster
CFG=$T/cluster.toml
SA=$T/state-a SB=$T/state-b
"$BIN" --node A --state-dir "$SA" init >"$T/logs/init-a.txt"
"$BIN" --node B --state-dir "$SB" init >"$T/logs/init-b.txt"
ID_A=$("$BIN" --node A --state-dir "$SA" id)
ID_B=$("$BIN" --node B --state-dir "$SB" id)
cat >"$CFG" <<EOF
# written by bench/run.sh
[nodes.A]
address = "127.0.0.1:$PORT_A"
listen = "127.0.0.1:$PORT_A"
root = "$T/a"
id = "$ID_A"

[nodes.B]
address = "127.0.0.1:$PORT_B"
listen = "127.0.0.1:$PORT_B"
root = "$T/b"
id = "$ID_B"

[groups.b]
nodes = ["A", "B"]
paths = ["/data"]
backup_generations = 0
EOF
"$BIN" -c "$CFG" --node A --state-dir "$SA" check-config >"$T/logs/check-config.txt" 2>&1 ||
    { cat "$T/logs/check-config.txt" >&2; die "check-config failed"; }

cs() { local n=$1; shift; "$BIN" -c "$CFG" --node "${n^^}" --state-dir "$T/state-$n" "$@"; }
start_daemon() { # a|b
    local n=$1
    CLUSTERSYNC_LOG=${BENCH_DAEMON_LOG:-clustersync=debug,info} "$BIN" -c "$CFG" --node "${n^^}" --state-dir "$T/state-$n" daemon </dev/null >/dev/null 2>>"$T/logs/daemon-$n.log" &
    PIDS+=($!)
    eval "PID_${n^^}=$!"
}
counters() { py counters "$BIN" "$CFG" "${1^^}" "$T/state-$1"; }
verify_tree() { # dir label: content+metadata comparison with the source, prints #differences
    local out=$T/logs/verify-$2.txt
    rsync -anic --delete "$SRC/" "$1/" >"$out" 2>&1 || true
    grep -vc '^\.d\.\.t\.\.\.\.\.\.' "$out" || true
}

declare -A R   # results

# ================================================================ 1. initial sync
say ""
say "== 1. initial sync to an empty node ($NTOTAL files, $(human "$TREE_BYTES"))"
/bin/sync
read -r "R[rs1_t]" "R[rs1_b]" < <(rsync_run initial)
say "   rsync:       ${R[rs1_t]} s, sent $(human "${R[rs1_b]}")"
/bin/sync

t0=$(now)
start_daemon a
start_daemon b
R[cs1_t]=$(py wait-converged "$BIN" "$CFG" B "$SB" b "$NTOTAL" "$t0" "$TIMEOUT" "$T/logs/wait.log") ||
    die "clustersync: B did not converge (daemon logs: $T/logs/daemon-*.log, kept in $KEEP)"
read -r cin iin cout _ rin _ _ < <(counters b)
read -r wire_ab wire_ba < <(py tcpbytes "$PID_A")
R[cs1_b]=$((cin + iin))
R[cs1_wire]=$wire_ab R[cs1_wire_back]=$wire_ba
say "   clustersync: ${R[cs1_t]} s (both daemons started -> B holds $NTOTAL files, in_sync)"
say "                payload to B $(human "${R[cs1_b]}") (chunk $cin + inline $iin, $rin records); TCP A->B $(human "$wire_ab"), B->A $(human "$wire_ba")"
R[cs1_ratio]=$(py ratio "${R[cs1_t]}" "${R[rs1_t]}")
read -r ca cb < <(py cpu "$PID_A" "$PID_B")
say "                CPU used so far: A ${ca} s, B ${cb} s (2 cores)"
d=$(verify_tree "$T/b/data" cs-initial); R[cs1_diff]=$d
d2=$(verify_tree "$T/r/data" rsync-initial)
say "   check: rsync -anic src vs B: $d differing entries (dir mtimes ignored); vs rsync dest: $d2"

# the daemons may keep working after B reports in_sync; measure 2 and 3 on a quiet cluster
if R[settle]=$(py wait-idle 600 "$PID_A" "$PID_B"); then
    say "   the daemons became idle ${R[settle]} s after B reported in sync"
else
    say "   WARNING: the daemons were still busy ${R[settle]} s after B reported in sync; measuring anyway"
    R[settle]=">${R[settle]}"
fi
read -r ca cb < <(py cpu "$PID_A" "$PID_B")
say "   CPU used by then: A ${ca} s, B ${cb} s"

# ================================================================ 2. no-change resync
say ""
say "== 2. resync with nothing changed"
read -r "R[rs2_t]" "R[rs2_b]" < <(rsync_run nochange)
say "   rsync:       ${R[rs2_t]} s, sent $(human "${R[rs2_b]}")"
read -r cin0 iin0 _ < <(counters b)
read -r w0 _ < <(py tcpbytes "$PID_A")
t0=$(now)
rc=0
cs a sync --timeout 2m >"$T/logs/sync-nochange.txt" 2>&1 || rc=$?
t1=$(now)
((rc == 0)) || { cat "$T/logs/sync-nochange.txt" >&2; die "clustersync sync on A exited $rc"; }
R[cs2_t]=$(elapsed "$t0" "$t1")
read -r cin1 iin1 _ < <(counters b)
read -r w1 _ < <(py tcpbytes "$PID_A")
R[cs2_b]=$((cin1 - cin0 + iin1 - iin0))
R[cs2_wire]=$((w1 - w0))
R[cs2_ratio]=$(py ratio "${R[cs2_t]}" "${R[rs2_t]}")
say "   clustersync: ${R[cs2_t]} s (\`sync\` on A, daemon running), payload $(human "${R[cs2_b]}"), TCP A->B $(human "${R[cs2_wire]}")"

# ================================================================ 3. 1 MiB edit in the big file
say ""
say "== 3. 1 MiB overwritten at offset 100 MiB of the ${BIG_MIB} MiB file"
BIG=big/big.bin
py patch "$T/patch.bin" 7
read -r cin0 iin0 _ < <(counters b)
read -r w0 _ < <(py tcpbytes "$PID_A")
read -r ca0 cb0 < <(py cpu "$PID_A" "$PID_B")
t0=$(now)
dd if="$T/patch.bin" of="$SRC/$BIG" bs=1M seek=100 count=1 conv=notrunc status=none
R[cs3_t]=$(py wait-region "$T/b/data/$BIG" $((100 << 20)) "$T/patch.bin" "$t0" 120) ||
    die "clustersync: the edit did not reach B within 120 s"
# let B settle (index updated, in sync) before reading the counters
py wait-converged "$BIN" "$CFG" B "$SB" b "$NTOTAL" "$t0" 60 "$T/logs/wait.log" >/dev/null ||
    say "   WARNING: B not reported in sync within 60 s after the edit"
read -r cin1 iin1 _ _ _ < <(counters b)
read -r w1 _ < <(py tcpbytes "$PID_A")
read -r ca1 cb1 < <(py cpu "$PID_A" "$PID_B")
R[cs3_cpu]="A $(elapsed "$ca0" "$ca1") s, B $(elapsed "$cb0" "$cb1") s"
R[cs3_b]=$((cin1 - cin0 + iin1 - iin0))
R[cs3_wire]=$((w1 - w0))
if cmp -s "$SRC/$BIG" "$T/b/data/$BIG"; then R[cs3_ok]=identical; else R[cs3_ok]=DIFFERENT; fi
say "   clustersync: ${R[cs3_t]} s (write on A -> edited bytes visible on B), payload $(human "${R[cs3_b]}"), TCP A->B $(human "${R[cs3_wire]}"); B's copy: ${R[cs3_ok]}; CPU ${R[cs3_cpu]}"
read -r "R[rs3_t]" "R[rs3_b]" < <(rsync_run edit)
R[cs3_ratio]=$(py ratio "${R[cs3_t]}" "${R[rs3_t]}")
say "   rsync:       ${R[rs3_t]} s, sent $(human "${R[rs3_b]}")"

rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo '?'; }
R[rss_A]=$(rss "$PID_A") R[rss_B]=$(rss "$PID_B")

# ================================================================ 4. 100,000 files (optional)
# Growing the tree to 100k files by live propagation is too slow to be "cheap" (see README), so
# the extra files are put on both nodes (and the rsync destination) while the daemons are
# stopped, as identical copies (`cp -a`); then both daemons restart and index them. What is
# timed is the no-change resync of 100k files. Failures here are reported, not fatal.
scenario4() {
    local more=$((TOTAL_100K - NTOTAL)) rc t0 t1 p
    say ""
    say "== 4. no-change resync with $TOTAL_100K files ($more small files of 0.5-4 KiB added identically on both nodes while stopped)"
    for p in "$PID_A" "$PID_B"; do stop_pid "$p"; done
    PIDS=()
    py gen-more "$SRC" "$more" 400 43 "$NFILES" || return 1
    cp -a "$SRC"/x[0-9]* "$T/b/data/" || return 1
    cp -a "$SRC"/x[0-9]* "$T/r/data/" || return 1
    touch -r "$SRC" "$T/b/data" "$T/r/data"
    t0=$(now)
    start_daemon a
    start_daemon b
    R[cs4_start_t]=$(py wait-converged "$BIN" "$CFG" B "$SB" b "$TOTAL_100K" "$t0" "$TIMEOUT_100K" "$T/logs/wait.log") ||
        { say "   clustersync: B did not report $TOTAL_100K files in sync within $TIMEOUT_100K s"; return 1; }
    py wait-converged "$BIN" "$CFG" A "$SA" b "$TOTAL_100K" "$t0" "$TIMEOUT_100K" "$T/logs/wait.log" >/dev/null ||
        { say "   clustersync: A did not report $TOTAL_100K files in sync within $TIMEOUT_100K s"; return 1; }
    local cin iin
    read -r cin iin _ < <(counters b) || return 1
    R[cs4_start_b]=$((cin + iin))
    say "   clustersync: restart until both report $TOTAL_100K files in sync: ${R[cs4_start_t]} s, payload to B $(human "${R[cs4_start_b]}")"
    rsync_run warmup100k >/dev/null || return 1
    read -r "R[rs4_t]" "R[rs4_b]" < <(rsync_run nochange100k) || return 1
    say "   rsync:       ${R[rs4_t]} s, sent $(human "${R[rs4_b]}")"
    t0=$(now)
    rc=0
    timeout 300 "$BIN" -c "$CFG" --node A --state-dir "$SA" sync --timeout 2m >"$T/logs/sync-nochange100k.txt" 2>&1 || rc=$?
    t1=$(now)
    ((rc == 0)) || { say "   clustersync sync on A exited $rc: $(cat "$T/logs/sync-nochange100k.txt")"; return 1; }
    R[cs4_t]=$(elapsed "$t0" "$t1")
    R[cs4_ratio]=$(py ratio "${R[cs4_t]}" "${R[rs4_t]}")
    say "   clustersync: ${R[cs4_t]} s (\`sync\` on A, daemon running)"
    R[cs4_diff]=$(verify_tree "$T/b/data" cs-100k)
    say "   check: rsync -anic src vs B: ${R[cs4_diff]} differing entries"
    R[rss4_A]=$(rss "$PID_A") R[rss4_B]=$(rss "$PID_B")
}
if [[ $RUN_100K == 1 ]] && ((TOTAL_100K > NTOTAL)); then
    scenario4 || { R[cs4_fail]=1; say "   scenario 4 FAILED (see $KEEP)"; }
fi

# ================================================================ summary
warn="A $(sed 's/\x1b\[[0-9;]*m//g' "$T/logs/daemon-a.log" | grep -cE ' (WARN|ERROR) ' || true), B $(sed 's/\x1b\[[0-9;]*m//g' "$T/logs/daemon-b.log" | grep -cE ' (WARN|ERROR) ' || true)"
cat <<EOF

================================================================================
clustersync vs rsync -a over ssh (127.0.0.1), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores
tree: $NTOTAL files, $(human "$TREE_BYTES") ($NFILES x 1-16 KiB in $NDIRS dirs, 3 x 5 MiB, 1 x ${BIG_MIB} MiB)
--------------------------------------------------------------------------------
scenario                     rsync s  clustersync s  ratio cs/rs   rsync sent   cs payload   cs TCP A->B
1 initial sync            $(printf '%10s %14s %13s %12s %12s %13s' "${R[rs1_t]}" "${R[cs1_t]}" "${R[cs1_ratio]}" "$(human "${R[rs1_b]}")" "$(human "${R[cs1_b]}")" "$(human "${R[cs1_wire]}")")
2 no-change resync        $(printf '%10s %14s %13s %12s %12s %13s' "${R[rs2_t]}" "${R[cs2_t]}" "${R[cs2_ratio]}" "$(human "${R[rs2_b]}")" "$(human "${R[cs2_b]}")" "$(human "${R[cs2_wire]}")")
3 1 MiB edit in big file  $(printf '%10s %14s %13s %12s %12s %13s' "${R[rs3_t]}" "${R[cs3_t]}" "${R[cs3_ratio]}" "$(human "${R[rs3_b]}")" "$(human "${R[cs3_b]}")" "$(human "${R[cs3_wire]}")")
EOF
if [[ -n ${R[cs4_t]:-} ]]; then
    printf '4 no-change, %6s files %9s %14s %13s %12s\n' "$TOTAL_100K" "${R[rs4_t]}" "${R[cs4_t]}" "${R[cs4_ratio]}" "$(human "${R[rs4_b]}")"
elif [[ -n ${R[cs4_fail]:-} ]]; then
    echo "4 no-change, $TOTAL_100K files: FAILED (see log lines above)"
fi
cat <<EOF
--------------------------------------------------------------------------------
targets (SPEC §7): 1 ratio <= 1.0 (aim 0.5) | 2 under 1 s (100k files) | 3 payload close to 1 MiB
clustersync times: 1 = both daemons started -> B holds every file and reports in_sync;
  2/4 = \`clustersync sync\` on A (daemon running); 3 = dd write on A -> edited bytes on B.
after 1 the daemons kept working ${R[settle]} s more (CPU: A ${ca} s, B ${cb} s in total by then)
checks: B vs source after 1: ${R[cs1_diff]} differing entries; big file after 3: ${R[cs3_ok]}${R[cs4_diff]:+; after 4: ${R[cs4_diff]} differing entries}
peak RSS after 3 ($NTOTAL files): A ${R[rss_A]} KiB, B ${R[rss_B]} KiB${R[rss4_A]:+; after 4 ($TOTAL_100K files): A ${R[rss4_A]} KiB, B ${R[rss4_B]} KiB}
TCP B->A during 1 (B sending back to A): $(human "${R[cs1_wire_back]}"); WARN/ERROR lines in daemon logs: $warn
logs: $KEEP
================================================================================
EOF
exit 0
}

#!/usr/bin/env bash
# Record what a previous release's command line sends and its daemon answers over the control
# socket, into tests/fixtures/control/<release>/ (replayed by tests/control_compat.rs against
# this release's daemon and command line; SPEC §4, issue 22 item 4).
#
#   scripts/record-control-fixtures.sh PREVIOUS_BINARY RELEASE [THIS_BINARY]
#
# PREVIOUS_BINARY is a build of an earlier release, RELEASE its name (0.1 and 0.2 both print
# "clustersync 0.1.0" for --version), e.g. for 0.2.0:
#   git clone -q . /tmp/prev && git -C /tmp/prev checkout -q a275248 &&
#   (cd /tmp/prev && cargo build --release)   # then /tmp/prev/target/release/clustersync
# (0.1.0 is commit 5eade08). THIS_BINARY defaults to target/debug/clustersync.
#
# A two-node cluster of the previous release runs under a temp dir (group www on /srv/www,
# conflict = "manual", two unresolved conflicts). A recording proxy stands in for node a's
# control socket: each command line (the previous release's, then this one's) talks to a's
# daemon through it, and every exchange is written as
#   <release>/cli-<cli release>/<name>.json = {"args", "request", "answer"}
# plus <release>/unknown-request.json: the daemon's answer to a request it does not know.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 PREVIOUS_BINARY RELEASE [THIS_BINARY]"
prev=$(realpath "${1:?$usage}")
prev_rel=${2:?$usage}
this=$(realpath "${3:-target/debug/clustersync}")
this_rel=$("$this" --version | awk '{print $2}')
rel() { if [ "$1" = "$prev" ]; then echo "$prev_rel"; else echo "$this_rel"; fi; }
[ "$prev_rel" != "$this_rel" ] || { echo "both are $prev_rel" >&2; exit 2; }
out=tests/fixtures/control/$prev_rel
tmp=$(mktemp -d /tmp/cs-record.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

cfg=$tmp/clustersync.toml
port=$((20000 + RANDOM % 20000))
for n in a b; do
    mkdir -p "$tmp/$n/root/srv/www"
    "$prev" --node $n --state-dir "$tmp/$n/state" init >/dev/null
    id=$("$prev" --node $n --state-dir "$tmp/$n/state" id)
    cat >>"$cfg" <<TOML
[nodes.$n]
address = "127.0.0.1:$port"
root = "$tmp/$n/root"
id = "$id"

TOML
    port=$((port + 1))
done
cat >>"$cfg" <<TOML
[groups.www]
nodes = ["a", "b"]
paths = ["/srv/www"]
conflict = "manual"
TOML

start() { # node
    "$prev" -c "$cfg" --node "$1" --state-dir "$tmp/$1/state" daemon 2>>"$tmp/$1.log" &
    pids+=($!)
    eval "pid_$1=$!"
    for _ in $(seq 300); do [ -S "$tmp/$1/state/control.sock" ] && return; sleep 0.1; done
    echo "$1 did not start" >&2; exit 1
}
st() { "$prev" -c "$cfg" --node "$1" --state-dir "$tmp/$1/state" status --json || true; }
wait_for() { # what, node, python condition on the status object s
    for _ in $(seq 300); do
        if st "$2" | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($3) else 1)" 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2; exit 1
}
start a; start b
wait_for "a connected" a 's["peers"][0]["connected"]'
echo shared >"$tmp/a/root/srv/www/f"
wait_for "f on b" b 's["groups"][0]["files"] >= 1'
kill "$pid_b"; wait "$pid_b" || true
for f in conflicted conflicted2; do
    echo "from a" >"$tmp/a/root/srv/www/$f"
    echo "from b, longer" >"$tmp/b/root/srv/www/$f"
done
sleep 1.5
start b
wait_for "two conflicts on a" a 's["groups"][0]["conflicts"] >= 2'

# the recording proxy: a's control socket under another state dir
mkdir -p "$tmp/proxy"
python3 - "$tmp/proxy/control.sock" "$tmp/a/state/control.sock" "$tmp/exchanges.jsonl" <<'PY' &
import json, socket, sys, os
listen, target, log = sys.argv[1:]
srv = socket.socket(socket.AF_UNIX); srv.bind(listen); srv.listen(8)
while True:
    c, _ = srv.accept()
    try:
        req = b""
        while not req.endswith(b"\n"):
            d = c.recv(65536)
            if not d: break
            req += d
        if not req.strip():
            continue  # a probe whether a daemon runs (connect and close)
        t = socket.socket(socket.AF_UNIX); t.connect(target); t.sendall(req)
        ans = b""
        while not ans.endswith(b"\n"):
            d = t.recv(1 << 20)
            if not d: break
            ans += d
        t.close(); c.sendall(ans)
        with open(log, "a") as f:
            f.write(json.dumps({"request": json.loads(req), "answer": json.loads(ans)}) + "\n")
    except OSError as e:
        print(f"proxy: {e}", file=sys.stderr)
    finally:
        c.close()
PY
pids+=($!)
for _ in $(seq 100); do [ -S "$tmp/proxy/control.sock" ] && break; sleep 0.1; done

record() { # binary, name, args...
    local bin=$1 name=$2; shift 2
    local r; r=$(rel "$bin")
    : >"$tmp/exchanges.jsonl"
    "$bin" -c "$cfg" --node a --state-dir "$tmp/proxy" "$@" >"$tmp/stdout" 2>"$tmp/stderr" || true
    mkdir -p "$out/cli-$r"
    python3 - "$tmp/exchanges.jsonl" "$out/cli-$r/$name.json" "$@" <<'PY'
import json, sys
src, dst, args = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = [json.loads(l) for l in open(src) if l.strip()]
assert lines, f"no exchange recorded for {args}"
x = lines[0]
json.dump({"args": args, "request": x["request"], "answer": x["answer"]}, open(dst, "w"), indent=1, sort_keys=True)
open(dst, "a").write("\n")
PY
    echo "recorded $r: $* -> $out/cli-$r/$name.json"
}
for bin in "$prev" "$this"; do
    record "$bin" status status --json
    record "$bin" conflicts conflicts --json
    record "$bin" sync sync --timeout 20s
    record "$bin" sync-dry-run sync --dry-run
    record "$bin" mark mark /srv/www/f
done
record "$this" resolve resolve /srv/www/conflicted --keep a
record "$prev" resolve resolve /srv/www/conflicted2 --keep a

# a request the daemon does not know (a newer command's)
python3 - "$tmp/a/state/control.sock" "$out/unknown-request.json" "$this_rel" <<'PY'
import json, socket, sys
sock, dst, rel = sys.argv[1:]
req = {"cmd": "no-such-command", "control": 2, "release": rel}
s = socket.socket(socket.AF_UNIX); s.connect(sock); s.sendall((json.dumps(req) + "\n").encode())
ans = b""
while not ans.endswith(b"\n"):
    d = s.recv(65536)
    if not d: break
    ans += d
json.dump({"request": req, "answer": json.loads(ans)}, open(dst, "w"), indent=1, sort_keys=True)
open(dst, "a").write("\n")
PY
echo "recorded $out/unknown-request.json"
echo "$prev_rel: $("$prev" --version)" >"$out/VERSION"

#!/usr/bin/env bash
# Long chaos run: tests/chaos.rs over many seeds with many steps, one seed at a time, stopping
# at the first failure and printing how to reproduce it.
#
#   scripts/chaos-long.sh [FIRST_SEED] [LAST_SEED] [STEPS]      (default: 1 50 200)
#
# Environment:
#   CHAOS_MAX_SECS    stop (successfully) once this much time has passed, after the current seed
#   CHAOS_TARGET_DIR  cargo target dir of the run (default: target/chaos-long), separate from the
#                     usual one so that a rebuild elsewhere cannot swap the binaries mid-run
#   CHAOS_LOG_DIR     where each seed's output goes (default: a new temp dir)
#   TMPDIR            where the test clusters live (default /tmp); a private one keeps a run safe
#                     from anything that cleans /tmp/cs-test.* meanwhile
#   CHAOS_NODES       nodes of the cluster, 2 to 9 (default 3), passed on to the test
#   CHAOS_NO_IN_SYNC=1, CHAOS_NO_GDB=1 are passed on to the test (see tests/chaos.rs)
#
# The binaries are built once at the start; a failing seed's output (actions, the daemons' last
# log lines) is kept in CHAOS_LOG_DIR and its test directory is kept (CS_TEST_KEEP=1).
set -euo pipefail

first=${1:-1}
last=${2:-50}
steps=${3:-200}
max_secs=${CHAOS_MAX_SECS:-0}
export CHAOS_NODES=${CHAOS_NODES:-3}

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CHAOS_TARGET_DIR:-$PWD/target/chaos-long}
logs=${CHAOS_LOG_DIR:-$(mktemp -d -t chaos-long.XXXXXX)}
mkdir -p "$logs"

echo "chaos-long: seeds $first..$last, $steps steps each, $CHAOS_NODES nodes; logs in $logs"
echo "chaos-long: building (target dir $CARGO_TARGET_DIR)"
bin=$(cargo test --test chaos --no-run --message-format=json 2>"$logs/build.log" |
    grep -o '"executable":"[^"]*/deps/chaos-[^"]*"' | tail -n1 | cut -d'"' -f4) || true
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "chaos-long: build failed:" >&2
    tail -n 40 "$logs/build.log" >&2
    exit 2
fi

start=$SECONDS
passed=0
for ((seed = first; seed <= last; seed++)); do
    t0=$SECONDS
    out="$logs/seed-$seed.log"
    if CHAOS_SEED=$seed CHAOS_STEPS=$steps CS_TEST_KEEP=1 "$bin" --nocapture >"$out" 2>&1; then
        passed=$((passed + 1))
        echo "seed $seed: ok ($((SECONDS - t0))s)"
        rm -f "$out"
    else
        echo
        echo "seed $seed: FAILED after $((SECONDS - t0))s ($passed seeds of $steps steps on $CHAOS_NODES nodes passed before)"
        grep -E "panicked|FAILED|kept test directory|did not|no convergence|holds|left" "$out" | head -n 20 || true
        echo
        echo "full output: $out"
        echo "reproduce:   CHAOS_SEED=$seed CHAOS_STEPS=$steps CHAOS_NODES=$CHAOS_NODES CS_TEST_KEEP=1 cargo test --test chaos -- --nocapture"
        exit 1
    fi
    if ((max_secs > 0 && SECONDS - start >= max_secs)); then
        echo "chaos-long: time budget of ${max_secs}s used up"
        break
    fi
done
echo "chaos-long: $passed seeds x $steps steps on $CHAOS_NODES nodes passed in $((SECONDS - start))s"

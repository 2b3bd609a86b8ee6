#!/usr/bin/env bash
# Scale run of issue 7's `rm -rf` case with real daemons on 127.0.0.1: FILES small files under
# dir/ (three levels) created on node a and synced to the others, then `rm -rf dir` on a; the
# deletion must reach every node, and a full rescan (`clustersync sync`) on each node afterwards
# must bring nothing back. Prints the timings of each phase. Runs the test
# `rm_rf_of_a_subtree_larger_than_one_batch_is_gone_everywhere_and_stays_gone`
# (tests/engine_deletes.rs), which CI runs with 3,000 files.
#
#   scripts/scale-rmrf.sh [FILES] [NODES]      (default: 20000 3; e.g. 30000, or 20000 5)
#
# Environment: CARGO_TARGET_DIR as usual; CS_TEST_KEEP=1 keeps the test directory of a failure
# (daemons' logs and audit logs).
set -euo pipefail
files=${1:-20000}
nodes=${2:-3}
cd "$(dirname "$0")/.."
echo "scale-rmrf: $files files, $nodes nodes"
start=$SECONDS
out=$(mktemp -t scale-rmrf.XXXXXX)
status=0
ENGINE_RMRF_FILES=$files ENGINE_RMRF_NODES=$nodes \
    cargo test --test engine_deletes -- --exact \
    rm_rf_of_a_subtree_larger_than_one_batch_is_gone_everywhere_and_stays_gone --nocapture \
    >"$out" 2>&1 || status=$?
grep -E "^timing:|panicked|kept test directory|test result|came back|recorded" "$out" || true
if [[ $status != 0 ]]; then
    echo "full output: $out"
else
    rm -f "$out"
fi
echo "scale-rmrf: $files files, $nodes nodes: $([[ $status == 0 ]] && echo passed || echo FAILED) in $((SECONDS - start))s (build included)"
exit "$status"

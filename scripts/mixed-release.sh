#!/usr/bin/env bash
# A real mixed-release cluster: build the earlier releases from git and run the tests that use
# their binaries (tests/upgrade.rs: a 0.2 cluster upgraded node by node, a new and a reset node
# of this release joining 0.2 and 0.1 nodes; tests/control_compat.rs: the recorded control
# messages). Prints the figures of each step (convergence times, links, refused offers).
#
#   scripts/mixed-release.sh [cargo test arguments]
#
# The earlier releases are built once into $CS_RELEASES (default ~/.cache/clustersync-releases):
#   0.2.0 = commit a275248 (protocol 3-4, index 3-4), 0.1.0 = commit 5eade08 (protocol 3, index 3)
# Set CS_PREV_BIN / CS_PREV01_BIN to use binaries built elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
releases=${CS_RELEASES:-$HOME/.cache/clustersync-releases}
mkdir -p "$releases"

build() { # release commit
    local bin=$releases/clustersync-$1
    if [ ! -x "$bin" ]; then
        echo "== building clustersync $1 (commit $2) into $bin (once)" >&2
        local src=$releases/src-$1
        rm -rf "$src"
        git clone -q . "$src"
        git -C "$src" checkout -q "$2"
        (cd "$src" && CARGO_TARGET_DIR=$releases/target cargo build --release --locked >&2)
        cp "$releases/target/release/clustersync" "$bin"
        rm -rf "$src"
    fi
    echo "$bin"
}
export CS_PREV_BIN=${CS_PREV_BIN:-$(build 0.2.0 a275248)}
export CS_PREV01_BIN=${CS_PREV01_BIN:-$(build 0.1.0 5eade08)}
echo "== 0.2.0: $CS_PREV_BIN; 0.1.0: $CS_PREV01_BIN"
cargo test --test upgrade --test control_compat "$@" -- --nocapture 2>&1 |
    grep -E '^(test |upgraded |0\.[12]\.0:|SKIPPED|test result)|panicked'

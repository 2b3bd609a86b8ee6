#!/usr/bin/env bash
# Fuzz every decoder of peer bytes and the config parser (the cargo-fuzz project in fuzz/).
# The targets are the [[bin]]s of fuzz/Cargo.toml (`cargo fuzz list`): decode_msg, decode_entry,
# config, validate_item, decode_account, decode_acl.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 30 seconds each, every target)
#
# Builds all targets (a target that no longer compiles fails the run), then runs each one for
# SECONDS, starting from the committed seeds in fuzz/corpus/<target>/ and from the known crashing
# inputs in fuzz/regressions/<target>/ (so a crash that was found once fails the run until it is
# fixed). New inputs go to a scratch directory, so the committed corpus is never changed.
# Needs the nightly toolchain (AddressSanitizer); installs cargo-fuzz if it is missing.
#
# Exit status: 0 nothing found, 1 a target crashed (its input is saved under
# fuzz/artifacts/<target>/ and printed), 2 setup or build failure.
#
# Environment:
#   FUZZ_TOOLCHAIN  toolchain for cargo-fuzz (default: nightly)
#   FUZZ_WORK_DIR   where the grown corpora and logs go (default: a temp dir, removed afterwards)
#   FUZZ_JOBS       libFuzzer -fork jobs per target (default: 0 = one process)
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-max_len=65536" (split on spaces)
#   FUZZ_DEV        1: build the targets unoptimized (`cargo fuzz build --dev`): about 2 min
#                   instead of 6.5 on 2 cores, and ~13x fewer runs per second; .ci/run uses it
#                   for its 5-second smoke run (the seeds and regressions are replayed either way)
set -euo pipefail

secs=${1:-30}
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]] || ((secs == 0)); then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}
jobs=${FUZZ_JOBS:-0}

cd "$(dirname "$0")/../fuzz"
cargo_fuzz=(cargo "+$toolchain" fuzz)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || {
        echo "fuzz: cannot install cargo-fuzz" >&2
        exit 2
    }
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: toolchain $toolchain is missing (rustup toolchain install $toolchain)" >&2
    exit 2
fi

if [[ -n "${FUZZ_WORK_DIR:-}" ]]; then
    work=$FUZZ_WORK_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d -t clustersync-fuzz.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi

profile=release
build_args=()
if [[ "${FUZZ_DEV:-0}" == 1 ]]; then
    profile=debug
    build_args=(--dev)
fi
echo "fuzz: building every target ($toolchain, $profile)"
if ! "${cargo_fuzz[@]}" build "${build_args[@]}" >"$work/build.log" 2>&1; then
    echo "fuzz: build failed:" >&2
    tail -n 40 "$work/build.log" >&2
    exit 2
fi

# The binaries are run directly, not through `cargo fuzz run`, which would rebuild first: the
# whole run fuzzes the code as it was at this build, even if the tree changes meanwhile.
triple=$(rustup run "$toolchain" rustc -vV | sed -n 's/^host: //p')
bins=${CARGO_TARGET_DIR:-target}/$triple/$profile
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <("${cargo_fuzz[@]}" list)
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    corpora=("$work/corpus/$t")
    [[ -d "corpus/$t" ]] && corpora+=("corpus/$t")
    [[ -d "regressions/$t" ]] && corpora+=("regressions/$t")
    if [[ ! -x "$bins/$t" ]]; then
        echo "fuzz: no binary $bins/$t (unknown target?)" >&2
        exit 2
    fi
    mkdir -p "artifacts/$t"
    args=(-artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1)
    [[ -f "dict/$t.dict" ]] && args+=(-dict="dict/$t.dict")
    ((jobs > 0)) && args+=(-fork="$jobs" -ignore_crashes=0)
    # shellcheck disable=SC2206 # split on purpose: several flags in one variable
    args+=(${FUZZ_ARGS:-})
    log="$work/$t.log"
    echo "fuzz: $t for ${secs}s"
    # The time limit is libFuzzer's; the outer timeout only catches a wedged run.
    if timeout --kill-after=30 $((secs + 300)) \
        "$bins/$t" "${args[@]}" "${corpora[@]}" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
        rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
        summary+=("$(printf '%-16s ok     %10s runs  %7s exec/s' "$t" "${runs:-?}" "${rate:-?}")")
    else
        failed+=("$t")
        summary+=("$(printf '%-16s FAILED' "$t")")
        echo "fuzz: $t FAILED:" >&2
        # from the first report (panic or sanitizer) to the end
        report=$(sed -n '/panicked at\|ERROR: /,$p' "$log")
        if [[ -n "$report" ]]; then
            printf '%s\n' "$report" | head -n 80 >&2
        else
            tail -n 40 "$log" >&2
        fi
        input=$(ls -t "artifacts/$t/" 2>/dev/null | head -n1)
        if [[ -n "$input" ]]; then
            echo "fuzz: input saved as fuzz/artifacts/$t/$input; replay with:" \
                "(cd fuzz && cargo +$toolchain fuzz run $t artifacts/$t/$input)" >&2
        fi
    fi
done

echo
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi

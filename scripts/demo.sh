#!/usr/bin/env bash
# pmem's main job, for a newcomer: build pmem, then acquire memory.
# - With a readable /proc/kcore (root on a usual Linux kernel): acquire this
#   machine into demo-output/memory.lime (as large as its RAM).
# - Otherwise: boot a Debian kernel in a QEMU guest and acquire the guest's
#   memory with pmem inside it (testing/guest/guest.py demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

# The static build compiles ring's C (TLS uploads) with musl-gcc.
build_ensure
apt_ensure musl-tools
python_ensure
rustup target add x86_64-unknown-linux-musl >&2
cargo build --release --target x86_64-unknown-linux-musl -p pmem
pmem=target/x86_64-unknown-linux-musl/release/pmem

if [[ -r /proc/kcore ]] && head -c 4 /proc/kcore >/dev/null 2>&1; then
    mkdir -p demo-output
    "$pmem" acquire --force demo-output/memory.lime
    echo
    echo "image:    $PWD/demo-output/memory.lime"
    echo "manifest: $PWD/demo-output/memory.lime.json"
    "$pmem" info demo-output/memory.lime
    "$pmem" verify demo-output/memory.lime
else
    echo "this machine has no readable /proc/kcore: acquiring a QEMU guest instead"
    python3 testing/guest/guest.py setup
    python3 testing/guest/guest.py demo
fi

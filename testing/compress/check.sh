#!/usr/bin/env bash
# Compressed formats against stock readers, on synthetic memory:
#  * mixed memory (text, zero MiBs, incompressible stretches of 3 and 20 MiB)
#    -> `pmem convert --compress snappy` -> Volatility 3's AVMLLayer must read
#    every byte, within a time limit (its reader loops forever on a block
#    whose stream is longer than the block);
#  * random memory -> pmem must fall back to plain LiME (never write a block
#    that hangs Volatility 3).
# Needs: pmem (static build, or PMEM_BIN), libsnappy (Volatility's AVML layer loads it),
# Volatility 3 in the guest harness's venv (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
pmem=${PMEM_BIN:-target/x86_64-unknown-linux-musl/release/pmem}
[[ -x "$pmem" ]] || cargo build --release --target x86_64-unknown-linux-musl -p pmem
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c 'import sys; sys.path.insert(0, "testing/guest"); import env; env.ensure_volatility()'
vpy="${PMEM_GUEST_CACHE:-${PMEM_CACHE:-$HOME/.cache/pmem}/guest}/venv/bin/python3"

python3 - "$work" <<'PY'
import os, struct, sys, random
work = sys.argv[1]
rng = random.Random(7)
def rec(start, data):
    return struct.pack("<IIQQQ", 0x4C694D45, 1, start, start + len(data) - 1, 0) + data
def rand(n):
    return rng.randbytes(n)
text = b"".join(b"pmem %08d acquisition\n" % i for i in range(200000))[: 6 << 20]
r1 = text[: 6 << 20] + bytes(4 << 20) + rand(3 << 20) + text[: 6 << 20] + rand(20 << 20) + text[: 6 << 20]
r2 = rand(3 << 20) + text[: 1 << 20]
open(f"{work}/mixed.lime", "wb").write(rec(0x100000, r1) + rec(1 << 32, r2))
open(f"{work}/random.lime", "wb").write(rec(0x100000, rand(40 << 20)))
PY

"$pmem" convert -q --arch x86_64 --format lime --compress snappy "$work/mixed.lime" "$work/mixed.avml"
head -c 4 "$work/mixed.avml" | grep -q AVML
timeout 300 "$vpy" testing/compress/vol_avml.py "$work/mixed.avml" "$work/mixed.lime"
"$pmem" verify "$work/mixed.avml" >/dev/null
# The 20 MiB incompressible stretch sits in a block longer than 16 MiB that
# still pays for itself; AVML's own converter reads it back byte-exact.
avml=$(python3 -c 'import sys; sys.path.insert(0, "testing/guest"); import env; print(env.ensure_avml())')
"$avml" convert --source-format lime_compressed --format raw "$work/mixed.avml" "$work/mixed.avml.raw"
"$pmem" convert -q --arch x86_64 --format raw "$work/mixed.lime" "$work/mixed.raw"
cmp "$work/mixed.raw" "$work/mixed.avml.raw"
# Through a pipe (blocks buffered, at most 4 MiB): the same memory.
"$pmem" convert -q --arch x86_64 --format lime --compress snappy "$work/mixed.lime" - >"$work/piped.avml" 2>"$work/err" \
    || grep -q "write to a file" "$work/err"
if [[ -s "$work/piped.avml" ]] && ! grep -q "write to a file" "$work/err"; then
    timeout 300 "$vpy" testing/compress/vol_avml.py "$work/piped.avml" "$work/mixed.lime"
fi

"$pmem" convert -q --arch x86_64 --format lime --compress snappy "$work/random.lime" "$work/random.img" 2>"$work/err"
grep -q "wrote plain (uncompressed) LiME instead" "$work/err"
cmp "$work/random.lime" "$work/random.img"
echo "compressed formats: Volatility 3 and avml convert read pmem's AVML image; incompressible memory fell back to LiME"

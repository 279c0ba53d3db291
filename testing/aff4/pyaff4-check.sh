#!/usr/bin/env bash
# pmem's AFF4 against pyaff4 0.34 (PyPI), the reference AFF4 library of the
# pmem 3.x era, installed by pyaff4-setup.sh into a cached venv:
#  * pmem -> pyaff4: synthetic memory (5 ranges, gaps, adjacent ranges,
#    random, zero, 0xff and text pages; 39 MiB) -> `pmem convert --format aff4`
#    with each chunk compression (snappy, lz4, deflate, none) -> pyaff4 opens
#    it as a physical image (Container.openURNtoContainer), reads every range
#    byte-exact, sees the Turtle (Image -> Map of category memory/physical ->
#    ImageStream, chunk size, compression IRI) and reads gaps as it defines them;
#    file and pipe output are identical.
#  * negative: a flipped byte in a chunk and a wrong reference must be reported.
#  * the symbol bundle: an ELF core carrying one (a PMEM "PSYM" note) ->
#    `pmem convert --format aff4` -> pyaff4 reads the memory and follows the
#    map's pmem:symbols to the member holding the bundle, byte-exact.
#  * pyaff4 -> pmem: pyaff4's writer (AFF4Map over an ImageStream; snappy,
#    zlib) -> `pmem convert --format lime` gives the source memory byte-exact.
#    Not lz4: pyaff4 0.34 writes lz4 chunks with python-lz4's 4-byte size
#    prefix (lz4.block.compress default) and cannot read them back itself.
# Needs: pmem (static build, or PMEM_BIN), python3 >= 3.9 with venv, a C/C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/../.."
pmem=${PMEM_BIN:-target/x86_64-unknown-linux-musl/release/pmem}
[[ -x "$pmem" ]] || cargo build --release --target x86_64-unknown-linux-musl -p pmem
py=$(testing/aff4/pyaff4-setup.sh)
check=testing/aff4/pyaff4_check.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" $check make "$work/src.lime"
for method in snappy lz4 deflate none; do
    "$pmem" convert -q --arch x86_64 --format aff4 --compress "$method" "$work/src.lime" "$work/$method.aff4" 2>/dev/null
    "$py" $check read "$work/$method.aff4" "$work/src.lime" "$method"
done
"$pmem" convert -q --arch x86_64 --format aff4 --manifest "$work/piped.json" "$work/src.lime" - >"$work/piped.aff4" 2>/dev/null
cmp "$work/snappy.aff4" "$work/piped.aff4"
"$py" $check negative "$work/snappy.aff4" "$work/src.lime" "$work"
"$py" $check symbols-elf "$work/src.lime" "$work/symbols.elf" "$work/bundle"
"$pmem" convert -q --arch x86_64 --format aff4 "$work/symbols.elf" "$work/symbols.aff4" 2>/dev/null
"$py" $check read "$work/symbols.aff4" "$work/src.lime" snappy
"$py" $check symbols "$work/symbols.aff4" "$work/bundle"

"$py" $check merged "$work/src.lime" "$work/merged.lime"
for method in snappy deflate; do
    "$py" $check write "$work/src.lime" "$work/py-$method.aff4" "$method"
    "$pmem" convert -q --force --arch x86_64 --format lime "$work/py-$method.aff4" "$work/py-$method.lime" 2>/dev/null
    cmp "$work/merged.lime" "$work/py-$method.lime"
    echo "pmem read pyaff4's $method image byte-exact ($(stat -c %s "$work/merged.lime") bytes of LiME)"
done
echo "pyaff4 0.34: reads pmem's AFF4 (snappy, lz4, deflate, none) byte-exact; pmem reads pyaff4's"

#!/usr/bin/env bash
# Runs pmem.exe under Wine and checks that the image tools give the same
# results as the Linux binary on the same files:
#   testing/windows/wine-test.sh LINUX_PMEM PMEM_EXE [WORKDIR]
#
# * builds bcryptprimitives.dll (processprng.c; see there why) with mingw
#   into the system32 of a WINEPREFIX owned by this test (WORKDIR/prefix,
#   kept between runs because creating it takes ~15 s);
# * makes fixtures with the Linux pmem: a LiME image of 60 runs written
#   here, converted to raw (+ manifest), ELF and dmp;
# * under Wine: --help; info --json on every fixture (byte-identical to the
#   Linux output); convert of every fixture to every format (byte-identical
#   images); verify of the Linux-made images; Linux verify of Wine-made
#   ones; and a clear error from acquire with a driver that does not exist.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
linux_pmem=$(realpath "$1")
pmem_exe=$(realpath "$2")
work=$(realpath -m "${3:-$here/../../target/wine-test}")
wine=/usr/lib/wine/wine64 # the 64-bit loader itself: Debian's `wine` wants wine32
[[ -x $wine ]] || wine=$(command -v wine64)

export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
fail() { echo "wine-test: FAIL: $*" >&2; exit 1; }
mkdir -p "$work"

shim=$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll
if [[ ! -f $shim || $here/processprng.c -nt $shim ]]; then
    [[ -d $WINEPREFIX/drive_c ]] || "$wine" wineboot -i >/dev/null 2>&1
    x86_64-w64-mingw32-gcc -shared -O2 -o "$shim" "$here/processprng.c" "$here/processprng.def" -ladvapi32
fi

# Relative paths from one directory, so that both binaries print the same names.
cd "$work"
rm -rf fx lin win && mkdir fx lin win
python3 - <<'EOF'
import random, struct
rng = random.Random(7)
at = 0x1000
with open("fx/mem.lime", "wb") as out:
    for i in range(60):
        pages = rng.randint(1, 64)
        out.write(struct.pack("<IIQQQ", 0x4C694D45, 1, at, at + pages * 4096 - 1, 0))
        for p in range(pages):
            out.write(bytes(4096) if rng.random() < 0.25 else rng.randbytes(4096))
        at += (pages + rng.randint(1, 8)) * 4096
EOF
"$linux_pmem" convert -q --arch x86_64 -f raw fx/mem.lime fx/mem.raw 2>/dev/null
"$linux_pmem" convert -q -f dmp --arch x86_64 --cr3 0x1aa000 --build 19041 --processors 2 fx/mem.lime fx/mem.dmp 2>/dev/null
# From the dump, so that the ELF's pmem note carries the Windows metadata.
"$linux_pmem" convert -q -f elf fx/mem.dmp fx/mem.elf 2>/dev/null

run_wine() { "$wine" "$pmem_exe" "$@"; }
# Runs a command with its stderr kept for the failure message.
quietly() { "$@" 2>"$work/stderr" || fail "$* exited $?: $(cat "$work/stderr")"; }

run_wine --help | grep -q "Usage: pmem.exe" || fail "--help"
# The Windows build has the driver subcommand; the Linux one must not.
run_wine --help | grep -q "^  driver" || fail "driver subcommand missing in pmem.exe"

checked=0
for image in fx/mem.lime fx/mem.raw fx/mem.elf fx/mem.dmp; do
    name=$(basename "$image")
    "$linux_pmem" info --json "$image" >"lin/$name.info"
    run_wine info --json "$image" >"win/$name.info"
    cmp -s "lin/$name.info" "win/$name.info" || { diff "lin/$name.info" "win/$name.info" | head; fail "info $name differs"; }
    for format in lime raw elf dmp; do
        extra=()
        [[ $format == dmp && ($name == mem.lime || $name == mem.raw) ]] && extra=(--cr3 0x1aa000 --build 19041 --processors 2)
        quietly "$linux_pmem" convert -q --arch x86_64 -f "$format" "${extra[@]}" "$image" "lin/$name.$format"
        quietly run_wine convert -q --arch x86_64 -f "$format" "${extra[@]}" "$image" "win/$name.$format"
        cmp -s "lin/$name.$format" "win/$name.$format" || fail "convert $name -> $format differs"
        "$linux_pmem" verify "win/$name.$format" >/dev/null || fail "Linux verify of Wine's $name.$format"
        checked=$((checked + 1))
    done
done
for image in lin/*.lime lin/*.raw lin/*.elf lin/*.dmp; do
    run_wine verify "$image" >/dev/null || fail "Wine verify of $image"
done

# No driver: a clear error, exit status 1, nothing written.
set +e
out=$(run_wine acquire --driver nonexistent.sys win/live.lime 2>&1)
status=$?
set -e
[[ $status == 1 ]] || fail "acquire with a missing driver exited $status: $out"
grep -q "nonexistent.sys does not exist" <<<"$out" || fail "unclear error: $out"
[[ ! -e win/live.lime ]] || fail "an image was created without a driver"
set +e
out=$(run_wine driver extract win/x.sys 2>&1)
status=$?
set -e
[[ $status == 1 ]] && grep -q "without an embedded driver" <<<"$out" || fail "driver extract: $out"
# `driver load --write` parses (loading needs a real Windows kernel).
run_wine driver load --help | grep -q -- "--write" || fail "driver load has no --write"

echo "wine-test: pmem.exe under $("$wine" --version): --help, info on 4 formats, $checked conversions byte-identical to Linux, verify both ways, missing-driver error"

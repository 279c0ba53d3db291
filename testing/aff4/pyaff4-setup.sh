#!/usr/bin/env bash
# Installs pyaff4 0.34 (PyPI; the reference AFF4 library of the pmem 3.x era)
# into a private venv and prints the venv's python. Idempotent: a stamp file
# says the venv is complete; delete the venv to reinstall.
#
#   venv: ${PYAFF4_VENV:-${PMEM_GUEST_CACHE:-${PMEM_CACHE:-~/.cache/pmem}/guest}/pyaff4-venv}
#
# pyaff4 0.34 pins dependencies from 2017-2019 that do not install as-is on
# Python 3.11; what is done about each (nothing else is changed):
#  * pyyaml 5.4: its setup.py needs Cython < 3 and the venv's setuptools, so
#    it is built with `cython<3` installed first and no build isolation.
#  * aff4-snappy 0.5.1 (snappy statically built in): two C API fixes,
#    aff4-snappy-0.5.1.patch (Py_SET_SIZE; PY_SSIZE_T_CLEAN + Py_ssize_t).
#  * intervaltree 2.1.0: collections.MutableSet -> collections.abc.MutableSet,
#    intervaltree-2.1.0.patch.
#  * fastchunking 0.0.3: its sdist lacks its C++ sources (lib/rabinkarp.cpp,
#    lib/rabinkarp_gen.py) and cannot build anywhere. pyaff4 imports it at
#    module level and uses it only to chunk logical files for deduplication
#    (Container.writeLogicalStreamRabinHashBased); a stand-in module that
#    raises on use is installed instead. Memory images never reach it.
#  * aff4-snappy's decompression is wrong on some inputs (see below): cramjam
#    is installed too, for readers that swap it in.
#  * pyaff4's unpinned dependencies are pinned here to versions that install
#    on 3.11 from wheels and work with it (pycryptoplus needs pycryptodome
#    < 3.11 for Crypto.Util.py3compat; rdflib 4.2.2 needs pyparsing 2).
# Everything comes from PyPI through pip; the sdists are patched in a
# temporary directory, nothing is downloaded from elsewhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${PYAFF4_VENV:-${PMEM_GUEST_CACHE:-${PMEM_CACHE:-$HOME/.cache/pmem}/guest}/pyaff4-venv}
stamp="$venv/.pyaff4-0.34-r2"
py="$venv/bin/python3"
if [[ -f "$stamp" ]]; then
    echo "$py"
    exit 0
fi

log() { printf 'pyaff4-setup: %s\n' "$*" >&2; }
log "installing pyaff4 0.34 into $venv"
rm -rf "$venv"
python3 -m venv "$venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip() { timeout 600 "$py" -m pip --disable-pip-version-check -q "$@" >&2; }

# Build tools of the era, in the venv (no build isolation below).
pip install setuptools==65.5.0 wheel==0.42.0 'cython==0.29.37'
pip install --no-build-isolation pyyaml==5.4

sdist() { # NAME VERSION -> unpacked, patched source directory on stdout
    pip download --no-deps --no-binary :all: --no-build-isolation -d "$work/dl" "$1==$2"
    local f
    f=$(ls "$work/dl/"*"-$2".* | grep -i "${1//-/[-_]}-$2" | head -1)
    mkdir -p "$work/src"
    case "$f" in
    *.zip) "$py" -m zipfile -e "$f" "$work/src" ;;
    *) tar -xzf "$f" -C "$work/src" ;;
    esac
    local d
    d=$(ls -d "$work/src/"*"-$2" | grep -i "${1//-/[-_]}-$2" | head -1)
    patch -s -d "$d" -p1 <"$here/$1-$2.patch"
    echo "$d"
}
pip install --no-build-isolation "$(sdist aff4-snappy 0.5.1)"
pip install --no-build-isolation "$(sdist intervaltree 2.1.0)"

pip install --no-build-isolation \
    future==0.17.1 'rdflib[sparql]==4.2.2' SPARQLWrapper==1.8.5 isodate==0.6.0 \
    pyparsing==2.4.7 sortedcontainers==2.4.0 tzlocal==2.1 pytz==2021.1 \
    html5lib==1.0.1 six==1.16.0 webencodings==0.5.1 python-dateutil==2.8.0 \
    hexdump==3.3 pynacl==1.4.0 pycryptodome==3.10.1 pycryptoplus==0.0.1 \
    aes-keywrap==17.12.1 passlib==1.7.4 cryptography==3.4.8 cffi==1.15.1 \
    pycparser==2.21 expiringdict==1.2.1 lz4==4.3.3
pip install --no-deps pyaff4==0.34
# A correct snappy codec for readers that must not trust aff4-snappy: its
# bundled snappy, built by today's compilers, decompresses some chunks wrong
# (7 of 1024 chunks of a guest's kernel text: bytes in repeated patterns
# differ; cramjam's snappy and pmem's agree). testing/guest/aff4check.py
# swaps it in under pyaff4.
pip install cramjam==2.14.0

site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/fastchunking"
cat >"$site/fastchunking/__init__.py" <<'PY'
"""Stand-in for fastchunking 0.0.3, whose sdist cannot build (its C++ sources
are missing). pyaff4 uses it only to chunk logical files for deduplication;
see testing/aff4/pyaff4-setup.sh in pmem."""


class RabinKarpCDC:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("fastchunking is a stand-in (pmem testing/aff4/pyaff4-setup.sh)")
PY

# Proof that the patched pieces work, before the venv counts as complete.
"$py" - <<'PY' >&2
import snappy, yaml, intervaltree
data = bytes(range(256)) * 300
assert snappy.decompress(snappy.compress(data)) == data
t = intervaltree.IntervalTree()
t.addi(0, 10, "x")
assert len(t[5]) == 1
from pyaff4 import container, aff4_map, aff4_image, lexicon, rdfvalue  # noqa: F401
import pyaff4
print("pyaff4-setup: pyaff4", pyaff4.__file__)
PY
touch "$stamp"
log "done"
echo "$py"

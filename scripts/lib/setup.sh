# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).
#
# Every download, venv and built peer of the project's set-up lives under
# PMEM_CACHE (default ~/.cache/pmem): .ci/run points it at a fresh folder each
# run, so every CI run proves the set-up from nothing. Progress goes to
# stderr; standard output is left to results that callers capture.

export PMEM_CACHE=${PMEM_CACHE:-$HOME/.cache/pmem}
export PMEM_GUEST_CACHE=${PMEM_GUEST_CACHE:-$PMEM_CACHE/guest}
mkdir -p "$PMEM_CACHE"

setup_log() { printf '[setup] %s\n' "$*" >&2; }

# apt_ensure PKG...: installs the Debian packages that are not installed yet.
apt_ensure() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    setup_log "apt-get install ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# A Python 3 that can make venvs (Debian splits venv/ensurepip out of python3).
python_ensure() {
    if ! command -v python3 >/dev/null 2>&1; then
        apt_ensure python3 python3-venv
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_ensure python3-venv
    fi
}

# Python's C headers, for the sdists the pyaff4 check builds (aff4-snappy,
# pyyaml): Debian ships them apart from python3, in python3-dev.
python_dev_ensure() {
    python3 -c 'import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        >/dev/null 2>&1 || apt_ensure python3-dev
}

# What cargo itself needs beside rustup's toolchain: a C linker and libc's
# development files (build scripts link against them), pkg-config for -sys
# crates.
build_ensure() {
    apt_ensure gcc libc6-dev pkg-config
}

#!/usr/bin/env bash
# `pmem symbols` output against Volatility 3 (the version the guest suite
# pins, in its venv) and its ISF schemas: the ISF of the committed BTF sample
# (crates/pmem-symbols/tests/data/sample.btf) is checked by
# testing/symbols/isf_check.py (schema 6.2.0/6.3.0, vol3's validate, a
# task_struct read through vol3). With KERNEL=1, also an ISF of this host's
# /sys/kernel/btf/vmlinux and /proc/kallsyms (root), loaded as vol3's Linux
# kernel table.
# Needs: pmem (PMEM_BIN, or a debug build), python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
pmem=${PMEM_BIN:-target/debug/pmem}
[[ -x "$pmem" ]] || cargo build -p pmem
source scripts/lib/setup.sh
python3 -c 'import sys; sys.path.insert(0, "testing/guest"); import env; env.ensure_volatility()'
venv=$PMEM_GUEST_CACHE/venv
"$venv/bin/python" -c 'import jsonschema' 2>/dev/null \
    || "$venv/bin/pip" install -q --disable-pip-version-check jsonschema >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

printf '%s\n' 'ffffffff9d000000 T _text' 'ffffffff9d000000 T startup_64' \
    'ffffffff9e60a940 D init_task' 'ffffffff9e2001a0 R linux_banner' >"$work/kallsyms"
echo 'Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)' >"$work/version"
"$pmem" symbols --btf crates/pmem-symbols/tests/data/sample.btf --kallsyms "$work/kallsyms" \
    --banner "$work/version" -o "$work/sample" 2>/dev/null
"$venv/bin/python" testing/symbols/isf_check.py sample "$work/sample/linux/6.1.0-28-amd64.json.xz"
# vol3's own listing: valid, and the banner it will match images by.
"$venv/bin/vol" -q -s "$work/sample" isfinfo | grep -F "6.1.0-28-amd64.json.xz	True"

if [[ ${KERNEL:-0} == 1 ]]; then
    # A kernel without CONFIG_KALLSYMS_ALL lists no linux_banner.
    banner=()
    if grep -q ' linux_banner$' /proc/kallsyms; then banner=(--banner /proc/version); fi
    "$pmem" symbols --btf /sys/kernel/btf/vmlinux --kallsyms /proc/kallsyms "${banner[@]}" \
        --name host -o "$work/host"
    "$venv/bin/python" testing/symbols/isf_check.py kernel "$work/host/linux/host.json.xz"
fi

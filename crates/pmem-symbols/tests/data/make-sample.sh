#!/bin/sh
# Rebuilds tests/data/sample.btf from sample.c: clang writes DWARF (with
# the btf_decl_tag and btf_type_tag attributes, which GCC 12 lacks; so the
# base type names are clang's: `long`, `unsigned long long`), pahole encodes it as BTF
# into a .BTF section, objcopy extracts the raw blob, the same format as
# /sys/kernel/btf/vmlinux.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
clang -g -O0 -c sample.c -o "$work/sample.o"
pahole -J --btf_gen_all "$work/sample.o"
objcopy --dump-section .BTF=sample.btf "$work/sample.o"
ls -l sample.btf

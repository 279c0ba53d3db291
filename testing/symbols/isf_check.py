"""A pmem ISF against Volatility 3 itself (the version isf-check.sh pins).

    isf_check.py sample ISF   # the ISF of crates/pmem-symbols/tests/data/sample.btf
    isf_check.py kernel ISF   # the ISF of a real kernel's BTF and kallsyms

Both: valid against vol3's schemas 6.2.0 and 6.3.0 (jsonschema) and vol3's
own schemas.validate. sample: loaded as a vol3 IntermediateSymbolTable, a
task_struct is read from a hand-made buffer through it: plain members,
bitfields, members of anonymous unions and structs (which vol3 lifts into
the parent), a char array, a pointer. kernel: loaded as vol3's
LinuxKernelIntermedSymbols (which binds its extension classes to the kernel
types: this fails when a type it needs is missing), with the types the
plugins and the KASLR search use.
"""
import json
import lzma
import pathlib
import struct
import sys

import jsonschema
import volatility3.schemas as schemas
from volatility3.framework import constants, contexts
from volatility3.framework.layers.physical import BufferDataLayer
from volatility3.framework.symbols.intermed import IntermediateSymbolTable

# vol3 binds this module by attribute; its CLI imports it through the plugins.
import volatility3.framework.symbols.linux.extensions.network  # noqa: F401
from volatility3.framework.symbols.linux import LinuxKernelIntermedSymbols


def validate(path: pathlib.Path) -> None:
    with lzma.open(path, "rt") as f:
        isf = json.load(f)
    schema_dir = pathlib.Path(schemas.__file__).parent
    for version in ("6.2.0", "6.3.0"):
        schema = json.loads((schema_dir / f"schema-{version}.json").read_text())
        jsonschema.validate(isf, schema)
        print(f"{path.name}: valid against vol3's schema-{version}.json")
    assert schemas.validate(isf, use_cache=False), "vol3's schemas.validate rejects it"
    print(f"{path.name}: vol3 schemas.validate: True")


def load(path: pathlib.Path, table_class):
    ctx = contexts.Context()
    table = table_class(ctx, "tables.pmem", "pmem", path.resolve().as_uri())
    ctx.symbol_space.append(table)
    print(f"{path.name}: loaded as {table_class.__name__}, producer {table.producer.name}")
    return ctx, table


def check_sample(path: pathlib.Path) -> None:
    ctx, table = load(path, IntermediateSymbolTable)
    assert table.get_type("task_struct").size == 120
    memory = bytearray(4096)
    base = 0x100
    # flags:3 = 5, in_execve:1 = 1, kind:2 = 2, nice:5 = -3 (bits 0b11101)
    struct.pack_into("<I", memory, base + 8, 5 | 1 << 3 | 2 << 4 | (-3 & 0x1F) << 6)
    struct.pack_into("<i", memory, base + 12, 4242)
    struct.pack_into("<HH", memory, base + 24, 0x1111, 0x2222)
    memory[base + 48 : base + 56] = b"swapper\0"
    struct.pack_into("<Q", memory, base + 64, 0x800)
    ctx.add_layer(BufferDataLayer(ctx, "layers.memory", "memory", bytes(memory)))
    task = ctx.object("pmem" + constants.BANG + "task_struct", layer_name="memory", offset=base)
    assert task.pid == 4242, task.pid
    assert (task.flags, task.in_execve, task.kind) == (5, 1, 2)
    # vol3's BitField does not sign-extend (objects.BitField): 0b11101.
    assert task.nice == 0b11101, task.nice
    assert (task.low, task.high, task.wide) == (0x1111, 0x2222, 0x22221111)
    assert task.comm.cast("string", max_length=16, errors="replace") == "swapper"
    # (vol3 masks a pointer to its layer's addresses: 12 bits for this buffer.)
    assert task.parent == 0x800, hex(task.parent)
    assert task.parent.vol.subtype.vol.type_name == "pmem!task_struct"
    symbol = table.get_symbol("init_task")
    assert symbol.address == 0xFFFFFFFF8260A940, hex(symbol.address)
    print(f"{path.name}: task_struct read through vol3: members, bitfields, anonymous members, pointer: ok")


def check_kernel(path: pathlib.Path) -> None:
    _, table = load(path, LinuxKernelIntermedSymbols)
    task = table.get_type("task_struct")
    for member in ("pid", "comm", "tasks", "mm", "active_mm", "files", "parent"):
        assert member in task.vol.members, member
    for name in ("list_head", "module", "mm_struct", "files_struct", "file", "dentry"):
        print(f"  {name}: {table.get_type(name).size} bytes")
    print(f"{path.name}: {len(list(table.symbols))} symbols; kernel types as vol3's Linux table: ok")


if __name__ == "__main__":
    kind, isf_path = sys.argv[1], pathlib.Path(sys.argv[2])
    validate(isf_path)
    {"sample": check_sample, "kernel": check_kernel}[kind](isf_path)

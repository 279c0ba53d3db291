"""The guest's initramfs: busybox-static, the virtio block modules, /init.

It is written as a newc cpio archive directly (no cpio tool, no root, no
device nodes: the kernel's devtmpfs provides /dev). /init only brings up the
data disk and runs the case script the host put on it, so one initramfs per
kernel serves every case.
"""

import lzma
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent

# What the cloud kernels need to see the virtio data disk, and FUSE for
# `pmem mount` (mountcheck.py); whichever of these are built in (6.12 has
# virtio, virtio_pci and fuse built in) are simply skipped.
WANTED = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
          "fuse"]


def module_load_order(modules_dir):
    """Module files (relative to modules_dir) to insmod, dependencies first,
    from the modules.dep that `depmod -b` generated."""
    deps = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (modules_dir / "modules.builtin").read_text().splitlines()
    }
    order = []

    def visit(path):
        if path in order:
            return
        # modules.dep lists the full closure, deepest dependency last.
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for name in WANTED:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise SystemExit(f"initramfs: module {name} is neither in modules.dep nor built in")
    return order


class Cpio:
    """Minimal newc writer: regular files, directories and symlinks."""

    def __init__(self):
        self.parts = []
        self.ino = 1

    def _entry(self, name, mode, data=b""):
        name_bytes = name.encode() + b"\0"
        header = b"070701" + b"".join(
            b"%08X" % v
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0)
        )
        self.ino += 1
        pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
        self.parts += [header, name_bytes, pad(len(header) + len(name_bytes)), data, pad(len(data))]

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, data, mode=0o755):
        self._entry(name, 0o100000 | mode, data)

    def bytes(self):
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def build(kernel, out_path):
    """Writes the initramfs for `kernel` (an env.Kernel) to out_path."""
    modules_dir = kernel.modules()
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "data", "tmp", "modules"):
        archive.dir(d)
    archive.file("bin/busybox", Path(kernel.busybox).read_bytes())  # the guest's architecture
    names = []
    for i, rel in enumerate(module_load_order(modules_dir)):
        data = (modules_dir / rel).read_bytes()
        if rel.endswith(".xz"):
            # busybox insmod hands the file to init_module(), which does not
            # decompress: unpack 6.12's .ko.xz here.
            data = lzma.decompress(data)
        name = f"modules/{i:02d}-{Path(rel).name.split('.ko')[0]}.ko"
        archive.file(name, data, 0o644)
        names.append(name)
    archive.file("init", (HERE / "init.sh").read_bytes())
    Path(out_path).write_bytes(archive.bytes())
    return names

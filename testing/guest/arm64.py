"""arm64 (aarch64) guests: the same proofs as on x86-64, on QEMU's `virt` board.

    python3 testing/guest/guest.py suite --case 6.1-arm64        # direct boot (-kernel)
    python3 testing/guest/guest.py suite --case 6.1-arm64-uefi   # through UEFI firmware
    python3 testing/guest/guest.py boot --kernel 6.1-arm64       # a shell in an arm64 guest

Everything arm64-specific lives here; env.py, vm.py, initramfs.py and guest.py
only ask the kernel object (an Arm64Kernel) for it:

- the kernel (`linux-image-6.1.0-56-cloud-arm64`), `busybox-static:arm64` and
  the UEFI firmware (`qemu-efi-aarch64`) are downloaded with a private apt
  state (`APT::Architecture=arm64`, its own lists, cache, status and
  sources.list under the cache directory) and unpacked with `dpkg -x`: the
  host's dpkg architectures and package lists are left alone, nothing is
  installed;
- pmem and the marker agent are built for aarch64-unknown-linux-musl (linked
  by rust-lld, ring's C by clang: see .cargo/config.toml);
- QEMU: `qemu-system-aarch64 -machine virt -cpu cortex-a57 -accel tcg`, the
  console on the board's PL011 UART (ttyAMA0, built into the kernel), the data
  disk on virtio-blk-pci (the initramfs's virtio modules are the same as on
  x86-64). With "+uefi" in the case's machine the firmware (ArmVirtQemu's
  QEMU_EFI.fd, as -bios) boots the kernel's EFI stub from QEMU's fw_cfg
  (`-kernel`, no bootloader, no disk image): System RAM is then split by the
  firmware's reservations;
- /proc/iomem on arm64 names "Kernel code" (_stext up to __init_begin: text
  and rodata) and "Kernel data" (written all the time): the kernel check
  compares "Kernel code" with QEMU's dump;
- cortex-a57 has no E0PD, so this kernel (KASLR on) runs with KPTI, its
  default on such CPUs: every system call pays for it.

The per-case Arm64Hook adds the architecture checks: the manifests name
aarch64, the ELF image carries EM_AARCH64 (QEMU's dump too), and `pmem info`
reports aarch64.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import env
import module_cases

TARGET = "aarch64-unknown-linux-musl"
ROOT = env.CACHE / "arm64"
APT = ROOT / "apt"
BUSYBOX = ROOT / "busybox" / "bin" / "busybox"
FIRMWARE = ROOT / "firmware" / "QEMU_EFI.fd"
EM_AARCH64 = 183
CPU_TYPE_ARM64 = 0x0100000C
# Only Debian's own archive: the host's other sources (amd64-only ones) would
# fail or mislead with APT::Architecture=arm64.
SOURCES = """\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
"""


def apt_options():
    return [
        "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
        "-o", f"Dir::State::Lists={APT / 'lists'}", "-o", f"Dir::Cache={APT / 'cache'}",
        "-o", f"Dir::State::Status={APT / 'status'}",
        "-o", f"Dir::Etc::SourceList={APT / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={APT / 'sources.list.d'}",
    ]


_updated = False


def apt_update():
    """The private package lists (arm64 only), refreshed once per run."""
    global _updated
    if _updated:
        return
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (APT / d).mkdir(parents=True, exist_ok=True)
    (APT / "status").touch()
    (APT / "sources.list").write_text(SOURCES)
    env.log("arm64: apt-get update (private state, APT::Architecture=arm64)")
    env.run(["apt-get", *apt_options(), "update", "-qq"])
    _updated = True


def download(package, dest):
    """Downloads one arm64 package (never installs it), unpacks it into dest."""
    ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        env.run(["apt-get", *apt_options(), "download", package], cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        Path(dest).mkdir(parents=True, exist_ok=True)
        env.run(["dpkg", "-x", str(deb), str(dest)])
        return deb.name


class Arm64Kernel(env.Kernel):
    """A Debian arm64 cloud kernel, and how to run it under QEMU."""

    target = TARGET
    busybox = BUSYBOX
    kernel_ranges = ("Kernel code",)

    def ensure(self):
        if not shutil.which("qemu-system-aarch64"):
            env.apt_update()
            env.log("apt-get install qemu-system-arm")
            env.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-arm"],
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        ROOT.mkdir(parents=True, exist_ok=True)
        # Only the one file of each is kept (the firmware package also holds
        # 4 x 64 MiB of AAVMF flash images).
        for path, package, inside in ((BUSYBOX, "busybox-static:arm64", "bin/busybox"),
                                      (FIRMWARE, "qemu-efi-aarch64", "usr/share/qemu-efi-aarch64/QEMU_EFI.fd")):
            if path.exists():
                continue
            apt_update()
            env.log(f"arm64: {package} (unpacked, {inside} kept)")
            with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
                download(package, Path(tmp) / "tree")
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(tmp) / "tree" / inside, path)
        if (self.root / "release").exists():
            return
        apt_update()
        names = env.run(["apt-cache", *apt_options(), "pkgnames", "linux-image-"]).split()
        found = sorted((int(m.group(1)), n) for n in names if (m := self.pattern.match(n)))
        if not found:
            raise SystemExit(f"setup: no arm64 package matches {self.pattern.pattern}")
        package = self.preferred if self.preferred in names else found[-1][1]
        env.log(f"kernel {self.key}: downloading {package}")
        self.root.mkdir(parents=True, exist_ok=True)
        tree = self.root / "tree"
        if tree.exists():
            shutil.rmtree(tree)
        deb = download(package, tree)
        release = package.removeprefix("linux-image-")
        if not (tree / "boot" / f"vmlinuz-{release}").exists():
            raise SystemExit(f"setup: {deb} has no boot/vmlinuz-{release}")
        env.run(["depmod", "-b", str(tree), release])
        (self.root / "package").write_text(deb + "\n")
        (self.root / "release").write_text(release + "\n")

    def qemu(self, guest, qmp_socket):
        """The QEMU command line for vm.Guest (see the module docstring)."""
        machine, _, firmware = guest.machine.partition("+")
        command = [
            "qemu-system-aarch64", "-accel", "tcg", "-machine", machine, "-cpu", "cortex-a57",
            "-m", str(guest.memory_mib), "-smp", str(guest.smp),
            "-nodefaults", "-display", "none", "-no-reboot",
        ]
        if firmware == "uefi":
            command += ["-bios", str(FIRMWARE)]
        elif firmware:
            raise SystemExit(f"arm64: unknown firmware {firmware!r} in machine {guest.machine!r}")
        append = f"console=ttyAMA0 panic=-1 loglevel=4 transparent_hugepage=never {guest.append}".strip()
        return command + [
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", append,
            "-drive", f"file={guest.disk},if=none,id=data,format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=data",
            "-serial", "stdio", "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        ]


KERNEL = Arm64Kernel("6.1-arm64", r"^linux-image-6\.1\.0-(\d+)-cloud-arm64$", "linux-image-6.1.0-56-cloud-arm64")
env.KERNELS.setdefault(KERNEL.key, KERNEL)


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    return struct.unpack_from("<H", head, 18)[0] if head[:4] == b"\x7fELF" and len(head) == 20 else None


KPTI = "Kernel page table isolation (KPTI)"  # arm64's cpufeature line in dmesg


class Arm64Hook(module_cases.NoHook):
    """The architecture checks of an arm64 case (after guest.py's own).
    kpti=True: the guest must run with KPTI (the kernel's default with KASLR
    on a CPU without E0PD); otherwise its state is only reported."""

    def __init__(self, kpti=False):
        self.kpti = kpti

    def stage(self, case, staging):
        pass

    def setup_lines(self):
        return ["dmesg > $OUT/dmesg.txt"]

    def check(self, results, case, out):
        dmesg = (out / "dmesg.txt").read_text(errors="replace") if (out / "dmesg.txt").exists() else ""
        kpti = f"CPU features: detected: {KPTI}" in dmesg
        kaslr = next((x.split("] ", 1)[-1] for x in dmesg.splitlines() if "KASLR" in x), "no KASLR line")
        state = f"KPTI {'on' if kpti else 'off'}; {kaslr}"
        if self.kpti:
            results.add(case.name, "arm64", "KPTI on (the kernel's default here)", kpti, state)
        else:
            print(f"  {case.name}: {state}", flush=True)
        manifests = sorted(out.glob("image.*.json")) + sorted(out.glob("stream.*.json"))
        for manifest in manifests:
            arch = json.loads(manifest.read_text()).get("host", {}).get("arch")
            results.add(case.name, manifest.name.removesuffix(".json"), "manifest names aarch64",
                        arch == "aarch64", f"host.arch {arch}")
        results.add(case.name, "arm64", "manifests checked", bool(manifests), f"{len(manifests)} manifests")
        dump = out.parent / "dump.elf"
        if dump.exists():
            machine = elf_machine(dump)
            results.add(case.name, "qemu dump", "ELF e_machine EM_AARCH64", machine == EM_AARCH64,
                        f"e_machine {machine}")
        host_pmem = env.REPO / "target" / env.MUSL / "release" / "pmem"
        for fmt in case.formats:
            image = out / f"image.{fmt}"
            if not image.exists():
                continue
            if fmt == "elf":
                machine = elf_machine(image)
                results.add(case.name, fmt, "ELF e_machine EM_AARCH64", machine == EM_AARCH64,
                            f"e_machine {machine}")
            if fmt == "macho":
                with open(image, "rb") as f:
                    cputype = struct.unpack("<I", f.read(8)[4:8])[0]
                results.add(case.name, fmt, "Mach-O cputype CPU_TYPE_ARM64", cputype == CPU_TYPE_ARM64,
                            f"cputype {cputype:#x}")
            proc = subprocess.run([str(host_pmem), "info", str(image)], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("architecture:")), "")
            results.add(case.name, fmt, "pmem info reports aarch64", re.search(r":\s+aarch64\b", line),
                        line or f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}")


def cases(Case):
    """The arm64 cases, built with guest.py's Case."""
    return [
        # Streaming is the same code on every architecture (proven on x86-64).
        Case("6.1-arm64", KERNEL.key, 1024, ["lime", "elf"], [], ["avml"], machine="virt",
             timeout=900, hook=Arm64Hook(kpti=True), symbols_isf=True,
             note="arm64 direct boot (virt, cortex-a57, KPTI on): lime, elf, AVML"),
        # raw here: its zero padding then also fills the firmware's reserved gaps.
        Case("6.1-arm64-uefi", KERNEL.key, 768, ["raw", "elf", "macho", "aff4"], machine="virt+uefi",
             timeout=900, hook=Arm64Hook(),
             note="arm64 through UEFI firmware: System RAM split by its reservations; raw, elf, Mach-O, AFF4"),
    ]


def ensure_avml():
    """AVML for aarch64 (the speed comparison, testing/bench/arm64.py), from
    crates.io into the cache, once. Without default features: no upload code."""
    root = env.CACHE / "avml-arm64"
    avml = root / "bin" / "avml"
    if not avml.exists():
        env.log(f"cargo install avml {env.AVML_VERSION} --target {TARGET} into {root}")
        env.run(["cargo", "install", "avml", "--version", env.AVML_VERSION, "--locked", "--no-default-features",
                 "--target", TARGET, "--root", str(root)],
                env={**os.environ, "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER": "rust-lld",
                     "CC_aarch64_unknown_linux_musl": "clang", "AR_aarch64_unknown_linux_musl": "llvm-ar"})
    return avml

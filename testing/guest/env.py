"""Everything the guest harness needs on the host, installed idempotently.

Nothing here touches the host's own kernel: the Debian kernel packages are
only downloaded and unpacked into the cache directory. Each step first checks
whether its result is already there, so a second run costs a few seconds.
"""

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Every download, venv and built peer of the project's set-up lives under
# PMEM_CACHE (CI points it at a fresh folder per run, so every run proves the
# set-up); PMEM_GUEST_CACHE overrides the guest part alone.
PMEM_CACHE = Path(os.environ.get("PMEM_CACHE", Path.home() / ".cache" / "pmem"))
CACHE = Path(os.environ.get("PMEM_GUEST_CACHE", PMEM_CACHE / "guest"))
MUSL = "x86_64-unknown-linux-musl"
VOLATILITY = "volatility3==2.28.2"
# Debian packages the harness runs (command -> package). cpio is not needed:
# the initramfs is written by initramfs.py.
DEB_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "/bin/busybox": "busybox-static",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "depmod": "kmod",
    # The compressed cases: `zstd -d` reads pmem's .zst images, Volatility 3's
    # AVML layer loads libsnappy.
    "zstd": "zstd",
    "/usr/lib/x86_64-linux-gnu/libsnappy.so.1": "libsnappy1v5",
    # The static musl build compiles ring's C (pmem-upload's TLS).
    "x86_64-linux-musl-gcc": "musl-tools",
    # Kernel debuggers that open pmem's ELF image with the guest's debug
    # vmlinux (crashcheck.py).
    "crash": "crash",
    "gdb": "gdb",
}


class Kernel:
    """A Debian cloud kernel: which package, and where it is unpacked."""

    # What differs between architectures (arm64.py's Arm64Kernel overrides it):
    target = MUSL  # the Rust target pmem and the agent are built for, for this guest
    busybox = Path("/bin/busybox")  # the initramfs's busybox
    kernel_ranges = ("Kernel code", "Kernel rodata")  # /proc/iomem names compared with QEMU's dump
    qemu = None  # None: vm.Guest's x86-64 command line; else qemu(guest, qmp_socket) -> argv
    ensure = None  # None: ensure_kernel() downloads it; else ensure() does

    def __init__(self, key, pattern, preferred=None):
        self.key = key  # short name used on the command line: "6.1", "6.12"
        self.pattern = re.compile(pattern)
        self.preferred = preferred

    @property
    def root(self):
        return CACHE / "kernels" / self.key

    def release(self):
        return (self.root / "release").read_text().strip()

    def vmlinuz(self):
        return self.root / "tree" / "boot" / f"vmlinuz-{self.release()}"

    def modules(self):
        return self.root / "tree" / "lib" / "modules" / self.release()


KERNELS = {
    # The issue names 6.1.0-56; a newer ABI is used only if the archive drops it.
    "6.1": Kernel("6.1", r"^linux-image-6\.1\.0-(\d+)-cloud-amd64$", "linux-image-6.1.0-56-cloud-amd64"),
    # The 6.12 line for bookworm: the newest one apt lists.
    "6.12": Kernel("6.12", r"^linux-image-6\.12\.(\d+)\+deb12-cloud-amd64$"),
}


def log(message):
    # stderr: callers capture a helper's standard output as its result (a path).
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def run(cmd, **kwargs):
    """Runs a command, failing loudly with its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(
            f"setup: {' '.join(map(str, cmd))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


_apt_updated = False


def apt_update():
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        run(["apt-get", "update", "-qq"])
        _apt_updated = True


def ensure_debs():
    missing = sorted({pkg for tool, pkg in DEB_TOOLS.items() if not shutil.which(tool) and not os.path.exists(tool)})
    if missing:
        apt_update()
        log(f"apt-get install {' '.join(missing)}")
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_musl_target():
    if MUSL not in run(["rustup", "target", "list", "--installed"]).split():
        log(f"rustup target add {MUSL}")
        run(["rustup", "target", "add", MUSL])


def venv_python():
    return CACHE / "venv" / "bin" / "python3"


def ensure_volatility():
    """Volatility 3, pinned, in a venv of its own so the host's Python stays clean."""
    # jsonschema: testing/symbols/isf_check.py checks pmem's ISFs against
    # vol3's schema files with it.
    stamp = CACHE / "venv" / f".{VOLATILITY}+jsonschema"
    if stamp.exists():
        return
    log(f"installing {VOLATILITY} and jsonschema into {CACHE / 'venv'}")
    run([sys.executable, "-m", "venv", str(CACHE / "venv")])
    run([str(venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", VOLATILITY,
         "jsonschema"])
    stamp.touch()


def candidates(kernel):
    """Installable package names matching the kernel's pattern, newest last."""
    names = run(["apt-cache", "pkgnames", "linux-image-"]).split()
    found = []
    for name in names:
        m = kernel.pattern.match(name)
        # pkgnames also lists virtual names; keep those apt can download.
        if m and subprocess.run(["apt-cache", "show", "--no-all-versions", name],
                                capture_output=True).returncode == 0:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def resolve_package(kernel):
    for attempt in range(2):
        names = candidates(kernel)
        if kernel.preferred in names:
            return kernel.preferred
        if names:
            return names[-1]
        if attempt == 0:
            apt_update()  # an empty or stale list: refresh once
    raise SystemExit(
        f"setup: apt lists no package matching {kernel.pattern.pattern}; "
        f"check `apt-cache search linux-image-{kernel.key}` and /etc/apt/sources.list*"
    )


def ensure_kernel(kernel):
    """Downloads and unpacks one kernel package (never installs it)."""
    if kernel.ensure:
        return kernel.ensure()
    if (kernel.root / "release").exists():
        return
    package = resolve_package(kernel)
    log(f"kernel {kernel.key}: downloading {package}")
    kernel.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernel.root) as tmp:
        run(["apt-get", "download", package], cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        tree = Path(tmp) / "tree"
        run(["dpkg", "-x", str(deb), str(tree)])
        release = package.removeprefix("linux-image-")
        if not (tree / "boot" / f"vmlinuz-{release}").exists():
            raise SystemExit(f"setup: {deb.name} has no boot/vmlinuz-{release}")
        # The .deb ships no modules.dep; initramfs.py resolves dependencies from it.
        run(["depmod", "-b", str(tree), release])
        if (kernel.root / "tree").exists():
            shutil.rmtree(kernel.root / "tree")
        tree.rename(kernel.root / "tree")
        (kernel.root / "package").write_text(deb.name + "\n")
        # Written last: its presence means the kernel is complete.
        (kernel.root / "release").write_text(release + "\n")


def package_version(kernel):
    """The Debian version of the unpacked kernel package (e.g. 6.1.192-2)."""
    return (kernel.root / "package").read_text().strip().split("_")[1]


# The suite runs cases on threads: downloads and builds into the cache go
# one at a time.
_CACHE_LOCK = threading.RLock()


def serialized(function):
    @functools.wraps(function)
    def locked(*args, **kwargs):
        with _CACHE_LOCK:
            return function(*args, **kwargs)
    return locked


def header_packages(kernel):
    """The packages (name, version) to unpack for building modules against
    the kernel: linux-headers-<release> at the image's version, and what its
    Depends line names (the -common tree, linux-kbuild) at the version that
    line asks for. An exact `(= V)` is pinned; `(>= V)` takes the version apt
    serves now, which may be a newer Debian revision than the image's (the
    archive moves kbuild on without rebuilding the headers)."""
    version = package_version(kernel)
    flavour = f"linux-headers-{kernel.release()}"
    show = run(["apt-cache", "show", f"{flavour}={version}"])
    line = next(x for x in show.splitlines() if x.startswith("Depends:"))
    wanted = re.findall(r"(linux-(?:headers-[^\s,]+-common|kbuild-[^\s,(]+))\s*(?:\((=|>=)\s*([^)]+)\))?", line)
    if len(wanted) != 2:
        raise SystemExit(f"setup: {flavour}: unexpected Depends: {line}")
    packages = [(flavour, version)]
    for name, relation, needed in wanted:
        if relation == "=":
            packages.append((name, needed))
            continue
        served = candidate_version(name)
        if relation == ">=" and subprocess.run(["dpkg", "--compare-versions", served, "ge", needed]).returncode != 0:
            raise SystemExit(f"setup: {flavour} needs {name} >= {needed}; apt serves {served}")
        packages.append((name, served))
    return packages


def candidate_version(name):
    """The version of a package that `apt-get download NAME` would fetch."""
    policy = run(["apt-cache", "policy", name])
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        raise SystemExit(f"setup: apt serves no version of {name}:\n{policy}")
    return match.group(1)


@serialized
def ensure_headers(kernel):
    """The kernel's build headers for out-of-tree modules (pmem's module):
    the packages of `header_packages`, downloaded and unpacked (never
    installed). Returns the directory to pass as `make -C`."""
    root = kernel.root / "headers"
    build = root / "usr" / "src" / f"linux-headers-{kernel.release()}"
    if (root / ".complete").exists():
        return build
    packages = header_packages(kernel)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=kernel.root) as tmp:
        for name, version in packages:
            log(f"kernel {kernel.key}: downloading {name}={version}")
            run(["apt-get", "download", f"{name}={version}"], cwd=tmp)
        for deb in Path(tmp).glob("*.deb"):
            run(["dpkg", "-x", str(deb), str(root)])
    # The flavour's Makefile includes the -common tree by absolute path.
    makefile = build / "Makefile"
    text = makefile.read_text()
    fixed = re.sub(r"(include|MAKEARGS := -C) /usr/src/", lambda m: f"{m.group(1)} {root}/usr/src/", text)
    if fixed == text:
        raise SystemExit(f"setup: {makefile}: no /usr/src/ include to rewrite:\n{text}")
    makefile.write_text(fixed)
    (root / ".complete").touch()
    return build


AVML_ROOT = CACHE / "avml"
AVML_VERSION = "0.21.0"


@serialized
def ensure_avml():
    """AVML from crates.io (musl, with `avml convert`), into the cache, once:
    the guest suite reads pmem's AVML images with it, the benchmark races it."""
    avml = AVML_ROOT / "bin" / "avml"
    if not avml.exists():
        log(f"cargo install avml {AVML_VERSION} into {AVML_ROOT}")
        run(["cargo", "install", "avml", "--version", AVML_VERSION, "--locked",
             "--no-default-features", "--features", "convert", "--target", MUSL, "--root", str(AVML_ROOT)])
    return avml


DRGN = "drgn==0.3.0"


@serialized
def ensure_drgn():
    """drgn, pinned, in a venv of its own (PyPI ships it as a binary wheel).
    Returns the venv's python."""
    venv = CACHE / "drgn-venv"
    python = venv / "bin" / "python3"
    stamp = venv / f".{DRGN}"
    if not stamp.exists():
        log(f"installing {DRGN} into {venv}")
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:", DRGN])
        stamp.touch()
    return python


@serialized
def ensure_debug_vmlinux(kernel):
    """The kernel's vmlinux with debug info, from Debian's
    linux-image-<release>-dbg (~280 MB): only the vmlinux is unpacked into
    the cache, the package is deleted. The -dbg package's Debian revision
    is that of the kernel image when the archive still has it, else the
    newest one listed (it can lag or lead the image's); crash and drgn then
    refuse a vmlinux that is not the guest's, so a wrong one cannot pass.
    Returns the vmlinux path."""
    release = kernel.release()
    vmlinux = kernel.root / "debug" / f"vmlinux-{release}"
    if vmlinux.exists():
        return vmlinux
    package = f"linux-image-{release}-dbg"
    versions = [line.split("|")[1].strip() for line in run(["apt-cache", "madison", package]).splitlines()]
    if not versions:
        apt_update()
        versions = [line.split("|")[1].strip() for line in run(["apt-cache", "madison", package]).splitlines()]
    if not versions:
        raise SystemExit(f"setup: apt lists no {package}; check /etc/apt/sources.list*")
    image_version = package_version(kernel)
    version = image_version if image_version in versions else versions[0]
    vmlinux.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernel.root) as tmp:
        log(f"kernel {kernel.key}: downloading {package}={version} (only its vmlinux is kept)")
        run(["apt-get", "download", f"{package}={version}"], cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        member = f"./usr/lib/debug/boot/vmlinux-{release}"
        log(f"kernel {kernel.key}: unpacking {member}")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        run(["tar", "-x", "-C", tmp, member], stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit(f"setup: dpkg-deb --fsys-tarfile {deb.name} failed ({tar.returncode})")
        deb.unlink()
        # Renamed into place last: its presence means it is complete.
        (Path(tmp) / member).rename(vmlinux)
    return vmlinux


def build_pmem(target=MUSL):
    """Static musl builds of pmem and the agent: they run in the guest as-is,
    and the same pmem binary (x86-64) serves `info`/`verify` on the host."""
    log(f"cargo build --release ({target}): pmem, pmem-guest-agent")
    result = subprocess.run(
        ["cargo", "build", "--release", "--target", target, "-p", "pmem", "-p", "pmem-guest-agent"],
        cwd=REPO, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"setup: building pmem failed:\n{result.stderr[-4000:]}")
    out = REPO / "target" / target / "release"
    return out / "pmem", out / "pmem-guest-agent"


def setup(kernels=tuple(KERNELS), volatility=True):
    CACHE.mkdir(parents=True, exist_ok=True)
    ensure_debs()
    ensure_musl_target()
    if volatility:
        ensure_volatility()
    for key in kernels:
        ensure_kernel(KERNELS[key])
        log(f"kernel {key}: {KERNELS[key].release()}")

#!/usr/bin/env python3
"""pmem's end-to-end guest harness: real Debian kernels under QEMU (TCG).

    python3 testing/guest/guest.py setup            # install/download, idempotent
    python3 testing/guest/guest.py demo             # boot, acquire, show `pmem info`
    python3 testing/guest/guest.py suite            # every proof; exit 1 on any failure
    python3 testing/guest/guest.py suite --case 6.1-1g --format lime   # one case by hand
    python3 testing/guest/guest.py list             # the cases
    python3 testing/guest/guest.py boot --kernel 6.12   # interactive guest shell

See testing/guest/README.md for what the suite proves and how to extend it.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import env
import aff4check
import crashcheck
import arm64  # arm64 guests: registers their kernel, cases(Case)
import images
import initramfs
import markers
import module_cases
import symcheck
import vm
import mountcheck
import windowcheck

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("PMEM_GUEST_WORK", HERE / "work"))
MARKER_PAGES = 16384  # 64 MiB of 4 KiB pages
VOL_TIMEOUT = 600

# Which Volatility 3 layer must sit on top of the file for each format.
EXPECTED_LAYER = {"lime": "LimeLayer", "elf": "Elf64Layer", "raw": "FileLayer", "avml": "AVMLLayer"}

# Compressed acquisitions: name -> (pmem acquire arguments, manifest format).
COMPRESSED = {
    "avml": ("--format lime --compress snappy", "avml"),
    "raw.zst": ("--format raw --compress zstd", "raw"),
}


@dataclass
class Case:
    """One guest boot: a kernel, a memory size, what pmem acquires in it."""

    name: str
    kernel: str
    memory_mib: int
    formats: list  # written to a file with `pmem acquire --format F FILE`
    stream: list = field(default_factory=list)  # `pmem acquire --format F - > FILE`
    compressed: list = field(default_factory=list)  # keys of COMPRESSED, to a file
    timeout: int = 900
    machine: str = "pc"  # QEMU -machine, e.g. to move RAM above 4 GiB
    note: str = ""
    # Extra guest steps and checks (module_cases.ModuleHook: pmem's kernel module).
    hook: object = None
    # crash and drgn open the ELF image with the guest's debug vmlinux (crashcheck.py).
    debuggers: bool = False
    # `pmem symbols` on the captured symbols, and Volatility 3's pslist
    # through that ISF alone (symcheck.py; arm64: a schema check).
    symbols_isf: bool = False
    # Smear and the kernel window (windowcheck.py): --reread with and without
    # churn, --order kernel-first against address order.
    window: bool = False
    # `pmem mount` (mountcheck.py): live memory as files, read through
    # pmem's readers, the live page, unmount on SIGTERM and SIGINT.
    mount: bool = False

    @property
    def seed(self):
        # Deterministic per case, and different between cases (negative test).
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "little")


# Under TCG pmem needs about 32 s per GiB in the guest (software SHA-256 of
# the image dominates; the streamed cases also hash the memory), so the GiB
# acquired in all cases set the suite's time: every format is proven on both
# kernels, but not every format in every layout.
CASES = [
    Case("6.1-1g", "6.1", 1024, ["lime", "raw", "elf"], ["lime"], ["avml"], debuggers=True,
         symbols_isf=True, mount=True,
         note="every format, streamed lime, AVML compressed LiME; crash and drgn on the ELF image; "
              "vol3 pslist through the ISF of the captured symbols; pmem mount (fuse.ko)"),
    # raw.zst (COMPRESSED) is not in a case: ruzstd needs ~240 s per GiB
    # under TCG, too much for CI; `zstd -d` round trips are in the CLI tests.
    Case("6.12-1g", "6.12", 1024, ["raw", "elf", "macho"], ["raw"], window=True, mount=True,
         note="raw, elf and Mach-O, streamed raw; smear measured by --reread with and without "
              "churn, the kernel window in kernel-first and address order; pmem mount (FUSE built in)"),
    Case("6.12-2g", "6.12", 2048, ["lime"], symbols_isf=True,
         note="2 GiB guest (lime on 6.12); vol3 pslist through the ISF of the captured symbols"),
    # 1 GiB below the PCI hole, 512 MiB from 4 GiB up: the smallest guest whose
    # RAM continues above 4 GiB (as -m 3584 would, with 2 GiB more to copy).
    Case("6.1-hole", "6.1", 1536, ["elf", "aff4"], machine="pc,max-ram-below-4g=1G",
         note="RAM split by the PCI hole, 512 MiB above 4 GiB; elf and AFF4"),
]
CASES += module_cases.cases(Case)
CASES += arm64.cases(Case)
DEMO = Case("demo", "6.1", 1024, ["lime"], timeout=600)


def say(message=""):
    print(message, flush=True)


STARTED = time.monotonic()


def elapsed():
    """Minutes:seconds since the harness started (where CI's time goes)."""
    seconds = int(time.monotonic() - STARTED)
    return f"{seconds // 60}:{seconds % 60:02d}"


# ----------------------------------------------------------------- the guest


def case_script(case):
    """The shell script /init runs from the data disk (busybox sh)."""
    lines = [
        "# generated by testing/guest/guest.py for case " + case.name,
        "export OUT=/data/out",
        "now() { cut -d' ' -f1 /proc/uptime; }",
        # step NAME CMD...: runs CMD, reports its time and exit code to the host
        'step() { name=$1; shift; t0=$(now); "$@"; rc=$?; echo "@@pmem-guest step $name $t0 $(now) $rc"; return $rc; }',
        # Keep planted frames still: no compaction of mlocked pages, no THP.
        "sysctl -q -w vm.compact_unevictable_allowed=0",
        "sysctl -q -w vm.compaction_proactiveness=0 || true",
        "echo never > /sys/kernel/mm/transparent_hugepage/enabled",
        "cat /proc/iomem > $OUT/iomem.txt",
        "cat /proc/version > $OUT/version.txt",
        # Sockets for Volatility's linux.sockstat and lsof to find (a guest
        # with none proves nothing): a TCP listener, a connected TCP pair over
        # loopback, and syslogd's unix datagram socket.
        "ip link set lo up",
        "sleep 3600 | nc -l -p 4444 > /dev/null 2>&1 &",
        "sleep 3600 | nc -l -p 4445 > /dev/null 2>&1 &",
        "sleep 0.5; sleep 3600 | nc 127.0.0.1 4445 > /dev/null 2>&1 &",
        "syslogd -O /tmp/messages",
        "t0=$(now)",
        f"/data/bin/pmem-guest-agent plant --seed {case.seed:#x} --pages {MARKER_PAGES} "
        "--list $OUT/markers.txt --ready /tmp/ready --release /tmp/release "
        "--report $OUT/agent-report.txt --timeout-secs 3600 &",
        "agent=$!",
        # symcheck.py looks for the agent at this PID in vol3's pslist.
        "echo $agent > $OUT/agent.pid",
        "while [ ! -e /tmp/ready ] && kill -0 $agent 2>/dev/null; do sleep 0.1; done",
        'echo "@@pmem-guest step plant-markers $t0 $(now) $([ -e /tmp/ready ] && echo 0 || echo 1)"',
    ]
    hook = case.hook or module_cases.NoHook()
    lines += hook.setup_lines()
    for fmt in case.formats:
        lines.append(
            f"step acquire-{fmt} /data/bin/pmem acquire {hook.acquire_args('file')}--format {fmt} $OUT/image.{fmt} "
            f"2> $OUT/image.{fmt}.log"
        )
    for name in case.compressed:
        lines.append(
            f"step acquire-{name} /data/bin/pmem acquire {hook.acquire_args('compressed')}{COMPRESSED[name][0]} $OUT/image.{name} "
            f"2> $OUT/image.{name}.log"
        )
    for fmt in case.stream:
        lines.append(
            f'step stream-{fmt} sh -c "/data/bin/pmem acquire {hook.acquire_args("stream")}--format {fmt} --memory-hash '
            f'--manifest $OUT/stream.{fmt}.json - > $OUT/stream.{fmt} 2> $OUT/stream.{fmt}.log"'
        )
    if case.window:
        lines += windowcheck.guest_lines()
    if case.mount:
        lines += mountcheck.guest_lines()
    lines += [
        "sync",
        # The host dumps guest memory (guest paused) while the markers are held.
        'echo "@@pmem-guest dump"',
        "read -r reply",
        "touch /tmp/release",
        "wait $agent",
        'echo "@@pmem-guest agent $?"',
        # Also on the console: the host has read it back empty from the
        # ext4 image once (written last, just before the unmount).
        'echo "@@pmem-guest agent-report" $(cat $OUT/agent-report.txt)',
        *hook.finish_lines(),
        "sync",
        'echo "@@pmem-guest done"',
    ]
    return "\n".join(lines) + "\n"


def disk_gib(case):
    # Each image is about the guest's RAM; raw also covers the holes below the
    # highest address (~1 GiB more with -m 3584). Sparse: costs what is written.
    per_image = case.memory_mib / 1024 + 0.1
    copies = len(case.formats) + len(case.stream) + len(case.compressed) + (2 if case.mount else 0)
    return int(per_image * copies) + 2


def run_guest(case, pmem, agent, timing):
    """Boots `case`, returns its work dir with out/ extracted and dump.elf."""
    kernel = env.KERNELS[case.kernel]
    if kernel.target != env.MUSL:  # another architecture's guest (arm64.py): its own build
        pmem, agent = env.build_pmem(kernel.target)
    work = WORK / case.name
    vm.cleanup([work])
    staging = work / "staging"
    (staging / "bin").mkdir(parents=True)
    (staging / "out").mkdir()
    shutil.copy2(pmem, staging / "bin" / "pmem")
    shutil.copy2(agent, staging / "bin" / "pmem-guest-agent")
    (staging / "case.sh").write_text(case_script(case))
    if case.hook:
        case.hook.stage(case, staging)

    t = time.monotonic()
    initramfs.build(kernel, work / "initrd.cpio")
    vm.make_data_disk(staging, work / "disk.img", disk_gib(case))
    timing["prepare"] = time.monotonic() - t

    say(f"  booting {kernel.release()} with {case.memory_mib} MiB (TCG, 1 vCPU)")
    guest = vm.Guest(kernel.vmlinuz(), work / "initrd.cpio", work / "disk.img", case.memory_mib,
                     work, case.timeout, dump_path=work / "dump.elf", log=say, machine=case.machine,
                     append=case.hook.append if case.hook else "", qemu=kernel.qemu)
    guest.run()
    timing["guest total"] = guest.seconds
    timing["guest boot"] = guest.boot_seconds or 0
    for name, seconds, _ in guest.steps:
        timing[f"guest {name}"] = seconds
    timing["qmp dump"] = guest.dump_seconds

    t = time.monotonic()
    out = vm.extract(work / "disk.img", "/out", work)
    timing["extract"] = time.monotonic() - t
    vm.cleanup([work / "disk.img", staging])
    failed = [f"{name} (exit {rc})" for name, _, rc in guest.steps if rc != 0]
    return work, out, guest, failed


# ------------------------------------------------------------------ checks


class Results:
    """Every check, in order; the summary and the exit code come from here."""

    def __init__(self):
        self.rows = []  # (case, subject, check, ok, detail)
        self.lock = threading.Lock()  # the Volatility worker adds rows too

    def add(self, case, subject, check, ok, detail=""):
        with self.lock:
            self.rows.append((case, subject, check, bool(ok), detail))
            mark = "ok  " if ok else "FAIL"
            say(f"  [{mark}] {case} {subject}: {check}{' - ' + detail if detail else ''}")
        return ok

    @property
    def passed(self):
        return sum(1 for r in self.rows if r[3])

    @property
    def failed(self):
        return sum(1 for r in self.rows if not r[3])


def parse_iomem(path, kernel_names=("Kernel code", "Kernel rodata")):
    """Top-level "System RAM" ranges and the kernel's code/rodata ranges
    (arm64 has "Kernel code" only: text and rodata, see arm64.py)."""
    ram, kernel = [], {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^(\s*)([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        if not m:
            continue
        start, last, name = int(m.group(2), 16), int(m.group(3), 16), m.group(4)
        if not m.group(1) and name == "System RAM":
            ram.append((start, last))
        elif name in kernel_names:
            kernel[name] = (start, last)
    if not ram or len(kernel) != len(kernel_names) or all(last == 0 for _, last in ram):
        raise SystemExit(f"{path}: no usable System RAM / kernel ranges (was it read as root?)")
    return ram, kernel


def whole_pages(ram):
    """System RAM as /proc/kcore can expose it: whole 4 KiB pages only, and
    the partial-page leftovers (e.g. the usual 0x9f000-0x9fbff) that an
    acquisition must declare as not acquired instead."""
    pages, partial = [], []
    for start, last in ram:
        first_page, end_page = -(-start // 4096) * 4096, (last + 1) // 4096 * 4096
        if first_page >= end_page:
            partial.append((start, last))
            continue
        pages.append((first_page, end_page - 1))
        if start < first_page:
            partial.append((start, first_page - 1))
        if end_page <= last:
            partial.append((end_page, last))
    return pages, partial


def fmt_ranges(ranges):
    return ", ".join(f"{a:#x}-{b:#x}" for a, b in ranges)


def pmem_json(pmem, *args):
    result = subprocess.run([str(pmem), *args], capture_output=True, text=True)
    if result.returncode != 0:
        return None, f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
    try:
        return json.loads(result.stdout), ""
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e}): {result.stdout[:200]!r}"


def compare_kernel(image, dump, kernel_ranges):
    """Kernel code and rodata must be identical to QEMU's dump."""
    details = []
    ok = True
    for name, (start, last) in sorted(kernel_ranges.items()):
        got = image.read(start, last - start + 1)
        want = dump.read(start, last - start + 1)
        if got is None:
            ok = False
            details.append(f"{name} not in image")
            continue
        if got != want:
            ok = False
            bad = sum(1 for p in range(0, len(got), 4096) if got[p:p + 4096] != want[p:p + 4096])
            details.append(f"{name}: {bad} pages differ from QEMU's dump")
        else:
            details.append(f"{name} {(last - start + 1) >> 20} MiB identical")
    return ok, "; ".join(details)


class Volatility:
    """Runs the Volatility 3 checks on worker threads, so they overlap with
    the guests. Two workers: when the last guests are done, the checks still
    queued (the 12-plugin runs take minutes each) use both cores instead of
    one; while guests run, the workers and QEMU share the cores."""

    def __init__(self, results, timings, workers=2):
        self.results, self.timings = results, timings
        self.jobs = queue.Queue()
        self.lock = threading.Lock()
        self.pending = {}  # case -> checks not yet done
        self.after = {}  # case -> what to run once they are
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def submit(self, case, subject, fmt, path, release):
        self.submit_task(case, subject, lambda: self._check(case, subject, fmt, path, release))

    def submit_task(self, case, subject, task):
        """Runs `task()` on the worker, counted as one of the case's checks."""
        with self.lock:
            self.pending[case] = self.pending.get(case, 0) + 1
        self.jobs.put((case, subject, task))

    def when_done(self, case, action):
        """Runs `action` once the case's checks are done (now if they are)."""
        with self.lock:
            if self.pending.get(case, 0):
                self.after.setdefault(case, []).append(action)
                return
        action()

    def _finished(self, case):
        with self.lock:
            self.pending[case] -= 1
            actions = self.after.pop(case, []) if self.pending[case] == 0 else []
        for action in actions:
            action()

    def wait(self):
        self.jobs.join()

    def _work(self):
        while True:
            job = self.jobs.get()
            try:
                job[2]()
            except Exception as e:  # report, never lose the worker
                self.results.add(job[0], job[1], "volatility3", False, f"harness error: {e!r}")
            finally:
                self._finished(job[0])
                self.jobs.task_done()

    def _check(self, case, subject, fmt, path, release):
        started = time.monotonic()
        try:
            proc = subprocess.run([str(env.venv_python()), str(HERE / "volcheck.py"), str(path)],
                                  capture_output=True, text=True, timeout=VOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.results.add(case, subject, "volatility3", False, f"timed out after {VOL_TIMEOUT}s")
            return
        self.timings[case][f"volatility {subject}"] = time.monotonic() - started
        try:
            report = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            self.results.add(case, subject, "volatility3", False,
                             f"no report (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
            return
        layers = report["layers"]
        want = EXPECTED_LAYER[fmt]
        # "primary" names the layer banners.Banners scanned: the top of the stack.
        top = layers.get(report["primary"])
        self.results.add(case, subject, "volatility3 layer", top == want,
                         f"stacked {' -> '.join(layers.values())}, expected {want} on top")
        found = [b for b in report["banners"] if b.startswith(f"Linux version {release} ")]
        self.results.add(case, subject, "volatility3 banner", found,
                         f"{len(report['banners'])} banners, {len(found)} for {release}")


def check_image(results, case, subject, fmt, path, manifest_path, ctx, timing, vol):
    """All the per-image proofs; returns the opened image (for cross checks)."""
    pmem, ram, kernel_ranges, dump, marker_list, expected, release = ctx
    t = time.monotonic()
    if not manifest_path.exists():
        results.add(case.name, subject, "manifest", False, f"{manifest_path.name} missing")
        return None
    manifest = json.loads(manifest_path.read_text())
    problems = []
    to_ranges = lambda rs: [(int(r["start"], 16), int(r["last"], 16)) for r in rs]  # noqa: E731
    if manifest.get("complete") is not True or manifest.get("error"):
        problems.append(f"complete={manifest.get('complete')} error={manifest.get('error')}")
    if manifest.get("format") != fmt:
        problems.append(f"format {manifest.get('format')}")
    ram_pages, partial = whole_pages(ram)
    not_acquired = to_ranges(manifest.get("not_acquired") or [])
    if not_acquired != partial:
        problems.append(f"not_acquired {fmt_ranges(not_acquired) or 'none'}, expected "
                        f"the partial pages {fmt_ranges(partial) or 'none'}")
    if manifest.get("unreadable_pages"):
        problems.append(f"unreadable_pages {manifest['unreadable_pages'][:3]}")
    if to_ranges(manifest.get("system_ram", [])) != ram:
        problems.append(f"system_ram {fmt_ranges(to_ranges(manifest.get('system_ram', [])))}")
    results.add(case.name, subject, "manifest", not problems, "; ".join(problems) or "complete, nothing skipped")
    symcheck.check_manifest(results, case, subject, fmt, path, manifest, streamed=subject.endswith("(stream)"))

    try:
        image = images.open_image(path, fmt, manifest)
    except images.ImageError as e:
        results.add(case.name, subject, "container structure", False, str(e))
        return None
    structure = f"{len(image.segments)} segments"
    if isinstance(image, images.RawImage):
        ok = image.padding_is_zero()
        structure += ", padding zero" if ok else ", NON-ZERO padding"
    else:
        ok = True
    results.add(case.name, subject, "container structure", ok, structure)

    covered = image.ranges()
    results.add(case.name, subject, "covers exactly System RAM", covered == ram_pages,
                (f"{len(covered)} ranges, {sum(b - a + 1 for a, b in covered) >> 20} MiB"
                 + (f"; partial pages {fmt_ranges(partial)} declared not acquired" if partial else ""))
                if covered == ram_pages
                else f"image {fmt_ranges(covered)} vs iomem (whole pages) {fmt_ranges(ram_pages)}")
    results.add(case.name, subject, "manifest ranges = image", to_ranges(manifest.get("ranges", [])) == covered)

    checked, matching, failures = markers.check(image, marker_list, expected)
    results.add(case.name, subject, "marker pages byte-exact", checked == matching == marker_list.pages,
                f"{matching}/{checked} match" + ("; " + "; ".join(failures) if failures else ""))
    ok, detail = compare_kernel(image, dump, kernel_ranges)
    results.add(case.name, subject, "kernel code+rodata = QEMU dump", ok, detail)

    # Each hash in the algorithm the manifest names (BLAKE3 by default,
    # checked with b3sum; SHA-256 with hashlib).
    algorithm, recorded = images.manifest_hash(manifest, "image")
    sha = images.file_hash(path, algorithm or "blake3")
    results.add(case.name, subject, f"image_hash ({algorithm})", sha == recorded,
                "" if sha == recorded else f"file {sha[:16]}, manifest {str(recorded)[:16]}")
    # memory_hash is recorded only with `acquire --memory-hash` (the
    # streamed acquisitions pass it, so there it must be present and right).
    want_memory_hash = subject.endswith("(stream)")
    malgorithm, mrecorded = images.manifest_hash(manifest, "memory")
    msha = (image.memory_hash(malgorithm or algorithm or "blake3")
            if want_memory_hash or mrecorded else None)
    if msha is not None:
        results.add(case.name, subject, f"memory_hash ({malgorithm})", msha == mrecorded,
                    "" if msha == mrecorded else f"image {msha[:16]}, manifest {str(mrecorded)[:16]}")

    # pmem's own view of the image must agree with the independent one.
    default_manifest = Path(str(path) + ".json")
    if default_manifest == manifest_path:
        info, err = pmem_json(pmem, "info", "--json", str(path))
    else:
        info, err = None, "skipped"
    if info is not None:
        problems = []
        if info.get("format") != fmt:
            problems.append(f"format {info.get('format')}")
        if to_ranges(info.get("ranges", [])) != covered:
            problems.append(f"ranges {fmt_ranges(to_ranges(info.get('ranges', [])))}")
        if info.get("total_bytes") != sum(b - a + 1 for a, b in covered):
            problems.append(f"total_bytes {info.get('total_bytes')}")
        if info.get("image_bytes") != image.size:
            problems.append(f"image_bytes {info.get('image_bytes')} != {image.size}")
        results.add(case.name, subject, "pmem info agrees", not problems, "; ".join(problems))
    elif err != "skipped":
        results.add(case.name, subject, "pmem info agrees", False, err)
    verify = subprocess.run([str(pmem), "verify", str(path), "--manifest", str(manifest_path)],
                            capture_output=True, text=True)
    results.add(case.name, subject, "pmem verify", verify.returncode == 0,
                "" if verify.returncode == 0 else (verify.stdout + verify.stderr).strip()[-300:])
    timing[f"checks {subject}"] = time.monotonic() - t
    if vol and fmt in EXPECTED_LAYER:  # Volatility 3 has no Mach-O or AFF4 layer
        vol.submit(case.name, subject, fmt, path, release)
    return image


def check_container(results, case, name, path, pmem, want_format):
    """A container pmem's readers read but the harness does not (AVML, .zst,
    AFF4): its manifest says complete and the format, its image_hash is
    the file's (in the manifest's algorithm), and `pmem verify` passes."""
    manifest_path = Path(str(path) + ".json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    ok = manifest.get("complete") is True and manifest.get("format") == want_format
    results.add(case.name, name, "manifest", ok,
                f"complete={manifest.get('complete')} format={manifest.get('format')} "
                f"compression={manifest.get('compression')} warnings={manifest.get('warnings')}")
    algorithm, recorded = images.manifest_hash(manifest, "image")
    results.add(case.name, name, f"image_hash ({algorithm})",
                recorded is not None and images.file_hash(path, algorithm) == recorded)
    verify = subprocess.run([str(pmem), "verify", str(path)], capture_output=True, text=True)
    results.add(case.name, name, "pmem verify", verify.returncode == 0,
                "" if verify.returncode == 0 else (verify.stdout + verify.stderr).strip()[-300:])
    symcheck.check_manifest(results, case, name, want_format, path, manifest)
    return manifest


def check_aff4(results, case, path, ctx, timing):
    """AFF4: its manifest, hash and `pmem verify`; then pmem's own reader
    (`pmem convert` to raw, checked like any raw image) and an independent
    one (pyaff4, the reference implementation) must both give the markers
    and the kernel byte-exact."""
    pmem, ram, kernel_ranges, dump, marker_list, expected, release = ctx
    t = time.monotonic()
    check_container(results, case, "aff4", path, pmem, "aff4")
    timing["checks aff4"] = time.monotonic() - t
    raw = Path(str(path) + ".raw")
    convert = subprocess.run([str(pmem), "convert", "-q", "-f", "raw", str(path), str(raw)],
                             capture_output=True, text=True)
    results.add(case.name, "aff4", "pmem convert to raw", convert.returncode == 0, convert.stderr.strip()[-300:])
    if convert.returncode == 0:
        image = check_image(results, case, "aff4 (pmem's reader)", "raw", raw, Path(str(raw) + ".json"),
                            ctx, timing, None)
        if image:
            image.close()
        raw.unlink()
    t = time.monotonic()
    ok, detail = aff4check.check(path, marker_list, expected, dump, kernel_ranges)
    results.add(case.name, "aff4 (pyaff4)", "markers and kernel byte-exact", ok, detail)
    timing["checks aff4 (pyaff4)"] = time.monotonic() - t


class GapsAsZeros:
    """An AVML image's memory: frames left out of it are all zero (the
    format's rule), so inside the ranges the manifest says were read, bytes
    the image does not hold read as zeros."""

    def __init__(self, image, ranges):
        self.image, self.ranges, self.file = image, ranges, image.file

    def read(self, address, length):
        last = address + length - 1
        if not any(a <= address and last <= b for a, b in self.ranges):
            return None
        out = bytearray(length)
        for s in self.image.segments:
            lo, hi = max(s.start, address), min(s.last, last)
            if lo <= hi:
                self.file.seek(s.offset + lo - s.start)
                out[lo - address:hi - address + 1] = self.file.read(hi - lo + 1)
        return bytes(out)


def check_compressed(results, case, name, path, ctx, timing, vol):
    """A compressed image: its manifest, hash and `pmem verify`; then it is
    decompressed by a reader that is not pmem's (AVML's own `avml convert`,
    or `zstd -d`) and the markers and kernel must be byte-exact; Volatility 3
    must stack its AVML layer on the AVML image itself."""
    pmem, ram, kernel_ranges, dump, marker_list, expected, release = ctx
    t = time.monotonic()
    manifest = check_container(results, case, name, path, pmem, COMPRESSED[name][1])
    plain = Path(str(path) + ".plain")
    if name == "avml":
        avml = env.ensure_avml()
        cmd = [str(avml), "convert", "--source-format", "lime_compressed", "--format", "lime",
               str(path), str(plain)]
    else:
        cmd = ["zstd", "-d", "-q", "-f", "-o", str(plain), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    results.add(case.name, name, f"decompressed by {Path(cmd[0]).name}", proc.returncode == 0,
                proc.stderr.strip()[-300:])
    if proc.returncode == 0:
        try:
            image = images.open_image(plain, "lime" if name == "avml" else "raw", manifest)
        except images.ImageError as e:
            results.add(case.name, name, "container structure (decompressed)", False, str(e))
            image = None
        if image is not None:
            if name == "raw.zst":
                covered, (ram_pages, _) = image.ranges(), whole_pages(ram)
                results.add(case.name, name, "covers exactly System RAM", covered == ram_pages)
            else:
                ranges = [(int(r["start"], 16), int(r["last"], 16)) for r in manifest.get("ranges", [])]
                image = GapsAsZeros(image, ranges)
            checked, matching, failures = markers.check(image, marker_list, expected)
            results.add(case.name, name, "marker pages byte-exact", checked == matching == marker_list.pages,
                        f"{matching}/{checked} match" + ("; " + "; ".join(failures) if failures else ""))
            ok, detail = compare_kernel(image, dump, kernel_ranges)
            results.add(case.name, name, "kernel code+rodata = QEMU dump", ok, detail)
            image.file.close()
        plain.unlink()
    timing[f"checks {name}"] = time.monotonic() - t
    if vol and name == "avml":
        vol.submit(case.name, name, "avml", path, release)


def run_case(case, pmem, agent, results, timings, other_markers, vol):
    say(f"\n== [{elapsed()}] case {case.name}: kernel {case.kernel}, {case.memory_mib} MiB, "
        f"formats {' '.join(case.formats) or '-'}, stream {' '.join(case.stream) or '-'}")
    timing = timings.setdefault(case.name, {})
    try:
        work, out, guest, failed_steps = run_guest(case, pmem, agent, timing)
    except vm.GuestError as e:
        results.add(case.name, "guest", "boot and run", False, str(e))
        return None
    results.add(case.name, "guest", "case script", not failed_steps and not guest.errors,
                "; ".join(failed_steps + guest.errors) or f"{len(guest.steps)} steps ok")
    for name in failed_steps:
        log = out / (name.split()[0].replace("acquire-", "image.").replace("stream-", "stream.") + ".log")
        if log.exists():
            say(f"  --- {log.name} ---\n{log.read_text(errors='replace')[-2000:]}")
    report = (out / "agent-report.txt").read_text() if (out / "agent-report.txt").exists() else ""
    if not report.strip():
        report = guest.agent_report + (" (from the console; the file came back empty)" if guest.agent_report else "missing")
    results.add(case.name, "markers", "frames held still (agent re-check)", "result ok" in report,
                " ".join(report.split()))

    t = time.monotonic()
    ram, kernel_ranges = parse_iomem(out / "iomem.txt", env.KERNELS[case.kernel].kernel_ranges)
    release = (out / "version.txt").read_text().split()[2]
    marker_list = markers.MarkerList.load(out / "markers.txt")
    expected = list(marker_list.expected_pages())
    timing["generate expected markers"] = time.monotonic() - t
    say(f"  guest {release}: System RAM {fmt_ranges(ram)}")

    # The harness checks itself first: QEMU's ground truth must hold every
    # marker where the agent said, or nothing below means anything.
    dump = images.ElfImage(work / "dump.elf")
    checked, matching, failures = markers.check(dump, marker_list, expected)
    results.add(case.name, "qemu dump", "ground truth holds the markers", checked == matching,
                f"{matching}/{checked}" + ("; " + "; ".join(failures) if failures else ""))
    dump_ram = dump.ranges()
    results.add(case.name, "qemu dump", "ground truth covers System RAM",
                all(any(a <= s and l <= b for a, b in dump_ram) for s, l in ram))

    ctx = (pmem, ram, kernel_ranges, dump, marker_list, expected, release)
    opened = {}
    for fmt in case.formats:
        path = out / f"image.{fmt}"
        if path.exists() and fmt == "aff4":
            check_aff4(results, case, path, ctx, timing)
        elif path.exists():
            opened[fmt] = check_image(results, case, fmt, fmt, path, Path(str(path) + ".json"),
                                      ctx, timing, vol)
        else:
            results.add(case.name, fmt, "image written", False, f"{path.name} missing")
    for fmt in case.stream:
        subject = f"{fmt} (stream)"
        path = out / f"stream.{fmt}"
        if not path.exists():
            results.add(case.name, subject, "image written", False, f"{path.name} missing")
            continue
        image = check_image(results, case, subject, fmt, path, out / f"stream.{fmt}.json", ctx, timing, vol)
        direct = opened.get(fmt)
        if image and direct:
            # Live memory differs between two acquisitions; what must be equal
            # is the layout and everything that holds still.
            same = image.ranges() == direct.ranges()
            stable = all(image.read(a, 4096) == direct.read(a, 4096) for _, a, _ in expected)
            results.add(case.name, subject, "same layout and markers as the file image", same and stable)

    for name in case.compressed:
        path = out / f"image.{name}"
        if path.exists():
            check_compressed(results, case, name, path, ctx, timing, vol)
        else:
            results.add(case.name, name, "image written", False, f"{path.name} missing")

    # Negative tests: checks that cannot fail prove nothing.
    if opened or case.stream:
        target_fmt, target = next(iter(opened.items())) if opened else (None, None)
        if target:
            foreign = other_markers or markers.MarkerList(marker_list.seed ^ 1, marker_list.pages, marker_list.frames,
                                                          "same frames, another seed")
            checked, matching, _ = markers.check(target, foreign)
            results.add(case.name, "negative", f"{target_fmt} vs another run's markers ({foreign.source}) must fail",
                        matching < checked, f"{matching}/{checked} matched (expected a mismatch)")
            truncated = work / "truncated.lime"
            if target_fmt == "lime":
                with open(target.path, "rb") as src, open(truncated, "wb") as dst:
                    dst.write(src.read(1 << 20))
                try:
                    images.LimeImage(truncated)
                    rejected = False
                except images.ImageError:
                    rejected = True
                truncated.unlink()
                results.add(case.name, "negative", "a truncated LiME image must be rejected", rejected)
    if case.debuggers and "elf" in opened:
        crashcheck.check(results, case, "elf", out / "image.elf", work / "dump.elf", release, timing,
                         (out / "version.txt").read_text())
    if case.hook:
        case.hook.check(results, case, out)
    if case.window:
        windowcheck.check(results, case, out)
    if case.mount:
        mountcheck.check(results, case, out, work, ctx, markers, compare_kernel, whole_pages, guest, vol)
    if case.symbols_isf and vol:
        arm = env.KERNELS[case.kernel].target != env.MUSL
        vol.submit_task(case.name, "symbols", lambda: symcheck.check_case(
            results, case, pmem, out, work, timings[case.name], arm64=arm))
    return marker_list, work


def clean_images(work):
    """Images are GiBs: keep only what explains a run (manifests, logs, lists)."""
    for p in work.glob("out/*"):
        if p.name.startswith(("image.", "stream.")) and p.suffix not in (".json", ".log"):
            p.unlink()


def summary(results, timings, wall):
    say("\n" + "=" * 100)
    say("guest suite summary")
    say("=" * 100)
    width = max(len(f"{c} {s}") for c, s, *_ in results.rows) + 2
    # Group by case, then subject (Volatility rows arrive later than the rest).
    order = {}
    for case, subject, *_ in results.rows:
        order.setdefault(case, {}).setdefault(subject, len(order[case]))
    case_order = list(order)
    rows = sorted(results.rows, key=lambda r: (case_order.index(r[0]), order[r[0]][r[1]]))
    for case, subject, check, ok, detail in rows:
        say(f"{'PASS' if ok else 'FAIL'}  {case + ' ' + subject:<{width}} {check}"
            + (f"  [{detail[:110]}]" if detail else ""))
    say("\nseconds per step")
    for case, timing in timings.items():
        say(f"  {case}: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items() if v is not None))
    say(f"\nwall time {wall:.0f}s")
    failed = [r for r in results.rows if not r[3]]
    if failed:
        say("\nFAILURES:")
        for case, subject, check, _, detail in failed:
            say(f"  {case} {subject}: {check}: {detail}")
    say(f"guest suite: {results.passed} passed, {results.failed} failed")


# ------------------------------------------------------------- subcommands


def cmd_setup(args):
    env.setup(volatility=True)
    env.build_pmem()


def cmd_suite(args):
    if os.environ.get("PMEM_SKIP_GUEST") == "1" and os.environ.get("CI") != "true":
        say("guest suite skipped (PMEM_SKIP_GUEST=1; CI always runs it)")
        return 0
    started = time.monotonic()
    cases = [c for c in CASES if not args.case or c.name in args.case]
    if args.kernel:
        cases = [c for c in cases if c.kernel in args.kernel]
    if args.format:
        for c in cases:
            c.formats = [f for f in c.formats if f in args.format]
            c.stream = [f for f in c.stream if f in args.format]
            c.compressed = [f for f in c.compressed if f in args.format]
    if not cases:
        raise SystemExit(f"no case selected; cases: {', '.join(c.name for c in CASES)}")
    env.setup(kernels=sorted({c.kernel for c in cases}), volatility=not args.no_volatility)
    pmem, agent = env.build_pmem()
    results, timings = Results(), {}
    vol = None if args.no_volatility else Volatility(results, timings)
    works = []
    if args.jobs is None:
        WORK.mkdir(parents=True, exist_ok=True)
        free_gib = shutil.disk_usage(WORK).free / 2**30
        args.jobs = min(2, os.cpu_count() or 1) if free_gib >= 40 else 1
        say(f"{args.jobs} case(s) at a time ({os.cpu_count()} CPUs, {free_gib:.0f} GiB free under {WORK})")

    def run(case, previous=None):
        try:
            done = run_case(case, pmem, agent, results, timings, previous, vol)
        except Exception as e:  # one case's harness error must not stop the others
            traceback.print_exc()
            results.add(case.name, "harness", "checks ran to the end", False, repr(e)[:300])
            return None
        if done and not args.keep:
            # Images are GiBs each: a case's go as soon as its checks are done.
            work = done[1]
            if vol:
                # The symbols check may read QEMU's dump too (symcheck.py).
                vol.when_done(case.name, lambda: (vm.cleanup([work / "dump.elf"]), clean_images(work)))
            else:
                vm.cleanup([work / "dump.elf"])
                clean_images(work)
        return done

    if args.jobs <= 1:
        previous = None
        for case in cases:
            done = run(case, previous)
            if done:
                previous = done[0]
                works.append(done[1])
    else:
        # Each guest is one TCG thread: N guests at once keep N cores busy.
        # The negative marker test then uses
        # the same frames with another seed instead of the previous case's list.
        say(f"running {args.jobs} cases at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for done in pool.map(run, cases):
                if done:
                    works.append(done[1])
    if vol:
        say(f"\n[{elapsed()}] cases done; waiting for the Volatility 3 checks ...")
        vol.wait()
        say(f"[{elapsed()}] Volatility 3 checks done")
    if not args.keep:
        for work in works:
            clean_images(work)
    summary(results, timings, time.monotonic() - started)
    return 0 if results.failed == 0 else 1


def cmd_demo(args):
    env.setup(kernels=["6.1"], volatility=False)
    pmem, agent = env.build_pmem()
    results, timings = Results(), {}
    timing = timings.setdefault(DEMO.name, {})
    say(f"booting a Debian {DEMO.kernel} guest under QEMU and acquiring its memory with pmem ...")
    try:
        work, out, guest, failed = run_guest(DEMO, pmem, agent, timing)
    except vm.GuestError as e:
        raise SystemExit(f"demo failed: {e}")
    image, manifest = out / "image.lime", out / "image.lime.json"
    if failed or not image.exists():
        log = out / "image.lime.log"
        raise SystemExit(f"demo: pmem acquire failed in the guest: {failed}\n"
                         + (log.read_text(errors="replace")[-2000:] if log.exists() else ""))
    vm.cleanup([work / "dump.elf"])
    say(f"\nimage:    {image}")
    say(f"manifest: {manifest}")
    say("in the guest: " + ", ".join(f"{n} {s:.1f}s" for n, s, _ in guest.steps) + "\n")
    say(f"$ pmem info {image}")
    subprocess.run([str(pmem), "info", str(image)])
    say(f"$ pmem verify {image}")
    return subprocess.run([str(pmem), "verify", str(image)]).returncode


def cmd_boot(args):
    """An interactive guest: a shell on the serial console, pmem in /data/bin."""
    env.setup(kernels=[args.kernel], volatility=False)
    pmem, agent = env.build_pmem()
    kernel = env.KERNELS[args.kernel]
    pmem, agent = env.build_pmem(kernel.target)
    work = WORK / "boot"
    vm.cleanup([work])
    (work / "staging" / "bin").mkdir(parents=True)
    (work / "staging" / "out").mkdir()
    shutil.copy2(pmem, work / "staging" / "bin" / "pmem")
    shutil.copy2(agent, work / "staging" / "bin" / "pmem-guest-agent")
    (work / "staging" / "case.sh").write_text(
        'echo "pmem guest: /data/bin/pmem, outputs in /data/out (host: debugfs -R \'rdump /out DIR\' '
        f'{work / "disk.img"}); exit the shell to power off"\n'
        "PATH=/data/bin:$PATH sh\n"
    )
    initramfs.build(kernel, work / "initrd.cpio")
    vm.make_data_disk(work / "staging", work / "disk.img", args.disk_gib)
    guest = vm.Guest(kernel.vmlinuz(), work / "initrd.cpio", work / "disk.img", args.memory, work, 0,
                     machine=args.machine or ("virt" if kernel.qemu else "pc"), qemu=kernel.qemu)
    command = guest.command(work / "qmp.sock")
    say("$ " + " ".join(command))
    return subprocess.run(command).returncode


def cmd_list(args):
    for c in CASES:
        say(f"{c.name:10} kernel {c.kernel:5} {c.memory_mib:5} MiB  formats {' '.join(c.formats):14} "
            f"stream {' '.join(c.stream) or '-':5} {c.note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install everything, download the kernels, build pmem")
    sub.add_parser("demo", help="boot the 6.1 guest, acquire with pmem, show pmem info")
    sub.add_parser("list", help="list the suite's cases")
    boot = sub.add_parser("boot", help="boot a guest with a shell on the console (pmem in /data/bin)")
    boot.add_argument("--kernel", default="6.1", choices=sorted(env.KERNELS))
    boot.add_argument("--memory", type=int, default=1024, help="MiB")
    boot.add_argument("--disk-gib", type=int, default=8)
    boot.add_argument("--machine", help="QEMU -machine (arm64: virt, or virt+uefi through the firmware)")
    suite = sub.add_parser("suite", help="run the end-to-end proofs")
    suite.add_argument("--case", action="append", help="only this case (repeatable)")
    suite.add_argument("--kernel", action="append", choices=sorted(env.KERNELS), help="only cases on this kernel")
    suite.add_argument("--format", action="append", help="only these formats (repeatable)")
    suite.add_argument("--no-volatility", action="store_true", help="skip the Volatility 3 checks")
    suite.add_argument("--keep", action="store_true", help="keep images and dumps under testing/guest/work")
    suite.add_argument("--jobs", type=int, default=None,
                       help="cases run at the same time (default: 2 on 2+ cores with 40 GiB free, else 1)")
    args = parser.parse_args()
    handler = {"setup": cmd_setup, "demo": cmd_demo, "list": cmd_list, "suite": cmd_suite, "boot": cmd_boot}[args.command]
    sys.exit(handler(args) or 0)


if __name__ == "__main__":
    main()

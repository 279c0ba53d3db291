"""The kernel symbols `pmem acquire` captured with each image (issue 17).

Per image: the manifest's `symbols` record says where the bundle went
(inside ELF/Mach-O/AFF4 images, beside LiME/raw/AVML ones, not kept for a
stream), the capture found BTF, kallsyms with real addresses, the banner and
VMCOREINFO, and a sidecar is the file the manifest hashed, owner-only.

Per case (x86-64 kernels): `pmem symbols IMAGE -o DIR` makes a Volatility 3
ISF from what the image carries, and stock Volatility 3 with ONLY that ISF
(`-s DIR --offline`, its own cache) runs the 12 Linux plugins of
testing/symbols/plugins.py; each must succeed and show what the guest is
known to hold: the marker agent (at the PID the guest recorded, with its
arguments, open files and environment) and pmem in the task lists, the
modules of the /proc/modules captured in the same boot, the guest's TCP
listener on port 4444, its /data mount, the kernel's own banner in the
log, the syscall table, and no hidden module.

With PMEM_REFERENCE_ISF=DIR (a directory holding RELEASE/linux/RELEASE.json.xz
made by dwarf2json from the kernel's -dbg vmlinux, see docs/symbols.md),
the same plugins also run through that reference ISF and every row must be
the same. dwarf2json cannot be fetched where CI runs, so CI proves the
plugins against the guest's ground truth and a developer runs the
comparison by hand.

arm64 (Volatility 3 has no arm64 Linux support): the ISF is made and
checked against Volatility's schema (testing/symbols/isf_check.py).
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "symbols"))
import plugins  # noqa: E402

HERE = Path(__file__).resolve().parent
ISF_CHECK = HERE.parent / "symbols" / "isf_check.py"
# Formats whose images carry the bundle inside.
CARRIED_INSIDE = {"elf", "macho", "aff4"}


def expected_place(fmt, streamed):
    if fmt in CARRIED_INSIDE:
        return "image"
    return "not_kept" if streamed else "sidecar"


def check_manifest(results, case, subject, fmt, image, manifest, streamed=False):
    """The manifest's record of the symbols of one image; True if all holds."""
    record = manifest.get("symbols")
    if record is None:
        results.add(case.name, subject, "symbols captured", False, "the manifest has no symbols record")
        return False
    problems = []
    want = expected_place(fmt, streamed)
    if record.get("carried") != want:
        problems.append(f"carried {record.get('carried')!r}, expected {want!r}")
    capture = record.get("capture", {})
    names = {f["name"] for f in capture.get("files", [])}
    wanted = ["btf/vmlinux", "kallsyms", "version", "modules"]
    # VMCOREINFO comes from the memory source (kcore's note), not a file.
    if manifest.get("source", {}).get("vmcoreinfo"):
        wanted.append("vmcoreinfo")
    for member in wanted:
        if member not in names:
            problems.append(f"no {member}")
    if capture.get("kallsyms_addresses") != "real":
        problems.append(f"kallsyms addresses {capture.get('kallsyms_addresses')}")
    if record.get("carried") == "sidecar":
        sidecar = Path(str(image) + ".symbols")
        if not sidecar.exists():
            problems.append(f"{sidecar.name} missing")
        else:
            data = sidecar.read_bytes()
            if hashlib.sha256(data).hexdigest() != record.get("sha256") or len(data) != record.get("bytes"):
                problems.append(f"{sidecar.name} is not what the manifest hashed")
            if sidecar.stat().st_mode & 0o777 != 0o600:
                problems.append(f"{sidecar.name} mode {sidecar.stat().st_mode & 0o777:o}")
    modules = sum(1 for n in names if n.startswith("btf/modules/"))
    detail = "; ".join(problems) or (
        f"{record.get('carried')}, {record.get('bytes', 0) / 2**20:.1f} MiB, BTF of {modules} module(s), "
        f"captured in {capture.get('seconds', 0):.2f} s")
    results.add(case.name, subject, "symbols captured", not problems, detail)
    return not problems


def make_isf(results, case, pmem, image, isf_dir, timing):
    """`pmem symbols IMAGE -o DIR`; returns the ISF's path or None."""
    started = time.monotonic()
    proc = subprocess.run([str(pmem), "symbols", str(image), "-o", str(isf_dir)],
                          capture_output=True, text=True)
    timing["pmem symbols"] = time.monotonic() - started
    written = sorted((isf_dir / "linux").glob("*.json.xz")) if proc.returncode == 0 else []
    results.add(case.name, "symbols", f"pmem symbols {image.name}", bool(written),
                f"{written[0].name} {written[0].stat().st_size / 2**20:.2f} MiB in {timing['pmem symbols']:.1f} s"
                if written else (proc.stdout + proc.stderr).strip()[-300:])
    return written[0] if written else None


def bundle_member(image, name):
    """A member of the symbol bundle beside the image (None if absent)."""
    sidecar = Path(str(image) + ".symbols")
    if not sidecar.exists():
        return None
    with tarfile.open(fileobj=io.BytesIO(sidecar.read_bytes())) as tar:
        try:
            return tar.extractfile(name).read()
        except KeyError:
            return None


def expectations(agent_pid, release, modules):
    """Per plugin: (what must hold, test over its rows)."""
    def of_agent(rows):
        return [r for r in rows if r.get("PID") == agent_pid]

    return {
        "linux.pslist": (f"the marker agent (pid {agent_pid}) and pmem",
                         lambda rows: any(r.get("COMM") == "pmem-guest-agen" for r in of_agent(rows))
                         and any(r.get("COMM") == "pmem" for r in rows)),
        "linux.pstree": (f"the marker agent (pid {agent_pid}) under init",
                         lambda rows: any(r.get("__depth", 0) >= 1 for r in of_agent(rows))),
        "linux.psaux": ("the marker agent's arguments",
                        lambda rows: any("plant --seed" in (r.get("ARGS") or "") for r in of_agent(rows))),
        "linux.lsmod": (f"the {len(modules)} module(s) of /proc/modules",
                        lambda rows: sorted(r.get("Module Name") for r in rows) == sorted(modules)),
        "linux.lsof": ("the marker agent's open files", lambda rows: len(of_agent(rows)) >= 3),
        "linux.sockstat": ("the TCP listener on port 4444",
                           lambda rows: any(r.get("Source Port") == "4444" and r.get("State") == "LISTEN"
                                            for r in rows)),
        "linux.mountinfo": ("the /data mount", lambda rows: any(r.get("MOUNT_POINT") == "/data" for r in rows)),
        "linux.kmsg": ("the kernel's banner", lambda rows: any(
            (r.get("line") or "").startswith(f"Linux version {release} ") for r in rows)),
        "linux.check_syscall": ("the syscall table", lambda rows: len(rows) >= 300),
        "linux.check_modules": ("no hidden module", lambda rows: not rows),
        "linux.malfind": ("runs", lambda rows: True),
        "linux.envars": ("the marker agent's OUT=/data/out", lambda rows: any(
            r.get("KEY") == "OUT" and r.get("VALUE") == "/data/out" for r in of_agent(rows))),
    }


def check_plugins(results, case, image, isf_dir, work, agent_pid, release, timing):
    """The 12 plugins through pmem's ISF alone, each against the guest's
    ground truth; then, with PMEM_REFERENCE_ISF, against dwarf2json's ISF."""
    vol = env.venv_python().parent / "vol"
    modules_text = (bundle_member(image, "modules") or b"").decode(errors="replace")
    modules = [line.split()[0] for line in modules_text.splitlines() if line.strip()]
    started = time.monotonic()
    ours = plugins.run_plugins(vol, image, isf_dir, work / "plugins-pmem", say=lambda *_: None)
    timing["vol3 plugins (pmem ISF)"] = time.monotonic() - started
    expected = expectations(agent_pid, release, modules)
    missed = [plugin for plugin, (_, holds) in expected.items()
              if ours.get(plugin) and not ours[plugin]["error"] and not holds(ours[plugin]["rows"])]
    # A miss in pmem's image is told apart from a wrong ISF on QEMU's dump
    # (one instant, no smear): the agent's stack page (argv, environment)
    # can change frame while a GiB is copied, which no ISF can mend.
    dump = work / "dump.elf"
    on_dump = {}
    if missed and dump.exists():
        on_dump = plugins.run_plugins(vol, dump, isf_dir, work / "plugins-qemu-dump", plugins=missed,
                                      say=lambda *_: None)
    for plugin, (what, holds) in expected.items():
        result = ours.get(plugin)
        if result is None or result["error"]:
            results.add(case.name, "symbols", f"vol3 {plugin} with pmem's ISF", False,
                        result["error"] if result else "not run")
            continue
        ok = holds(result["rows"])
        detail = f"{len(result['rows'])} rows; {what} {'found' if ok else 'NOT FOUND'} ({result['seconds']:.0f} s)"
        if not ok:
            agent_rows = [r for r in result["rows"] if r.get("PID") == agent_pid][:4]
            detail += f"; the agent's rows: {json.dumps(agent_rows)[:400]}"
            again = on_dump.get(plugin)
            if again and not again["error"] and holds(again["rows"]):
                ok = True
                detail += ("; found on QEMU's dump with the same ISF: the ISF is right, the page changed "
                           "during pmem's copy (smear)")
            else:
                detail += "; QEMU's dump: " + (again["error"] or "not found either" if again else "not read")
        results.add(case.name, "symbols", f"vol3 {plugin} with pmem's ISF", ok, detail)
    reference_root = os.environ.get("PMEM_REFERENCE_ISF")
    if not reference_root:
        return
    reference = Path(reference_root) / release
    if not (reference / "linux").is_dir():
        results.add(case.name, "symbols", "vol3 plugins: pmem's ISF = dwarf2json's", False,
                    f"PMEM_REFERENCE_ISF has no {release}/linux/")
        return
    started = time.monotonic()
    theirs = plugins.run_plugins(vol, image, reference, work / "plugins-reference", say=lambda *_: None)
    timing["vol3 plugins (dwarf2json ISF)"] = time.monotonic() - started
    rows = plugins.compare(ours, theirs)
    for row in rows:
        results.add(case.name, "symbols", f"{row['plugin']}: pmem's ISF = dwarf2json's",
                    row["verdict"] == "same",
                    f"{row['rows_a']} / {row['rows_b']} rows, {row['identical']} identical: {row['verdict']}")
    say_table = plugins.table(rows)
    (work / "plugins-comparison.txt").write_text(say_table + "\n")
    print(f"[{case.name}] vol3 plugins, pmem's ISF vs dwarf2json's:\n{say_table}", flush=True)


def check_schema(results, case, isf):
    """arm64: the ISF against Volatility 3's schema (no arm64 Linux layer)."""
    proc = subprocess.run([str(env.venv_python()), str(ISF_CHECK), "kernel", str(isf)],
                          capture_output=True, text=True)
    results.add(case.name, "symbols", "ISF schema (vol3's own check)", proc.returncode == 0,
                (proc.stdout + proc.stderr).strip()[-300:])


def check_case(results, case, pmem, out, work, timing, arm64=False):
    """The per-case ISF proof on the first image with symbols (LiME first:
    every Volatility layer reads it)."""
    candidates = [out / f"image.{fmt}" for fmt in ("lime", "elf", "raw") if fmt in case.formats]
    image = next((p for p in candidates if p.exists()), None)
    if image is None:
        return
    isf_dir = work / "isf"
    isf = make_isf(results, case, pmem, image, isf_dir, timing)
    if isf is None:
        return
    if arm64:
        check_schema(results, case, isf)
        return
    pid_file = out / "agent.pid"
    agent_pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
    release = (out / "version.txt").read_text().split()[2]
    check_plugins(results, case, image, isf_dir, work, agent_pid, release, timing)

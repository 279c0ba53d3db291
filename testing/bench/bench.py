#!/usr/bin/env python3
"""pmem vs AVML, side by side in one guest boot per configuration.

    python3 testing/bench/bench.py                      # 6.1, 1 GiB, 1 vCPU, 3 repetitions
    python3 testing/bench/bench.py --config 6.1:1024:2 --config 6.1:2048:1 --reps 3
    python3 testing/bench/bench.py --convert-only       # the offline 4 GiB convert comparison
    python3 testing/bench/bench.py --config 6.1-arm64:1024:1 --steps file,pipe --no-convert
                                                        # arm64 (KPTI on), aarch64 builds of both

Reuses testing/guest (kernels, initramfs, QEMU, data disk). AVML is built
from crates.io into ${PMEM_GUEST_CACHE:-${PMEM_CACHE:-~/.cache/pmem}/guest}/avml, once
(for arm64 guests: avml-arm64, aarch64-unknown-linux-musl, see
testing/guest/arm64.py).
In the guest, for every repetition (tool order alternates: A B, B A, ...;
caches dropped before each step; one warm-up acquisition first):
  file        uncompressed LiME to the guest's disk
  pipe        LiME into a named pipe read by `dd of=/dev/null bs=1M`
  compressed  pmem --compress snappy vs avml acquire --compress, to disk
  dd          the read limit: the kcore System RAM segments in 16 MiB reads
  dd-file     the disk floor: the same reads written to a file on the same
              disk and synced (with the file step)
  dd-pipe     the pipe floor: the same reads written into the pipe step's
              pipe and reader (with the pipe step)
  snappy      the compression floor on one CPU: the same reads through
              pmem's AVML chunk encoder, nothing written (with the
              compressed step)
  blake3      the hash floor of the default: pmem's BLAKE3 code, one thread,
              over as many bytes as RAM
  sha256      the same for `--hash sha256`
  xxh3, copy  for scale: the re-read's page digest (XXH3-64 per page, not
              cryptographic) and one copy of as many bytes
  window      the acquisition window: `pmem acquire --reread` into
              /dev/null, in address order and with --order kernel-first
              (the default's options otherwise); with the file and pipe
              steps' manifests, prints the read window (first read to
              last), the kernel image's window and the share of pages the
              re-read found changed
  mount       (only with --steps ...,mount) `pmem mount`'s memory.raw read
              with dd into a pipe vs `pmem acquire --no-hash --format raw`
              into a pipe: the mount's share of acquire's speed
  symbols     (only with --steps ...,symbols) the cost of capturing the
              kernel's symbols: `pmem acquire --no-hash` (captures them,
              the default) vs the same with --no-symbols; prints the
              capture's own seconds (from the manifest), the bundle's size
              and the peak-RSS and wall-time differences
Times and peak RSS (VmHWM, from wait4) come from `pmem-guest-agent
measure`. Prints medians with the spread (min-max) and the ratios:
pmem/AVML speed, pmem/dd (the read limit) and pmem/floor (the disk floor
for the file step, the pipe floor for the pipe step, the one-CPU
compression floor for the compressed step).
Not a test: numbers depend on the host; run it with no other guest up.
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "guest"))
import arm64  # noqa: E402  (registers the arm64 kernel)
import env  # noqa: E402
import initramfs  # noqa: E402
import vm  # noqa: E402

WORK = Path(os.environ.get("PMEM_BENCH_WORK", HERE / "work"))
AVML = env.AVML_ROOT / "bin" / "avml"


def say(message=""):
    print(message, flush=True)


TOOLS = {
    # step -> tool -> command (in the guest; $OUT is the data disk's out dir).
    # "pmem" is the default (the image hashed while writing: BLAKE3); "pmem-nohash" is
    # `--no-hash`, doing what AVML does (AVML hashes nothing).
    "file": {"pmem": "/data/bin/pmem acquire -q --format lime $OUT/img",
             "pmem-nohash": "/data/bin/pmem acquire -q --no-hash --format lime $OUT/img",
             "avml": "/data/bin/avml acquire $OUT/img"},
    "pipe": {"pmem": "/data/bin/pmem acquire -q --manifest $OUT/img.json --format lime - > /tmp/fifo",
             "pmem-nohash": "/data/bin/pmem acquire -q --manifest $OUT/img.json --no-hash --format lime - "
                            "> /tmp/fifo",
             "avml": "/data/bin/avml acquire /tmp/fifo"},
    "compressed": {"pmem": "/data/bin/pmem acquire -q --format lime --compress snappy $OUT/img",
                   "pmem-nohash": "/data/bin/pmem acquire -q --no-hash --format lime --compress snappy $OUT/img",
                   "avml": "/data/bin/avml acquire --compress $OUT/img"},
}
PMEMS = ("pmem", "pmem-nohash")


def guest_script(reps, memory, steps=("file", "pipe", "compressed", "window")):
    m = "/data/bin/pmem-guest-agent measure"
    lines = [
        "export OUT=/data/out",
        "drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }",
        # One result line per measurement: rep step tool seconds rss_kib rc size
        'res() { set -- "$@" $(cat /tmp/m) $( [ -e $OUT/img ] && stat -c %s $OUT/img || echo 0 ); '
        'echo "$*" >> $OUT/results.txt; echo "@@pmem-guest step $2-$3 0 $4 $6"; }',
        "mkfifo /tmp/fifo",
        "cat /proc/version > $OUT/version.txt",
        "nproc > $OUT/nproc.txt",
        # Warm-up: the first acquisition of a boot is 30-40% slower.
        "drop; /data/bin/pmem acquire -q --format lime $OUT/img; rm -f $OUT/img $OUT/img.json $OUT/img.symbols",
    ]
    for rep in range(reps):
        order = ["pmem", "avml", "pmem-nohash"] if rep % 2 == 0 else ["pmem-nohash", "avml", "pmem"]
        for step in steps:
            if step == "symbols":
                lines += symbols_lines(m, rep)
                continue
            if step == "mount":
                lines += mount_lines(m, rep)
                continue
            if step == "window":
                lines += window_lines(m, rep)
                continue
            for tool in order:
                cmd = TOOLS[step][tool]
                lines.append("drop")
                if step == "pipe":
                    lines.append("dd if=/tmp/fifo of=/dev/null bs=1M 2>/dev/null & reader=$!")
                lines.append(f"{m} /tmp/m -- sh -c '{cmd} 2>/tmp/err' ; "
                             "[ -s /tmp/err ] && sed 's/^/@@pmem-guest error /' /tmp/err | head -3")
                if step == "pipe":
                    lines.append("wait $reader")
                lines.append(f"res {rep} {step} {tool}")
                if tool in PMEMS:  # its time map, for the window summary
                    lines.append(f"cp $OUT/img.json $OUT/manifest-{step}-{tool}-{rep}.json")
                lines.append("rm -f $OUT/img $OUT/img.json $OUT/img.symbols")
        lines.append("drop")
        lines.append(f"{m} /tmp/m -- /data/bin/pmem-guest-agent read-kcore")
        lines.append(f"res {rep} dd dd")
        if "file" in steps:
            # The disk floor: the same reads written to a file on the same
            # disk (and synced, as pmem syncs its image), nothing else.
            lines += ["drop", f"{m} /tmp/m -- sh -c '/data/bin/pmem-guest-agent read-kcore --to-stdout"
                      " > $OUT/img 2>/dev/null && sync'",
                      f"res {rep} dd-file dd", "rm -f $OUT/img"]
        if "pipe" in steps:
            # The pipe floor: the same reads written into the same pipe and
            # reader, nothing else done to them.
            lines += ["drop", "dd if=/tmp/fifo of=/dev/null bs=1M 2>/dev/null & reader=$!",
                      f"{m} /tmp/m -- sh -c '/data/bin/pmem-guest-agent read-kcore --to-stdout"
                      " > /tmp/fifo 2>/dev/null'",
                      "wait $reader", f"res {rep} dd-pipe dd"]
        if "compressed" in steps:
            # The compression floor on one CPU: the reads through pmem's
            # AVML chunk encoder, no writing.
            lines += ["drop", f"{m} /tmp/m -- /data/bin/pmem-guest-agent read-kcore --snappy",
                      f"res {rep} snappy snappy"]
        # The hash floors: pmem's hash code alone over as many bytes as RAM,
        # the default's (BLAKE3) and --hash sha256's; for scale, a fast
        # non-cryptographic hash and a bare copy of the bytes.
        for algorithm in ("blake3", "sha256", "xxh3", "copy"):
            lines.append(f"{m} /tmp/m -- /data/bin/pmem-guest-agent hash-speed {memory} {algorithm}")
            lines.append(f"res {rep} {algorithm} {algorithm}")
    # Keep one plain LiME image for the offline convert comparison.
    lines += ["drop", "/data/bin/pmem acquire -q --format lime $OUT/keep.lime",
              "sync", 'echo "@@pmem-guest done"']
    return "\n".join(lines) + "\n"


SYMBOLS = {"pmem": "/data/bin/pmem acquire -q --no-hash --format lime $OUT/img",
           "pmem-nosym": "/data/bin/pmem acquire -q --no-hash --no-symbols --format lime $OUT/img"}


def symbols_lines(m, rep):
    """The symbols step of one repetition: with and without the capture
    (order alternating), keeping each captured manifest."""
    lines = []
    for tool in (("pmem", "pmem-nosym") if rep % 2 == 0 else ("pmem-nosym", "pmem")):
        lines += ["drop", f"{m} /tmp/m -- sh -c '{SYMBOLS[tool]} 2>/tmp/err' ; "
                  "[ -s /tmp/err ] && grep -v '^pmem: symbols captured' /tmp/err "
                  "| sed 's/^/@@pmem-guest error /' | head -3",
                  f"res {rep} symbols {tool}"]
        if tool == "pmem":
            lines.append(f"cp $OUT/img.json $OUT/symbols-{rep}.json")
        lines.append("rm -f $OUT/img $OUT/img.json $OUT/img.symbols")
    return lines


# The window step: the default acquisition with --reread, into /dev/null
# (no disk: the window is the read side's), in address order and kernel-first.
WINDOW = {"address": "/data/bin/pmem acquire -q --no-symbols --reread --format lime "
                     "--manifest $OUT/manifest-window-address-REP.json - > /dev/null",
          "kernel-first": "/data/bin/pmem acquire -q --no-symbols --reread --order kernel-first "
                          "--format lime --manifest $OUT/manifest-window-kernel-first-REP.json - > /dev/null"}


def window_lines(m, rep):
    lines = []
    for order in (("address", "kernel-first") if rep % 2 == 0 else ("kernel-first", "address")):
        lines += ["drop", f"{m} /tmp/m -- sh -c '{WINDOW[order].replace('REP', str(rep))}'",
                  f"res {rep} window {order}"]
    return lines


def window_summary(out):
    """The read window, the kernel's window and the re-read's changed
    share, from the manifests the pmem runs left (medians over the
    repetitions, min-max)."""
    by = {}
    for path in sorted(out.glob("manifest-*-*.json")):
        step_tool = path.stem[len("manifest-"):].rsplit("-", 1)[0]
        by.setdefault(step_tool, []).append(json.loads(path.read_text()))
    if not by:
        return
    say("\n| run | read window s | kernel window ms | kernel MiB held | re-read: pages changed |")
    say("|---|---|---|---|---|")
    for key in sorted(by):
        ms = by[key]
        window = [m["time_map"]["window_ms"] / 1000 for m in ms if m.get("time_map", {}).get("window_ms")]
        kernel = [m["time_map"]["kernel"]["window_ms"] for m in ms
                  if (m.get("time_map", {}).get("kernel") or {}).get("window_ms") is not None]
        held = [m["time_map"]["kernel"]["buffered_bytes"] / 2**20 for m in ms
                if m.get("time_map", {}).get("kernel")]
        ratio = [m["reread"]["ratio"] * 100 for m in ms if m.get("reread")]
        say(f"| {key} | {med(window):.2f} ({spread(window)}) | {med(kernel):.0f} ({spread(kernel)}) | "
            f"{med(held):.0f} | " + (f"{med(ratio):.3f}% ({spread(ratio)})" if ratio else "") + " |")


# `pmem mount`'s memory.raw read sequentially vs `acquire --no-hash` of
# the same raw layout, each into a pipe read by dd (issue 19's bar: the
# mount at least half acquire's speed).
MOUNT = {"mount-read": "dd if=/tmp/mem/memory.raw bs=1M 2>/dev/null | dd of=/dev/null bs=1M 2>/dev/null",
         "pmem-nohash-raw": "/data/bin/pmem acquire -q --no-hash --no-symbols --format raw - "
                            "| dd of=/dev/null bs=1M 2>/dev/null"}


def mount_lines(m, rep):
    """The mount step of one repetition: the server up for both reads (it
    costs nothing while idle), order alternating."""
    lines = ["mkdir -p /tmp/mem", "/data/bin/pmem mount --no-symbols /tmp/mem 2>/dev/null & mnt=$!",
             "i=0; while [ ! -e /tmp/mem/info.json ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"]
    for tool in (("mount-read", "pmem-nohash-raw") if rep % 2 == 0 else ("pmem-nohash-raw", "mount-read")):
        lines += ["drop", f"{m} /tmp/m -- sh -c '{MOUNT[tool]}'", f"res {rep} mount {tool}"]
    return lines + ["kill -TERM $mnt; wait $mnt"]


def mount_summary(rows):
    """The mount's read speed against acquire's, from the mount step."""
    by = {}
    for r in rows:
        if r["step"] == "mount":
            by.setdefault(r["tool"], []).append(r["secs"])
    if by.get("mount-read") and by.get("pmem-nohash-raw"):
        read, acquire = med(by["mount-read"]), med(by["pmem-nohash-raw"])
        say(f"\nmount: memory.raw read {read:.2f} s ({spread(by['mount-read'])}), acquire --no-hash "
            f"--format raw {acquire:.2f} s ({spread(by['pmem-nohash-raw'])}), both into a pipe: "
            f"the mount at {acquire / read:.2f}x of acquire's speed (medians)")


def symbols_summary(rows, out):
    """The capture's cost, from the symbols step's rows and manifests."""
    by = {}
    for r in rows:
        if r["step"] == "symbols":
            by.setdefault(r["tool"], []).append(r)
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("symbols-*.json"))]
    if not by.get("pmem") or not by.get("pmem-nosym") or not manifests:
        return
    capture = [m["symbols"]["capture"]["seconds"] for m in manifests]
    size = [m["symbols"]["bytes"] / 2**20 for m in manifests]
    rss = med([r["rss"] for r in by["pmem"]]) - med([r["rss"] for r in by["pmem-nosym"]])
    wall = med([r["secs"] for r in by["pmem"]]) - med([r["secs"] for r in by["pmem-nosym"]])
    say(f"\nsymbols capture: {med(capture):.3f} s (median of {len(capture)}, "
        f"{spread(capture)}), bundle {med(size):.1f} MiB; with vs --no-symbols: "
        f"peak RSS {rss:+.1f} MiB, wall {wall:+.2f} s (medians)")


def run_config(kernel_key, memory, smp, reps, pmem, agent, steps):
    kernel = env.KERNELS[kernel_key]
    avml = AVML
    if kernel.target != env.MUSL:  # arm64: both tools built for the guest's architecture
        pmem, agent = env.build_pmem(kernel.target)
        avml = arm64.ensure_avml()
    work = WORK / f"{kernel_key}-{memory}m-{smp}cpu"
    vm.cleanup([work])
    staging = work / "staging"
    (staging / "bin").mkdir(parents=True)
    (staging / "out").mkdir()
    for src, name in ((pmem, "pmem"), (agent, "pmem-guest-agent"), (avml, "avml")):
        shutil.copy2(src, staging / "bin" / name)
    (staging / "case.sh").write_text(guest_script(reps, memory, steps))
    initramfs.build(kernel, work / "initrd.cpio")
    vm.make_data_disk(staging, work / "disk.img", int(memory / 1024 * 2) + 2)
    say(f"[bench] booting {kernel.release()}, {memory} MiB, {smp} vCPU(s); {reps} repetitions")
    guest = vm.Guest(kernel.vmlinuz(), work / "initrd.cpio", work / "disk.img", memory, work,
                     timeout=7200, log=say, smp=smp, qemu=kernel.qemu,
                     machine="virt" if kernel.qemu else "pc")
    guest.run()
    out = vm.extract(work / "disk.img", "/out", work)
    vm.cleanup([work / "disk.img", staging])
    rows = []
    for line in (out / "results.txt").read_text().split("\n"):
        f = line.split()
        if len(f) == 7:
            rows.append(dict(rep=int(f[0]), step=f[1], tool=f[2], secs=float(f[3]),
                             rss=int(f[4]) / 1024, rc=int(f[5]), size=int(f[6])))
    return rows, out, (out / "version.txt").read_text().split()[2]


def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values):
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def table(rows, memory, title):
    mib = memory  # acquired bytes are ~ the guest's RAM
    say(f"\n### {title}\n")
    say("| step | tool | seconds (median, min-max) | MiB/s | peak RSS MiB | output MiB "
        "| pmem/AVML speed | pmem/dd | pmem/floor |")
    say("|---|---|---|---|---|---|---|---|---|")
    by = {}
    for r in rows:
        by.setdefault((r["step"], r["tool"]), []).append(r)

    def median_of(step, tool):
        return med([r["secs"] for r in by.get((step, tool), [])])

    dd = median_of("dd", "dd")
    # What each step cannot go below on this guest (nan: not measured).
    floors = {"file": median_of("dd-file", "dd"), "pipe": median_of("dd-pipe", "dd"),
              "compressed": median_of("snappy", "snappy")}
    steps = [("file", ("pmem", "pmem-nohash", "avml")), ("pipe", ("pmem", "pmem-nohash", "avml")),
             ("compressed", ("pmem", "pmem-nohash", "avml")), ("dd", ("dd",)), ("dd-file", ("dd",)),
             ("dd-pipe", ("dd",)),
             ("snappy", ("snappy",)), ("blake3", ("blake3",)), ("sha256", ("sha256",)),
             ("xxh3", ("xxh3",)), ("copy", ("copy",))]
    for step, tools in steps:
        for tool in tools:
            rs = by.get((step, tool), [])
            if not rs:
                continue
            secs = [r["secs"] for r in rs]
            failed = sum(1 for r in rs if r["rc"] != 0)
            speed = vs_dd = vs_floor = ""
            if tool in PMEMS:
                avml = [r["secs"] for r in by.get((step, "avml"), [])]
                if avml:
                    speed = f"{med(avml) / med(secs):.2f}x"
                vs_dd = f"{dd / med(secs):.2f}" if dd == dd else ""
                floor = floors.get(step, float("nan"))
                vs_floor = f"{floor / med(secs):.2f}" if floor == floor else ""
            size = med([r["size"] / 2**20 for r in rs]) if step in ("file", "compressed") else None
            say(f"| {step} | {tool}{' (' + str(failed) + ' failed)' if failed else ''} | "
                f"{med(secs):.2f} ({spread(secs)}) | {mib / med(secs):.0f} | "
                f"{med([r['rss'] for r in rs]):.1f} ({spread([r['rss'] for r in rs])}) | "
                f"{'' if size is None else f'{size:.1f}'} | {speed} | {vs_dd} | {vs_floor} |")
    comp = [(r["rep"], r["tool"], r["size"]) for r in rows if r["step"] == "compressed"]
    per_rep = {}
    for rep, tool, size in comp:
        per_rep.setdefault(rep, {})[tool] = size
    for tool in PMEMS:
        ratios = [d[tool] / d["avml"] for d in per_rep.values() if tool in d and d.get("avml")]
        if ratios:
            say(f"\ncompressed size {tool}/AVML within each repetition: "
                + ", ".join(f"{x:.3f}" for x in ratios))


def make_big_lime(src, dst, copies=4):
    """A 4 GiB LiME file: `copies` copies of a real guest image, each moved
    up by 4 GiB (LiME header: magic, version, start, end inclusive, 0)."""
    data = src.read_bytes()
    with open(dst, "wb") as out:
        for k in range(copies):
            at = 0
            while at < len(data):
                magic, version, start, end, pad = struct.unpack_from("<IIQQQ", data, at)
                if magic != 0x4C694D45:
                    raise SystemExit(f"{src}: not LiME at {at:#x}")
                n = end - start + 1
                out.write(struct.pack("<IIQQQ", magic, version, start + (k << 32), end + (k << 32), pad))
                out.write(data[at + 32:at + 32 + n])
                at += 32 + n


def timed(cmd):
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        say(f"[bench] {' '.join(map(str, cmd))} failed: {proc.stderr[-500:]}")
    return time.monotonic() - t, proc.returncode


def convert_bench(lime, pmem_host, reps):
    work = WORK / "convert"
    work.mkdir(parents=True, exist_ok=True)
    big = work / "big.lime"
    make_big_lime(lime, big)
    size = big.stat().st_size
    say(f"\n### offline convert on the host: {size / 2**30:.2f} GiB LiME -> AVML compressed LiME\n")
    tools = ("pmem", "pmem-nohash", "avml")
    rows = {tool: [] for tool in tools}
    sizes = {}
    for rep in range(reps):
        for tool in (tools if rep % 2 == 0 else tools[::-1]):
            out = work / f"out.{tool}"
            for p in (out, Path(str(out) + ".json")):
                if p.exists():
                    p.unlink()
            pmem_cmd = [str(pmem_host), "convert", "-q", "--format", "lime", "--compress", "snappy"]
            cmd = {"pmem": pmem_cmd + [str(big), str(out)],
                   "pmem-nohash": pmem_cmd + ["--no-hash", str(big), str(out)],
                   "avml": [str(AVML), "convert", "--source-format", "lime", "--format", "lime_compressed",
                            str(big), str(out)]}[tool]
            secs, rc = timed(cmd)
            rows[tool].append(secs)
            sizes[tool] = out.stat().st_size if out.exists() else 0
    say("| tool | seconds (median, min-max) | MiB/s | output MiB | pmem/AVML speed |")
    say("|---|---|---|---|---|")
    for tool in tools:
        speed = f"{med(rows['avml']) / med(rows[tool]):.2f}x" if tool != "avml" else ""
        say(f"| {tool} | {med(rows[tool]):.2f} ({spread(rows[tool])}) | {size / 2**20 / med(rows[tool]):.0f} | "
            f"{sizes[tool] / 2**20:.1f} | {speed} |")
    vm.cleanup([big] + [work / f"out.{tool}" for tool in tools])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append",
                        help="KERNEL:MEMORY_MIB:VCPUS (default 6.1:1024:1; repeatable)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--convert-only", action="store_true")
    parser.add_argument("--no-convert", action="store_true")
    parser.add_argument("--steps", default="file,pipe,compressed,window",
                        help="comma-separated guest steps (default file,pipe,compressed,window)")
    args = parser.parse_args()
    busy = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True).stdout.strip()
    if busy:
        say(f"[bench] warning: other guests are running, numbers will be noisy:\n{busy}")
    say(f"[bench] host: {os.cpu_count()} CPUs, {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    configs = [c.split(":") for c in (args.config or ["6.1:1024:1"])]
    env.setup(kernels=sorted({c[0] for c in configs}), volatility=False)
    pmem, agent = env.build_pmem()
    env.ensure_avml()
    keep = None
    if not args.convert_only:
        for kernel, memory, smp in configs:
            rows, out, release = run_config(kernel, int(memory), int(smp), args.reps, pmem, agent,
                                            [s for s in args.steps.split(",") if s])
            table(rows, int(memory), f"{release}, {memory} MiB, {smp} vCPU(s), {args.reps} repetitions")
            symbols_summary(rows, out)
            mount_summary(rows)
            window_summary(out)
            if (out / "keep.lime").exists():
                keep = out / "keep.lime"
    if not args.no_convert:
        if keep is None:
            keeps = sorted(WORK.glob("*/out/keep.lime"))
            if not keeps:
                raise SystemExit("no guest LiME image to build the 4 GiB file from: run a configuration first")
            keep = keeps[-1]
        # The static musl build runs on the host as well.
        convert_bench(keep, pmem, args.reps)
    say(f"\n[bench] host after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()

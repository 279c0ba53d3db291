"""`pmem mount` in a guest (issue 19): live memory as files, read by pmem's
readers and checked against the markers and QEMU's dump.

Guest steps (`guest_lines`); FUSE comes from the guest kernel itself
(fuse.ko of the kernel package, loaded by /init on 6.1; built in on 6.12):

1. mount-up: `pmem mount /tmp/mem` (symbols captured), until info.json
   appears;
2. mount-copy-raw: `cp` of memory.raw to the disk (mount.raw): the host
   checks every marker page at its physical address, the kernel's code and
   rodata against QEMU's dump, and that every byte outside System RAM
   reads as zero;
3. mount-convert-lime: `pmem convert` of memory.lime into mount.elf (pmem's
   LiME reader over the mount), checked the same way;
4. mount-info-elf / mount-copy-symbols: `pmem info` of memory.elf (which
   must carry the symbol bundle), and a copy of symbols.tar that the host
   turns into an ISF with `pmem symbols --bundle`;
5. mount-live: the agent's `live-page` changes one of its own pages; the
   page read through memory.raw (by frame number) holds the old and then
   the new content;
6. mount-sigterm / mount-sigint: the server ends on each signal and the
   mount is gone from /proc/self/mounts.

Speed (memory.raw read sequentially against `pmem acquire --no-hash` into a
pipe) is the benchmark's: `testing/bench/bench.py --steps mount`.
"""

import json
import subprocess

from images import ElfImage, ImageError, RawImage

MNT = "/tmp/mem"


def guest_lines():
    # Shell functions: `step` runs them in the case script's own shell,
    # which knows $mnt (an `sh -c` would not).
    wait_up = ("mount_up() { i=0; while [ ! -e " + MNT + "/info.json ] && kill -0 $mnt 2>/dev/null "
               "&& [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; [ -e " + MNT + "/info.json ]; }")
    unmounted = f'unmounted() {{ ! grep -q " {MNT} " /proc/self/mounts; }}'
    # end_mount SIGNAL: signals the server, gives it 60 s to end (then
    # kills it: a hang fails the step instead of the whole guest); its
    # exit status.
    end_mount = ("end_mount() { kill -$1 $mnt; i=0; while kill -0 $mnt 2>/dev/null && [ $i -lt 600 ]; "
                 "do sleep 0.1; i=$((i+1)); done; if kill -0 $mnt 2>/dev/null; then kill -KILL $mnt; "
                 "wait $mnt; return 124; fi; wait $mnt; }")
    return [
        wait_up,
        unmounted,
        end_mount,
        f"mkdir -p {MNT} /tmp/live",
        f"/data/bin/pmem mount {MNT} 2> $OUT/mount.log &",
        "mnt=$!",
        "step mount-up mount_up",
        f"step mount-copy-raw cp {MNT}/memory.raw $OUT/mount.raw",
        f"step mount-convert-lime /data/bin/pmem convert --quiet --no-hash --format elf {MNT}/memory.lime "
        "$OUT/mount.elf "
        "2> $OUT/mount-convert.log",
        f'step mount-info-elf sh -c "/data/bin/pmem info --json {MNT}/memory.elf > $OUT/mount-info-elf.json"',
        f"step mount-copy-symbols cp {MNT}/symbols.tar $OUT/mount-symbols.tar",
        # Live: the agent's page read through memory.raw before and after
        # the agent changes it (dd skip= counts 4 KiB blocks: the frame
        # number). That no read is served from a cache is the CLI test's
        # (crates/pmem/tests/mount.rs, one open file across the change).
        "/data/bin/pmem-guest-agent live-page --dir /tmp/live --timeout-secs 600 2> $OUT/live-page.log &",
        "live=$!",
        "while [ ! -e /tmp/live/ready ] && kill -0 $live 2>/dev/null; do sleep 0.1; done",
        "frame=$(cat /tmp/live/frame)",
        f"dd if={MNT}/memory.raw bs=4096 skip=$frame count=1 of=/tmp/live/read-before 2>/dev/null",
        "touch /tmp/live/change",
        "while [ ! -e /tmp/live/changed ] && kill -0 $live 2>/dev/null; do sleep 0.1; done",
        f"dd if={MNT}/memory.raw bs=4096 skip=$frame count=1 of=/tmp/live/read-after 2>/dev/null",
        "step mount-live sh -c 'cmp /tmp/live/read-before /tmp/live/before && "
        "cmp /tmp/live/read-after /tmp/live/after'",
        "touch /tmp/live/stop",
        "wait $live",
        'echo "@@pmem-guest step live-page-agent 0 0 $?"',
        "echo $frame > $OUT/live-frame.txt",
        f"cat {MNT}/info.json > $OUT/mount-info.json",
        "step mount-sigterm end_mount TERM",
        "step mount-sigterm-unmounted unmounted",
        # Again without symbols (quicker to come up), ended by SIGINT.
        f"/data/bin/pmem mount --no-symbols {MNT} 2> $OUT/mount-sigint.log &",
        "mnt=$!",
        "step mount-up-again mount_up",
        "step mount-sigint end_mount INT",
        "step mount-sigint-unmounted unmounted",
    ]


def check(results, case, out, work, ctx, markers_mod, compare_kernel, whole_pages, guest, vol):
    """Host checks of the files the guest steps wrote (ctx: guest.py's)."""
    pmem, ram, kernel_ranges, dump, marker_list, expected, release = ctx
    name = case.name
    ram_pages, _ = whole_pages(ram)
    for subject, path, opener in (
        ("mount memory.raw", out / "mount.raw", lambda p: RawImage(p, ram_pages)),
        ("mount memory.lime", out / "mount.elf", ElfImage),
    ):
        if not path.exists():
            results.add(name, subject, "copied through the mount", False, f"{path.name} missing")
            continue
        try:
            image = opener(path)
        except ImageError as e:
            results.add(name, subject, "copied through the mount", False, str(e))
            continue
        if isinstance(image, RawImage):
            results.add(name, subject, "outside System RAM reads as zeros", image.padding_is_zero(),
                        f"{image.size >> 20} MiB file, {len(ram_pages)} RAM ranges")
        else:
            covered = image.ranges()
            results.add(name, subject, "covers exactly System RAM", covered == ram_pages,
                        f"{len(covered)} ranges")
        checked, matching, failures = markers_mod.check(image, marker_list, expected)
        results.add(name, subject, "marker pages byte-exact", checked == matching == marker_list.pages,
                    f"{matching}/{checked} match" + ("; " + "; ".join(failures) if failures else ""))
        ok, detail = compare_kernel(image, dump, kernel_ranges)
        results.add(name, subject, "kernel code+rodata = QEMU dump", ok, detail)
        image.file.close()
        if vol and isinstance(image, RawImage):
            # Volatility 3 runs on the host: on the copy made through the
            # mount (the layer it stacks, the kernel banner it finds).
            vol.submit(name, subject, "raw", path, release)
            vol.when_done(name, lambda p=path: p.unlink(missing_ok=True))
        else:
            path.unlink()

    info_path = out / "mount-info-elf.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    to_ranges = lambda rs: [(int(r["start"], 16), int(r["last"], 16)) for r in rs]  # noqa: E731
    results.add(name, "mount memory.elf", "pmem info reads it",
                info.get("format") == "elf" and to_ranges(info.get("ranges", [])) == ram_pages,
                f"format {info.get('format')}, {len(info.get('ranges', []))} ranges")
    bundle = out / "mount-symbols.tar"
    carried = info.get("symbols") or {}
    results.add(name, "mount memory.elf", "carries the symbol bundle",
                carried.get("where") == "image" and carried.get("kernel_release") == release
                and bundle.exists() and carried.get("bytes") == bundle.stat().st_size,
                f"{carried.get('bytes')} bytes, kernel {carried.get('kernel_release')}")
    isf_dir = work / "mount-isf"
    made = subprocess.run([str(pmem), "symbols", "--bundle", str(bundle), "-o", str(isf_dir)],
                          capture_output=True, text=True) if bundle.exists() else None
    isf = list(isf_dir.rglob("*.json.xz")) if isf_dir.exists() else []
    results.add(name, "mount symbols.tar", "pmem symbols makes an ISF of it", bool(isf),
                ", ".join(p.name for p in isf) or (made.stderr.strip()[-300:] if made else "missing"))
    served_path = out / "mount-info.json"
    served = json.loads(served_path.read_text()) if served_path.exists() else {}
    s = served.get("served", {})
    files = [f.get("name") for f in served.get("files", [])]
    want = ["memory.raw", "memory.lime", "memory.elf", "iomem", "vmcoreinfo", "symbols.tar"]
    results.add(name, "mount info.json", "files, source and served counts",
                files == want and served.get("origin", {}).get("host", {}).get("kernel_release") == release
                and s.get("read_requests", 0) > 0 and s.get("unreadable_pages") == 0,
                f"files {files}; {s.get('read_requests')} requests, {s.get('bytes_read', 0) >> 20} MiB, "
                f"{s.get('unreadable_pages')} unreadable pages")

    steps = {n: (seconds, rc) for n, seconds, rc in guest.steps}
    frame = (out / "live-frame.txt").read_text().strip() if (out / "live-frame.txt").exists() else "?"
    results.add(name, "mount live", "a page the agent changes reads changed at once",
                steps.get("mount-live", (0, 1))[1] == 0 and steps.get("live-page-agent", (0, 1))[1] == 0,
                f"frame {frame}")
    for signal in ("sigterm", "sigint"):
        ok = steps.get(f"mount-{signal}", (0, 1))[1] == 0 and steps.get(f"mount-{signal}-unmounted", (0, 1))[1] == 0
        results.add(name, "mount end", f"{signal.upper()} ends the server and unmounts", ok)

"""The acquisition window in a guest (issue 18): `acquire --reread` with
and without memory changing at a known rate, and `--order kernel-first`
against address order.

Guest steps (`guest_lines`), all to /dev/null (no disk, no image checks):

1. window-idle: raw, image hashed (the pipeline's usual pace), --reread:
   what an idle guest changes during a copy, and the kernel window in
   address order;
2. window-kernel-first, window-kernel-first-2: the same with --order
   kernel-first, twice: the kernel window when the kernel is read ahead
   (the shorter of the two counts: a read-ahead of ~60 ms under TCG is
   easily stretched by the host's other work, see check());
3. window-churn: the agent's `churn` rewrites CHURN_RATE_MIB MiB/s of its
   own locked buffer while pmem copies (--no-hash: a shorter window, so
   the buffer is never gone round) and re-reads.

Each step also records pmem's peak RSS (VmHWM, sampled every 0.2 s: it
only grows) to compare kernel-first's read-ahead with address order.

About 2 minutes of guest time on the 1 GiB guest under TCG (23 s, 2 x 23 s
and 15 s measured).
"""

import json
from pathlib import Path

CHURN_MIB = 160
CHURN_RATE_MIB = 2
PMEM = "/data/bin/pmem acquire --quiet --no-symbols --format raw"


def guest_lines():
    def step(name, args):
        return (f'step {name} hwm $OUT/{name}.hwm sh -c "exec {PMEM} {args} '
                f'--manifest $OUT/{name}.json - > /dev/null 2> $OUT/{name}.log"')

    return [
        # hwm FILE CMD...: runs CMD, writes its peak RSS (KiB) to FILE.
        'hwm() { f=$1; shift; "$@" & p=$!; peak=0; while kill -0 $p 2>/dev/null; do '
        'v=$(grep VmHWM /proc/$p/status 2>/dev/null | tr -dc 0-9); [ -n "$v" ] && peak=$v; '
        'sleep 0.2; done; wait $p; rc=$?; echo $peak > $f; return $rc; }',
        step("window-idle", "--reread"),
        step("window-kernel-first", "--reread --order kernel-first"),
        step("window-kernel-first-2", "--reread --order kernel-first"),
        f"/data/bin/pmem-guest-agent churn --mib {CHURN_MIB} --rate-mib {CHURN_RATE_MIB} "
        "--ready /tmp/churn-ready --stop /tmp/churn-stop --report $OUT/churn-report.txt "
        "2> $OUT/churn.log &",
        "churn=$!",
        "while [ ! -e /tmp/churn-ready ] && kill -0 $churn 2>/dev/null; do sleep 0.1; done",
        step("window-churn", "--no-hash --reread"),
        "touch /tmp/churn-stop",
        "wait $churn",
        'echo "@@pmem-guest step churn-agent 0 0 $?"',
    ]


def _load(out, name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _report(out):
    path = out / "churn-report.txt"
    if not path.exists():
        return {}
    return dict(line.split(None, 1) for line in path.read_text().splitlines() if " " in line)


def _hwm(out, name):
    path = out / f"{name}.hwm"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def expected_changed(manifest, rate_pages):
    """The pages a re-read should find changed when pages are rewritten at
    `rate_pages` per second (each at most once) during the copy and the
    re-read, as (low, high).

    A page written at time w counts when its copy came before w and its
    re-read after. Both passes go in address order: a page at relative
    position x of the address range is copied at x*W and re-read at D +
    x*R (W: copy window, R: re-read time, D: re-read start, all from the
    copy's start), so it counts for writes in a window of D + x*(R - W)
    seconds. Where the churn buffer's frames lie (x) is not known: the
    count lies between rate * (D + min(0, R - W)) and rate * (D + max(0,
    R - W)). What changes without the churn is left to the caller."""
    t = manifest["time_map"]
    r = manifest["reread"]
    w = (t["window_ms"] or 0) / 1000
    d = r["started_ms"] / 1000
    rr = r["seconds"]
    low = rate_pages * (d + min(0.0, rr - w))
    high = rate_pages * (d + max(0.0, rr - w))
    return low, high


def check(results, case, out):
    name = case.name
    idle, first, again, churn = (_load(out, n) for n in (
        "window-idle", "window-kernel-first", "window-kernel-first-2", "window-churn"))
    if not (idle and first and again and churn):
        results.add(name, "window", "manifests written", False,
                    f"idle={bool(idle)} kernel-first={bool(first and again)} churn={bool(churn)}")
        return
    # Idle: what changes by itself, reported and loosely bounded. pmem's own
    # memory counts too: its 4 MiB of read buffers and its page digests (2
    # MiB per GiB) are rewritten while they are copied, ~1,500 pages on the
    # 1 GiB guest; the idle 6.12 guest's kernel added ~1,700 more over a
    # 50 s copy and re-read (first run: 3,247 pages, 1.24%). Under 2%.
    ir = idle["reread"]
    iw = idle["time_map"]["window_ms"] / 1000
    idle_span = ir["started_ms"] / 1000 + ir["seconds"]
    idle_rate = ir["pages_changed"] / idle_span if idle_span > 0 else 0.0
    results.add(name, "window idle", "re-read: near zero changed (< 2%)", ir["ratio"] < 0.02,
                f"{ir['pages_changed']} of {ir['pages_compared']} pages ({ir['ratio']:.4%}) changed; "
                f"copy window {iw:.1f} s, re-read {ir['seconds']:.1f} s (~{idle_rate:.0f} pages/s)")

    # Churn: the count agrees with rate x window.
    rep = _report(out)
    rate = float(rep.get("rate_pages_per_s", "0"))
    wrapped = rep.get("wrapped", "?").strip()
    cr = churn["reread"]
    low, high = expected_changed(churn, rate)
    # 20% either side: the churn keeps its rate only to a 10 ms tick on a
    # single vCPU that pmem keeps busy (it catches up in bursts), and a
    # page's read time is known to the 1 MiB request that held it. Above,
    # what changes without the churn (pmem's own buffers, which do not
    # scale with the window, and the kernel's pages): at most the idle
    # run's count, whose window is longer.
    high = 1.2 * high + ir["pages_changed"]
    ok = wrapped == "false" and rate > 0 and 0.8 * low <= cr["pages_changed"] <= high
    results.add(name, "window churn", "re-read: changed pages = rate x window", ok,
                f"{cr['pages_changed']} changed, expected {low:.0f}..{high:.0f} "
                f"(churn {rate:.0f} pages/s, wrapped {wrapped}; copy window "
                f"{churn['time_map']['window_ms'] / 1000:.1f} s, re-read from "
                f"{cr['started_ms'] / 1000:.1f} s for {cr['seconds']:.1f} s)")

    # Kernel-first: the kernel read ahead, at the source's own pace instead
    # of the pipeline's (which hashes the image and, with --reread as in
    # the kernel-first steps, digests each page: ~45 MiB/s under TCG), into a
    # buffer whose pages are faulted in before the first read (with them
    # faulted in during the reads, 2031 ms vs 560 ms: 3.6x). Issue 18 asks
    # for 10x on a 1 GiB guest: measured 988 ms vs 78 ms (12.6x). The
    # read-ahead itself runs at /proc/kcore's pace, 56-127 ms in the
    # suite's runs: a host busy elsewhere stretches so short a burst more
    # than the second-long address-order window, so the shorter of two
    # kernel-first runs is compared.
    ka = idle["time_map"].get("kernel") or {}
    kfs = [m["time_map"].get("kernel") or {} for m in (first, again)]
    wa = ka.get("window_ms")
    runs = [k.get("window_ms") for k in kfs]
    wf = min((w for w in runs if w is not None), default=None)
    kf = kfs[runs.index(wf)] if wf is not None else {}
    ok = (all(m["time_map"]["order"] == "kernel-first" for m in (first, again))
          and wa is not None and wf is not None and wf * 10 <= wa)
    span = sum(r["bytes"] for r in ka.get("ranges", [])) / (1 << 20)
    hwm_a, hwm_f = _hwm(out, "window-idle"), _hwm(out, "window-kernel-first")
    results.add(name, "window kernel-first", "kernel window >= 10x shorter than address order", ok,
                f"kernel image {span:.1f} MiB read over {wa} ms (address) vs {wf} ms (kernel-first, "
                f"runs {' and '.join(str(w) for w in runs)} ms, "
                f"{kf.get('buffered_bytes', 0) >> 20} MiB held); whole window "
                f"{idle['time_map']['window_ms'] / 1000:.1f} s vs {first['time_map']['window_ms'] / 1000:.1f} s; "
                f"peak RSS {hwm_a} KiB vs {hwm_f} KiB")

"""Volatility 3's Linux plugins on one image, through one symbols directory,
and two such runs compared row by row (pmem's ISF against dwarf2json's).

    plugins.py run --vol VOL --image IMG --symbols DIR --out OUT [--plugin P ...]
    plugins.py compare OUT_A OUT_B            # two `run` outputs
    plugins.py both --vol VOL --image IMG --pmem DIR --reference DIR --out OUT

Each plugin is its own `vol` process: stock vol3, only the given symbols
directory (`-s`), `--offline` (no remote ISF lookup), a cache directory of
its own per run (vol3 caches the banners it has seen: a cache shared with
another symbols directory could hand it the other ISF), JSON output, and a
time limit. A plugin that fails is a result with its error, not a crash.

Output per run in OUT: PLUGIN.json (vol3's rows), PLUGIN.stderr, and
results.json (per plugin: rows, seconds, error). Importable by the guest
suite: run_plugins(vol, image, symbols_dir, out_dir) -> results,
compare(a, b) -> rows of the table, table(rows) -> text.
"""
import argparse
import collections
import json
import pathlib
import shutil
import subprocess
import sys
import time

PLUGINS = [
    "linux.pslist",
    "linux.pstree",
    "linux.psaux",
    "linux.lsmod",
    "linux.lsof",
    "linux.sockstat",
    "linux.mountinfo",
    "linux.kmsg",
    "linux.check_syscall",
    "linux.check_modules",
    "linux.malfind",
    "linux.envars",
]

# Per plugin, seconds; lsof and envars read every task's memory.
DEFAULT_TIMEOUT = 900


def flatten(rows, depth=0):
    """vol3's JSON rows, tree plugins' `__children` made rows with a depth:
    pstree's shape is then compared too, not only its set of processes."""
    flat = []
    for row in rows:
        children = row.get("__children") or []
        own = {k: v for k, v in row.items() if k != "__children"}
        if depth or children:
            own["__depth"] = depth
        flat.append(own)
        flat.extend(flatten(children, depth + 1))
    return flat


def error_of(stderr):
    """The line of vol3's stderr that says why it failed (its last
    non-empty one: the exception, or vol3's own 'Unsatisfied requirement')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    interesting = [line for line in lines if "requirement" in line.lower() or "Error" in line]
    return (interesting or lines or ["no output"])[-1][:400]


def run_plugin(vol, image, symbols_dir, out_dir, plugin, cache, timeout=DEFAULT_TIMEOUT):
    cmd = [str(vol), "-q", "-r", "json", "--offline", "--cache-path", str(cache),
           "-s", str(symbols_dir), "-f", str(image), plugin]
    started = time.monotonic()
    result = {"plugin": plugin, "rows": None, "error": None, "seconds": None}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        result["seconds"] = round(time.monotonic() - started, 1)
        result["error"] = f"timed out after {timeout} s"
        (out_dir / f"{plugin}.stderr").write_text((e.stderr or b"").decode(errors="replace")
                                                  if isinstance(e.stderr, bytes) else (e.stderr or ""))
        return result
    result["seconds"] = round(time.monotonic() - started, 1)
    (out_dir / f"{plugin}.stderr").write_text(proc.stderr)
    (out_dir / f"{plugin}.json").write_text(proc.stdout)
    try:
        rows = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        rows = None
    if proc.returncode != 0 or rows is None:
        result["error"] = f"exit {proc.returncode}: {error_of(proc.stderr)}"
    else:
        result["rows"] = flatten(rows)
    return result


VALIDATIONS = "valid_isf.hashcache"


def load_validations(path):
    try:
        return set(json.loads(pathlib.Path(path).read_text()))
    except (OSError, ValueError):
        return set()


def run_plugins(vol, image, symbols_dir, out_dir, plugins=PLUGINS, timeout=DEFAULT_TIMEOUT, say=print,
                validation_cache=None):
    """Runs each plugin; returns {plugin: result}, also saved as results.json.

    validation_cache: a file of the ISF hashes vol3 has validated, shared
    between runs. vol3 checks each ISF against its JSON schema before use,
    ~90 s for a kernel's ISF on a busy 2-core machine, and remembers the
    ISF's content hash in its cache directory; only that list is carried
    over (safe: it is keyed by content), never the banner cache."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "vol-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    if validation_cache:
        known = load_validations(validation_cache)
        if known:
            (cache / VALIDATIONS).write_text(json.dumps(sorted(known)))
    results = {}
    for plugin in plugins:
        result = run_plugin(vol, image, symbols_dir, out_dir, plugin, cache, timeout)
        results[plugin] = result
        rows = "-" if result["rows"] is None else len(result["rows"])
        say(f"  {plugin:<22} {result['seconds']:>6} s  rows {rows}"
            + (f"  ERROR {result['error']}" if result["error"] else ""))
    if validation_cache:
        known = load_validations(validation_cache) | load_validations(cache / VALIDATIONS)
        pathlib.Path(validation_cache).write_text(json.dumps(sorted(known)))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def load(out_dir):
    return json.loads((pathlib.Path(out_dir) / "results.json").read_text())


def canonical(row):
    return json.dumps(row, sort_keys=True)


def compare(a, b):
    """Rows of the table for two run_plugins results (a: pmem, b: reference):
    dicts with plugin, rows_a, rows_b, identical, verdict, only_a, only_b
    (the rows each side has that the other lacks, as multisets)."""
    table = []
    for plugin in list(dict.fromkeys([*a, *b])):
        ra, rb = a.get(plugin), b.get(plugin)
        entry = {"plugin": plugin, "rows_a": None, "rows_b": None, "identical": None,
                 "only_a": [], "only_b": [], "error_a": ra and ra["error"], "error_b": rb and rb["error"]}
        if ra is None or rb is None:
            entry["verdict"] = "not run on both"
        elif ra["error"] or rb["error"]:
            entry["rows_a"] = None if ra["rows"] is None else len(ra["rows"])
            entry["rows_b"] = None if rb["rows"] is None else len(rb["rows"])
            entry["verdict"] = ("both fail" if ra["error"] and rb["error"]
                                else "pmem fails" if ra["error"] else "reference fails")
        else:
            ca = collections.Counter(canonical(r) for r in ra["rows"])
            cb = collections.Counter(canonical(r) for r in rb["rows"])
            entry["rows_a"], entry["rows_b"] = len(ra["rows"]), len(rb["rows"])
            entry["identical"] = sum((ca & cb).values())
            entry["only_a"] = list((ca - cb).elements())
            entry["only_b"] = list((cb - ca).elements())
            entry["verdict"] = "same" if not entry["only_a"] and not entry["only_b"] else "DIFFERENT"
        table.append(entry)
    return table


def table(rows, first=3, label_a="pmem", label_b="reference"):
    """The comparison as text: one line per plugin, then the first rows that
    differ and the errors."""
    def cell(v):
        return "-" if v is None else str(v)

    header = f"{'plugin':<22} | {'rows ' + label_a:>10} | {'rows ' + label_b:>15} | {'identical':>9} | verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['plugin']:<22} | {cell(r['rows_a']):>10} | {cell(r['rows_b']):>15} | "
                     f"{cell(r['identical']):>9} | {r['verdict']}")
    for r in rows:
        if r["verdict"] == "same":
            continue
        lines.append(f"\n{r['plugin']}: {r['verdict']}")
        if r["error_a"]:
            lines.append(f"  {label_a} error: {r['error_a']}")
        if r["error_b"]:
            lines.append(f"  {label_b} error: {r['error_b']}")
        for row in r["only_a"][:first]:
            lines.append(f"  only {label_a}: {row[:300]}")
        for row in r["only_b"][:first]:
            lines.append(f"  only {label_b}: {row[:300]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the plugins with one symbols directory")
    both = sub.add_parser("both", help="run with pmem's and the reference symbols, compare")
    for p in (run, both):
        p.add_argument("--vol", default=str(pathlib.Path.home() / ".cache/pmem/guest/venv/bin/vol"))
        p.add_argument("--image", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--plugin", action="append", help="only these plugins (repeatable)")
        p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per plugin")
        p.add_argument("--validation-cache", metavar="FILE",
                       help="vol3's list of validated ISF hashes, kept between runs (saves its ~90 s "
                            "schema check per ISF; the banner cache is never shared)")
    run.add_argument("--symbols", required=True)
    both.add_argument("--pmem", required=True, help="symbols dir with pmem's ISF")
    both.add_argument("--reference", required=True, help="symbols dir with dwarf2json's ISF")
    cmp = sub.add_parser("compare", help="compare two `run` outputs")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args()
    if args.cmd == "run":
        run_plugins(args.vol, args.image, args.symbols, args.out, args.plugin or PLUGINS, args.timeout,
                    validation_cache=args.validation_cache)
        return 0
    if args.cmd == "compare":
        rows = compare(load(args.a), load(args.b))
    else:
        out = pathlib.Path(args.out)
        results = {}
        for label, symbols in (("pmem", args.pmem), ("reference", args.reference)):
            print(f"{label}: {symbols}")
            started = time.monotonic()
            results[label] = run_plugins(args.vol, args.image, symbols, out / label,
                                         args.plugin or PLUGINS, args.timeout,
                                         validation_cache=args.validation_cache)
            print(f"  total {time.monotonic() - started:.0f} s")
        rows = compare(results["pmem"], results["reference"])
    print(table(rows))
    return 0 if all(r["verdict"] == "same" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

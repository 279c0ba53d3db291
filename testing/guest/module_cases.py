"""Guest cases for pmem's own kernel module (module/pmem_phys.c, issue 7).

The module is built on the host against each kernel's Debian headers (env.py
downloads and unpacks them) by the very pmem binary that runs in the guest
(`pmem module build --headers DIR`), put on the data disk, and loaded in the
guest with `pmem module load`. Then, with /proc/kcore masked the way
container runtimes mask it (a bind mount of /dev/null over it):

- `pmem acquire --source module` in every format the case lists, and `auto`
  (the streamed acquisition) must fall through kcore (unusable), crash
  (absent) and mem (STRICT_DEVMEM) to the module; guest.py's usual checks
  apply to every image (markers byte-exact, kernel = QEMU dump, coverage =
  System RAM, Volatility 3), and the manifests must name the module and its
  version;
- a node that is not the module's (`--source module:/dev/null`) is refused;
- `pmem module unload` leaves nothing behind (node, /sys/module, misc class,
  /proc/modules), after which `--source module` says the module is not loaded;
- lockdown raised to "confidentiality" at run time: the module refuses to
  open and pmem says why.

With write=True (6.1-module), write support (issue 19) between the unload
and the lockdown checks; see write_lines().

A separate boot with module.sig_enforce=1 proves the unsigned module is
refused with a clear message.
"""

import json
import subprocess

import env

# The two pages written through `pmem mount --write` (the second only
# while lockdown forbids it): distinct, and unlike anything the agent holds.
WRITE_PATTERNS = [
    (f"pmem mount --write: pattern {n}\n".encode() + bytes((i * 13 + n * 101) % 251 + 1 for i in range(4096)))[:4096]
    for n in (1, 2)
]
# A page outside System RAM on x86 PCs: the legacy video area at 0xA0000.
NOT_RAM_PAGE = 0xA0
TAINT_USER = 1 << 6

VERSION_FILE = "/sys/module/pmem_phys/version"


class NoHook:
    """What guest.py does for cases without extra steps."""

    append = ""

    def setup_lines(self):
        return []

    def acquire_args(self, kind):
        return ""

    def finish_lines(self):
        return []


def expect_fail(name, command):
    """Runs a command that must fail; its exit code and stderr go to $OUT."""
    return f"{command} 2> $OUT/{name}.log; echo $? > $OUT/{name}.rc"


def build_module(pmem, kernel, out, write=False):
    """`pmem module build [--write]` against the kernel's headers, on the host."""
    headers = env.ensure_headers(kernel)
    proc = subprocess.run([str(pmem), "module", "build", "--headers", str(headers), "--out", str(out)]
                          + (["--write"] if write else []), capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"pmem module build for {kernel.release()} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


class ModuleHook(NoHook):
    """Builds and stages the module, loads it in the guest, masks kcore;
    file and compressed acquisitions use `--source module`, streamed ones
    `auto`; after the dump: unload, not-loaded, lockdown checks (and with
    `write`, the write build's checks)."""

    def __init__(self, write=False):
        self.write = write

    def stage(self, case, staging):
        self.build_log = build_module(staging / "bin" / "pmem", env.KERNELS[case.kernel],
                                      staging / "pmem_phys.ko")
        if self.write:
            build_module(staging / "bin" / "pmem", env.KERNELS[case.kernel],
                         staging / "pmem_phys-write.ko", write=True)
            for n, pattern in enumerate(WRITE_PATTERNS, 1):
                (staging / f"write-pattern{n}.bin").write_bytes(pattern)

    def setup_lines(self):
        return [
            "step module-load sh -c '/data/bin/pmem module load /data/pmem_phys.ko 2> $OUT/module-load.log'",
            f"cat {VERSION_FILE} > $OUT/module-version.txt",
            "{ cat /sys/class/misc/pmem-phys/dev; ls -l /dev/pmem-phys; } > $OUT/module-node.txt 2>&1",
            # Read speed, no hashing: kcore's System RAM segments in 16 MiB
            # requests, then 256 MiB of the module from 16 MiB up, as dd does.
            "/data/bin/pmem-guest-agent read-kcore > $OUT/speed-kcore.txt",
            "/data/bin/pmem-guest-agent measure $OUT/speed-module.txt -- "
            "dd if=/dev/pmem-phys of=/dev/null bs=16M skip=1 count=16 2> /dev/null",
            # What container runtimes do: kcore becomes an empty file, so
            # `auto` has to skip it (and crash: absent; mem: STRICT_DEVMEM).
            "step mask-kcore mount --bind /dev/null /proc/kcore",
            expect_fail("module-wrong-node", "/data/bin/pmem acquire --source module:/dev/null /tmp/x.lime"),
        ]

    def acquire_args(self, kind):
        return "" if kind == "stream" else "--source module "

    def finish_lines(self):
        lines = [
            "step module-unload sh -c '/data/bin/pmem module unload 2> $OUT/module-unload.log'",
            "{ ls -d /dev/pmem-phys /sys/module/pmem_phys /sys/class/misc/pmem-phys; "
            "grep pmem_phys /proc/modules; } > $OUT/module-after-unload.txt 2>&1",
            expect_fail("module-not-loaded", "/data/bin/pmem acquire --source module /tmp/x.lime"),
        ]
        lockdown = [
            "echo confidentiality > /sys/kernel/security/lockdown",
            "cat /sys/kernel/security/lockdown > $OUT/module-lockdown-state.txt",
            expect_fail("module-lockdown", "/data/bin/pmem acquire --source module /tmp/x.lime"),
        ]
        if self.write:
            # write_lines leaves the write build loaded (the module the
            # confidentiality check opens) and lockdown at "integrity".
            return lines + write_lines() + lockdown + write_locked_lines()
        # Lockdown can only be raised at run time: load first, then lock.
        return lines + [
            "step module-reload sh -c '/data/bin/pmem module load /data/pmem_phys.ko 2>> $OUT/module-load.log'",
            "mount -t securityfs securityfs /sys/kernel/security",
        ] + lockdown

    def check(self, results, case, out):
        name = case.name
        read = lambda f: (out / f).read_text(errors="replace").strip() if (out / f).exists() else ""  # noqa: E731
        version = read("module-version.txt")
        results.add(name, "module", "loaded by pmem module load", version == "1.1.0",
                    f"/sys/module/pmem_phys/version {version!r}; {read('module-node.txt')}")
        try:
            kcore_bytes, kcore_s = map(float, read("speed-kcore.txt").split())
            module_s, _, rc = read("speed-module.txt").split()
            kcore_rate, module_rate = kcore_bytes / kcore_s / 2**20, 256 / float(module_s)
            results.add(name, "module", "read speed (no hashing)", rc == "0" and kcore_rate > 0,
                        f"module {module_rate:.0f} MiB/s (dd 256 MiB), /proc/kcore {kcore_rate:.0f} MiB/s "
                        f"({kcore_bytes / 2**20:.0f} MiB)")
        except (ValueError, ZeroDivisionError) as e:
            results.add(name, "module", "read speed (no hashing)", False,
                        f"{e}: {read('speed-kcore.txt')!r} {read('speed-module.txt')!r}")
        for manifest_path in sorted(out.glob("*.json")):
            if not manifest_path.name.startswith(("image.", "stream.")):
                continue
            manifest = json.loads(manifest_path.read_text())
            source = manifest.get("source", {})
            skipped = {s["kind"]: s["reason"] for s in source.get("skipped", [])}
            problems = []
            if source.get("kind") != "module" or source.get("path") != "/dev/pmem-phys":
                problems.append(f"source {source.get('kind')} {source.get('path')}")
            if source.get("module_version") != version:
                problems.append(f"module_version {source.get('module_version')!r}")
            auto = manifest_path.name.startswith("stream.")
            if auto and not ("kcore" in skipped and "not a usable kcore" in skipped["kcore"]
                             and "mem" in skipped and "crash" in skipped):
                problems.append(f"auto skipped {skipped}")
            results.add(name, "module", f"{manifest_path.name}: source = module"
                        + (" (auto, kcore masked)" if auto else ""), not problems,
                        "; ".join(problems) or ("; ".join(f"{k}: {v[:60]}" for k, v in skipped.items())
                                                if auto else f"module {version}"))
        wrong = read("module-wrong-node.log")
        results.add(name, "module", "a node that is not the module's is refused",
                    read("module-wrong-node.rc") not in ("", "0")
                    and "/dev/null is not the pmem_phys module's device" in wrong, wrong[-200:])
        after = read("module-after-unload.txt")
        gone = all(f"{p}: No such file or directory" in after
                   for p in ("/dev/pmem-phys", "/sys/module/pmem_phys", "/sys/class/misc/pmem-phys"))
        results.add(name, "module", "unload leaves nothing behind (node, /sys/module, misc class, /proc/modules)",
                    gone and "pmem_phys " not in after, after.replace("\n", " | ")[-300:])
        missing = read("module-not-loaded.log")
        results.add(name, "module", "unloaded: --source module says it is not loaded",
                    read("module-not-loaded.rc") not in ("", "0") and "module is not loaded" in missing,
                    missing[-200:])
        locked = read("module-lockdown.log")
        results.add(name, "module", "lockdown confidentiality: the module refuses, pmem says why",
                    "[confidentiality]" in read("module-lockdown-state.txt")
                    and read("module-lockdown.rc") not in ("", "0")
                    and "lockdown is \"confidentiality\"" in locked, locked[-240:])
        if self.write:
            check_write(results, name, out)


WMNT = "/tmp/wmem"


def write_lines():
    """Write support (issue 19), after the read-only module's unload:

    1. the read-only build: `pmem mount --write` refused, its device refuses
       to open for writing; `module load --write` of it refused;
    2. the write build loaded without --write (writable=N): pmem mount
       --write refused, and its device refuses to open for writing;
    3. loaded with --write: writable=Y, the kernel tainted (TAINT_USER);
       the agent's live page (its frame from /proc/self/pagemap);
    4. a read-only mount over it: writing memory.raw refused (EROFS);
    5. `pmem mount --write`: memory.raw 0600, the rest 0400; pattern 1
       written at the agent's frame; the agent sees it in its own memory,
       and it reads back through the mount; refused: half a page (EINVAL),
       a page outside System RAM (EPERM, by pmem), memory.lime (EACCES),
       truncation, and the module's own refusal of that page (its device
       written directly); info.json counts one write and two refusals;
    6. lockdown raised to "integrity" with the mount up: writing pattern 2
       is refused by the module and the agent's page keeps pattern 1; a
       new `pmem mount --write` is refused, naming lockdown.
    """
    dd = "dd if=/data/write-pattern{n}.bin of={to} bs={bs} seek={seek} count=1 conv=notrunc"
    return [
        f"mkdir -p {WMNT} /tmp/wlive",
        f"wmount_up() {{ i=0; while [ ! -e {WMNT}/info.json ] && kill -0 $1 2>/dev/null && [ $i -lt 600 ]; "
        f"do sleep 0.1; i=$((i+1)); done; [ -e {WMNT}/info.json ]; }}",
        "wmount_end() { kill -TERM $1; wait $1; }",
        # The agent shows its page on request (live-page's check file).
        "wseen() { rm -f /tmp/wlive/checked; touch /tmp/wlive/check; "
        "while [ ! -e /tmp/wlive/checked ] && kill -0 $wlive 2>/dev/null; do sleep 0.1; done; "
        "cp /tmp/wlive/seen $1; }",
        "/data/bin/pmem module load /data/pmem_phys.ko 2>> $OUT/module-load.log",
        expect_fail("write-ro-build", f"/data/bin/pmem mount --write --no-symbols {WMNT}"),
        expect_fail("write-ro-device", dd.format(n=1, to="/dev/pmem-phys", bs=4096, seek=256)),
        "/data/bin/pmem module unload 2>> $OUT/module-load.log",
        expect_fail("write-load-ro", "/data/bin/pmem module load --write /data/pmem_phys.ko"),
        "/data/bin/pmem module load /data/pmem_phys-write.ko 2>> $OUT/module-load.log",
        "cat /sys/module/pmem_phys/parameters/writable > $OUT/write-param-off.txt",
        expect_fail("write-off", f"/data/bin/pmem mount --write --no-symbols {WMNT}"),
        expect_fail("write-off-device", dd.format(n=1, to="/dev/pmem-phys", bs=4096, seek=256)),
        "/data/bin/pmem module unload 2>> $OUT/module-load.log",
        "cat /proc/sys/kernel/tainted > $OUT/write-tainted-before.txt",
        "step write-module-load sh -c '/data/bin/pmem module load --write /data/pmem_phys-write.ko "
        "2> $OUT/write-load.log'",
        "cat /sys/module/pmem_phys/parameters/writable > $OUT/write-param.txt",
        "cat /proc/sys/kernel/tainted > $OUT/write-tainted.txt",
        "/data/bin/pmem-guest-agent live-page --dir /tmp/wlive --timeout-secs 600 2> $OUT/write-live.log &",
        "wlive=$!",
        "while [ ! -e /tmp/wlive/ready ] && kill -0 $wlive 2>/dev/null; do sleep 0.1; done",
        "wframe=$(cat /tmp/wlive/frame); echo $wframe > $OUT/write-frame.txt",
        f"/data/bin/pmem mount --no-symbols {WMNT} 2> $OUT/write-romount-server.log &",
        "m=$!",
        "wmount_up $m",
        expect_fail("write-romount", dd.format(n=1, to=f"{WMNT}/memory.raw", bs=4096, seek="$wframe")),
        "wmount_end $m",
        f"/data/bin/pmem mount --write --no-symbols {WMNT} 2> $OUT/write-mount.log &",
        "m=$!",
        "step write-mount-up wmount_up $m",
        f"stat -c '%a %n' {WMNT}/* > $OUT/write-modes.txt",
        "step write-page " + dd.format(n=1, to=f"{WMNT}/memory.raw", bs=4096, seek="$wframe"),
        "wseen $OUT/write-seen.bin",
        f"dd if={WMNT}/memory.raw bs=4096 skip=$wframe count=1 of=$OUT/write-readback.bin 2>/dev/null",
        expect_fail("write-partial", dd.format(n=1, to=f"{WMNT}/memory.raw", bs=2048, seek="$((wframe*2))")),
        expect_fail("write-not-ram", dd.format(n=1, to=f"{WMNT}/memory.raw", bs=4096, seek=NOT_RAM_PAGE)),
        expect_fail("write-lime", dd.format(n=1, to=f"{WMNT}/memory.lime", bs=4096, seek=0)),
        expect_fail("write-truncate", f"sh -c ': > {WMNT}/memory.raw'"),
        expect_fail("write-device-not-ram", dd.format(n=1, to="/dev/pmem-phys", bs=4096, seek=NOT_RAM_PAGE)),
        f"cat {WMNT}/info.json > $OUT/write-info.json",
        "mount -t securityfs securityfs /sys/kernel/security",
        "echo integrity > /sys/kernel/security/lockdown",
        expect_fail("write-locked", dd.format(n=2, to=f"{WMNT}/memory.raw", bs=4096, seek="$wframe")),
        "wseen $OUT/write-seen-locked.bin",
        "wmount_end $m",
        expect_fail("write-mount-locked", f"/data/bin/pmem mount --write --no-symbols {WMNT}"),
        "touch /tmp/wlive/stop",
        "wait $wlive",
        'echo "@@pmem-guest step write-live-agent 0 0 $?"',
    ]


def write_locked_lines():
    """Under lockdown "confidentiality": the write build unloads, and can't
    be loaded again (pmem refuses it; busybox insmod is refused by the
    kernel, which takes no unsigned module under lockdown)."""
    return [
        "/data/bin/pmem module unload 2> $OUT/write-unload-locked.log",
        expect_fail("write-load-locked", "/data/bin/pmem module load --write /data/pmem_phys-write.ko"),
        expect_fail("write-insmod-locked", "busybox insmod /data/pmem_phys-write.ko writable=1"),
        "ls -d /sys/module/pmem_phys > $OUT/write-after-locked.txt 2>&1",
        "dmesg | grep -e pmem -e Lockdown > $OUT/write-dmesg.txt",
    ]


def check_write(results, name, out):
    read = lambda f: (out / f).read_text(errors="replace").strip() if (out / f).exists() else ""  # noqa: E731
    data = lambda f: (out / f).read_bytes() if (out / f).exists() else b""  # noqa: E731

    def refused(subject, what, log, *needles):
        text = read(f"{log}.log")
        ok = read(f"{log}.rc") not in ("", "0") and all(n in text for n in needles)
        results.add(name, "module write", f"{subject}: {what}", ok, text.replace("\n", " | ")[-260:])

    refused("read-only build", "pmem mount --write refused", "write-ro-build", "it is the read-only build")
    refused("read-only build", "its device can't be opened for writing", "write-ro-device",
            "Operation not permitted")
    refused("read-only build", "pmem module load --write refused", "write-load-ro", "is the read-only build")
    refused("write build, writes off", f"writable={read('write-param-off.txt')}, pmem mount --write refused",
            "write-off", "loaded with writes off")
    refused("write build, writes off", "its device can't be opened for writing", "write-off-device",
            "Operation not permitted")
    before, after = read("write-tainted-before.txt"), read("write-tainted.txt")
    tainted = before.isdigit() and after.isdigit() and not int(before) & TAINT_USER and int(after) & TAINT_USER
    results.add(name, "module write", "load --write: writable=Y, kernel tainted (TAINT_USER)",
                read("write-param.txt") == "Y" and bool(tainted),
                f"writable={read('write-param.txt')}, tainted {before} -> {after}; {read('write-load.log')[-160:]}")
    refused("read-only mount", "writing memory.raw refused", "write-romount", "Read-only file system")
    modes = dict(reversed(line.split(" ", 1)) for line in read("write-modes.txt").splitlines() if " " in line)
    results.add(name, "module write", "pmem mount --write: memory.raw 0600, the rest 0400",
                modes.get(f"{WMNT}/memory.raw") == "600"
                and all(m == "400" for p, m in modes.items() if not p.endswith("/memory.raw")),
                read("write-modes.txt").replace("\n", " | "))
    frame = read("write-frame.txt")
    seen, back = data("write-seen.bin"), data("write-readback.bin")
    results.add(name, "module write", "a page written through memory.raw: the agent sees it in its own memory",
                seen == WRITE_PATTERNS[0] and back == WRITE_PATTERNS[0],
                f"frame {frame}; agent sees {'the pattern' if seen == WRITE_PATTERNS[0] else seen[:40]!r}; "
                f"read back {'the pattern' if back == WRITE_PATTERNS[0] else back[:40]!r}")
    refused("write mount", "half a page refused (EINVAL)", "write-partial", "Invalid argument")
    refused("write mount", "a page outside System RAM refused (EPERM)", "write-not-ram", "Operation not permitted")
    refused("write mount", "memory.lime is not writable (EACCES)", "write-lime", "Permission denied")
    refused("write mount", "truncating memory.raw refused", "write-truncate")
    refused("module", "its device refuses a page outside System RAM (EPERM)", "write-device-not-ram",
            "Operation not permitted")
    try:
        writes = json.loads(read("write-info.json"))["served"]["writes"]
    except (ValueError, KeyError, TypeError):
        writes = None
    results.add(name, "module write", "info.json: 1 write of 4096 bytes, 2 refused",
                writes == {"write_requests": 1, "bytes_written": 4096, "refused_writes": 2}, str(writes))
    refused("lockdown integrity (raised while mounted)", "the module refuses the next write", "write-locked",
            "Operation not permitted")
    results.add(name, "module write", "lockdown integrity: the agent's page keeps the first pattern",
                data("write-seen-locked.bin") == WRITE_PATTERNS[0], f"{data('write-seen-locked.bin')[:40]!r}")
    refused("lockdown integrity", "a new pmem mount --write is refused, naming lockdown", "write-mount-locked",
            'lockdown is "integrity"')
    refused("lockdown confidentiality", "pmem module load --write refused, naming lockdown", "write-load-locked",
            'lockdown is "confidentiality"', "refuses to load under any lockdown mode")
    refused("lockdown confidentiality", "busybox insmod writable=1 refused by the kernel", "write-insmod-locked")
    results.add(name, "module write", "under lockdown the write build is not loaded",
                "No such file or directory" in read("write-after-locked.txt"), read("write-after-locked.txt"))
    dmesg = read("write-dmesg.txt")
    try:
        start = int(frame) * 4096
        logged = [line for line in dmesg.splitlines() if " writes 0x" in line]
        want = f"writes {start:#x}-{start + 4095:#x} (4096 bytes)"
        ok = "WRITABLE" in dmesg and len(logged) == 1 and want in logged[0]
        detail = f"{len(logged)} write(s) logged: {' | '.join(logged)[-200:]}"
    except ValueError:
        ok, detail = False, f"frame {frame!r}"
    results.add(name, "module write", "the kernel log names the one write (address, length)", ok, detail)


class SigEnforceHook(NoHook):
    """A boot with module.sig_enforce=1: the unsigned module must be refused
    with a clear message, and nothing of it may appear."""

    append = "module.sig_enforce=1"

    def stage(self, case, staging):
        build_module(staging / "bin" / "pmem", env.KERNELS[case.kernel], staging / "pmem_phys.ko")

    def setup_lines(self):
        return [
            expect_fail("module-sig-load", "/data/bin/pmem module load /data/pmem_phys.ko"),
            "busybox insmod /data/pmem_phys.ko 2> $OUT/module-sig-insmod.log; echo $? > $OUT/module-sig-insmod.rc",
            "ls -d /sys/module/pmem_phys /dev/pmem-phys > $OUT/module-sig-after.txt 2>&1",
            expect_fail("module-sig-acquire", "/data/bin/pmem acquire --source module /tmp/x.lime"),
        ]

    def check(self, results, case, out):
        name = case.name
        read = lambda f: (out / f).read_text(errors="replace").strip() if (out / f).exists() else ""  # noqa: E731
        load = read("module-sig-load.log")
        results.add(name, "module", "sig_enforce: pmem module load refused, with advice",
                    read("module-sig-load.rc") not in ("", "0") and "Key was rejected" in load
                    and "Machine Owner Key" in load, load[-260:])
        results.add(name, "module", "sig_enforce: busybox insmod refused too",
                    read("module-sig-insmod.rc") not in ("", "0"), read("module-sig-insmod.log")[-200:])
        after = read("module-sig-after.txt")
        results.add(name, "module", "sig_enforce: nothing of the module appears",
                    after.count("No such file or directory") == 2, after.replace("\n", " | "))
        acquire = read("module-sig-acquire.log")
        results.add(name, "module", "sig_enforce: --source module says it is not loaded",
                    read("module-sig-acquire.rc") not in ("", "0") and "module is not loaded" in acquire,
                    acquire[-200:])


def cases(Case):
    """The module cases, built with guest.py's Case (512 MiB keeps CI time low)."""
    return [
        Case("6.1-module", "6.1", 512, ["lime", "raw", "elf"], ["lime"], ["avml"], hook=ModuleHook(write=True),
             note="pmem's kernel module: --source module (lime raw elf avml), auto with kcore masked (stream); "
                  "the write build through pmem mount --write"),
        Case("6.12-module", "6.12", 512, ["lime", "elf"], ["raw"], hook=ModuleHook(),
             note="pmem's kernel module on 6.12: --source module (lime elf), auto with kcore masked (stream raw)"),
        Case("6.12-sigenforce", "6.12", 256, [], hook=SigEnforceHook(), timeout=300,
             note="module.sig_enforce=1: the unsigned module is refused with a clear message"),
    ]

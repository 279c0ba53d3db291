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

A separate boot with module.sig_enforce=1 proves the unsigned module is
refused with a clear message.
"""

import json
import subprocess

import env

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


def build_module(pmem, kernel, out):
    """`pmem module build` against the kernel's headers, on the host."""
    headers = env.ensure_headers(kernel)
    proc = subprocess.run([str(pmem), "module", "build", "--headers", str(headers), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"pmem module build for {kernel.release()} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


class ModuleHook(NoHook):
    """Builds and stages the module, loads it in the guest, masks kcore;
    file and compressed acquisitions use `--source module`, streamed ones
    `auto`; after the dump: unload, not-loaded, lockdown checks."""

    def stage(self, case, staging):
        self.build_log = build_module(staging / "bin" / "pmem", env.KERNELS[case.kernel],
                                      staging / "pmem_phys.ko")

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
        return [
            "step module-unload sh -c '/data/bin/pmem module unload 2> $OUT/module-unload.log'",
            "{ ls -d /dev/pmem-phys /sys/module/pmem_phys /sys/class/misc/pmem-phys; "
            "grep pmem_phys /proc/modules; } > $OUT/module-after-unload.txt 2>&1",
            expect_fail("module-not-loaded", "/data/bin/pmem acquire --source module /tmp/x.lime"),
            # Lockdown can only be raised at run time: load first, then lock.
            "step module-reload sh -c '/data/bin/pmem module load /data/pmem_phys.ko 2>> $OUT/module-load.log'",
            "mount -t securityfs securityfs /sys/kernel/security",
            "echo confidentiality > /sys/kernel/security/lockdown",
            "cat /sys/kernel/security/lockdown > $OUT/module-lockdown-state.txt",
            expect_fail("module-lockdown", "/data/bin/pmem acquire --source module /tmp/x.lime"),
        ]

    def check(self, results, case, out):
        name = case.name
        read = lambda f: (out / f).read_text(errors="replace").strip() if (out / f).exists() else ""  # noqa: E731
        version = read("module-version.txt")
        results.add(name, "module", "loaded by pmem module load", version == "1.0.0",
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
        Case("6.1-module", "6.1", 512, ["lime", "raw", "elf"], ["lime"], ["avml"], hook=ModuleHook(),
             note="pmem's kernel module: --source module (lime raw elf avml), auto with kcore masked (stream)"),
        Case("6.12-module", "6.12", 512, ["lime", "elf"], ["raw"], hook=ModuleHook(),
             note="pmem's kernel module on 6.12: --source module (lime elf), auto with kcore masked (stream raw)"),
        Case("6.12-sigenforce", "6.12", 256, [], hook=SigEnforceHook(), timeout=300,
             note="module.sig_enforce=1: the unsigned module is refused with a clear message"),
    ]

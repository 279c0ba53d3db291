"""pmem's ELF image read by the kernel debuggers, with the guest's own debug
vmlinux (Debian's linux-image-<release>-dbg, env.ensure_debug_vmlinux):

- crash opens it with no extra option (no --kaslr, no --machdep), and its
  `sys` and `ps` say what they say on QEMU's dump-guest-memory of the same
  guest: the same kernel facts, the same long-lived tasks (init, kthreadd,
  the marker agent) under the same PIDs; and `ps` lists the marker agent and
  pmem itself, which was running when the image was taken;
- drgn walks init_task's task list (the `tasks` list_head of every
  task_struct, read through the image) and finds the agent and pmem;
- gdb opens it as a core file and reads memory by the direct-map virtual
  addresses of its PT_LOADs: linux_banner there (the address from drgn)
  is the guest's /proc/version. That is all gdb does with it: the image
  does not map the kernel text range (0xffffffff8...), so gdb cannot
  resolve the vmlinux's symbols (KASLR moves them anyway).

Both tools get the file as a user would pass it; nothing here reads the
image for them.
"""

import json
import re
import subprocess
import time

import env

# crash reads the 590 MB vmlinux's debug info first: ~40 s on an idle
# machine, several minutes when the cores are busy.
TIMEOUT = 900
AGENT_COMM = "pmem-guest-agen"  # TASK_COMM_LEN: 15 characters of pmem-guest-agent
SYS_FIELDS = ("CPUS", "NODENAME", "RELEASE", "VERSION", "MACHINE", "MEMORY")
# PID PPID CPU TASK ST %MEM VSZ RSS COMM; ">" marks a CPU's active task,
# PPID is -1 for a task crash found on a runqueue but not in its table.
PS_LINE = re.compile(r"^\s*(>?)\s*(\d+)\s+(-?\d+)\s+(\d+)\s+([0-9a-f]+)\s+([A-Z]{2})\s+\S+\s+\d+\s+\d+\s+(.+?)\s*$")


def run(argv, stdin=None):
    """A tool's run; a timeout is a failed run (exit None), not an exception."""
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return subprocess.CompletedProcess(argv, None, out, f"timed out after {TIMEOUT}s")


def run_crash(vmlinux, dumpfile):
    """`crash -s VMLINUX DUMPFILE` with `sys`, `ps` and a walk of init_task's
    task list (`list task_struct.tasks -h init_task`) on its stdin. Returns
    the process, sys's fields, ps's {pid: comm} and the walk's {pid: comm}."""
    commands = "sys\nps\nlist task_struct.tasks -s task_struct.pid,comm -h init_task\nquit\n"
    proc = run(["crash", "-s", "--no_scroll", str(vmlinux), str(dumpfile)], commands)
    lines = proc.stdout.splitlines()
    facts = {}
    for line in lines:
        m = re.match(r"^\s*([A-Z ]+):\s(.*)$", line)
        if m and m.group(1).strip() in SYS_FIELDS:
            facts[m.group(1).strip()] = m.group(2).strip()
    ps, active = {}, set()
    for line in lines:
        m = PS_LINE.match(line)
        if m:
            ps.setdefault(int(m.group(2)), m.group(7))
            if m.group(1):
                active.add(int(m.group(2)))
    walk, pid = {}, None
    for line in lines:
        m = re.match(r"^\s*pid = (\d+),$", line)
        if m:
            pid = int(m.group(1))
        m = re.match(r'^\s*comm = "(.*?)(\\000.*)?",$', line)
        if m and pid is not None:
            walk[pid], pid = m.group(1), None
    return proc, facts, (ps, active), walk


# Runs in drgn's venv: argv = image, vmlinux. Prints one JSON line.
DRGN_WALK = r'''
import json, sys
import drgn
from drgn.helpers.linux.list import list_for_each_entry
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
init = prog["init_task"]
tasks = [(int(t.pid), t.comm.string_().decode(errors="replace"))
         for t in list_for_each_entry("struct task_struct", init.tasks.address_of_(), "tasks")]
# Where linux_banner is in the direct map (for the gdb check): its physical
# address is its offset in the kernel mapping plus phys_base (an assembler
# symbol: no type to read it by; below zero, modulo 2^64, when KASLR moved
# the kernel further in virtual than in physical memory).
banner = prog["linux_banner"].address_of_().value_()
phys_base = prog.read_u64(prog.symbol("phys_base").address)
direct = (prog["page_offset_base"].value_() + banner - 0xffffffff80000000 + phys_base) & 0xffffffffffffffff
print(json.dumps({"release": prog["init_uts_ns"].name.release.string_().decode(),
                  "init": init.comm.string_().decode(), "tasks": tasks, "banner_direct": direct}))
'''


def run_drgn(vmlinux, image):
    python = env.ensure_drgn()
    proc = run([str(python), "-c", DRGN_WALK, str(image), str(vmlinux)])
    try:
        return proc, json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return proc, None


def tail(proc):
    return (proc.stderr.strip() or proc.stdout.strip())[-300:]


def check_gdb(results, case, subject, image, address, banner, timing):
    t = time.monotonic()
    proc = run(["gdb", "-batch", "-nx", "-c", str(image), "-ex", "set print elements 0", "-ex", f"x/s {address:#x}"])
    timing["gdb"] = time.monotonic() - t
    m = re.search(r':\s+"(.*)"', proc.stdout)
    got = m.group(1).replace("\\n", "\n") if m else None
    results.add(case.name, subject, "gdb reads linux_banner by direct-map address", got == banner,
                f"{address:#x}: {got[:60] if got else tail(proc)!r}")


def check(results, case, subject, image, dump, release, timing, banner):
    """crash and drgn on pmem's ELF image; QEMU's dump is crash's reference."""
    kernel = env.KERNELS[case.kernel]
    t = time.monotonic()
    vmlinux = env.ensure_debug_vmlinux(kernel)
    timing["debug vmlinux"] = time.monotonic() - t

    t = time.monotonic()
    ref, ref_facts, ref_ps, ref_walk = run_crash(vmlinux, dump)
    results.add(case.name, "qemu dump", "crash opens it (reference)",
                ref.returncode == 0 and ref_facts.get("RELEASE") == release and AGENT_COMM in ref_walk.values(),
                f"exit {ref.returncode}, RELEASE {ref_facts.get('RELEASE')}, ps {len(ref_ps[0])} tasks, "
                f"init_task's list {len(ref_walk)} tasks" + ("" if ref.returncode == 0 else f"; {tail(ref)}"))
    proc, facts, ps, walk = run_crash(vmlinux, image)
    timing["crash"] = time.monotonic() - t
    opened = proc.returncode == 0 and facts.get("RELEASE") == release
    results.add(case.name, subject, "crash opens it (no option)", opened,
                f"exit {proc.returncode}, RELEASE {facts.get('RELEASE')}" + ("" if opened else f"; {tail(proc)}"))
    differ = [f"{k}: {facts.get(k)!r} vs {ref_facts.get(k)!r}" for k in SYS_FIELDS if facts.get(k) != ref_facts.get(k)]
    results.add(case.name, subject, "crash sys = on QEMU's dump", opened and not differ,
                "; ".join(differ) or ", ".join(f"{k} {facts[k]}" for k in ("RELEASE", "CPUS", "MEMORY")))
    # ps lists crash's task table. Debian 12's crash 8.0.2 fills it from
    # struct pid, whose numbers[] became a flexible array in Linux 6.5 and
    # in Debian's 6.1.192 (a stable backport); it then reads no upid and
    # lists the idle task and each CPU's active task alone, on QEMU's dump
    # as on pmem's (fixed in crash 8.0.4). So: the same idle task as on
    # QEMU's dump, pmem listed (on CPU 0 it was the running task when the
    # image was taken; QEMU's dump was taken with the guest idle), and the
    # agent too once crash lists the whole table.
    (ps, active), (ref_ps, ref_active) = ps, ref_ps
    idle = {pid: comm for pid, comm in ps.items() if comm.startswith("[swapper")}
    ref_idle = {pid: comm for pid, comm in ref_ps.items() if comm.startswith("[swapper")}
    differ = {pid: (comm, ref_ps[pid]) for pid, comm in ps.items() if pid in ref_ps and ref_ps[pid] != comm}
    whole_table = len(ps) > len(idle) + len(active - set(idle))
    want = [AGENT_COMM, "pmem"] if whole_table else ["pmem"]
    missing = [comm for comm in want if comm not in ps.values()]
    ok = opened and idle and idle == ref_idle and not differ and not missing
    listed = ", ".join(f"{'>' if pid in active else ''}{pid} {comm}" for pid, comm in sorted(ps.items())[:4])
    results.add(case.name, subject, "crash ps = on QEMU's dump", ok,
                f"{len(ps)} tasks ({listed}{', ...' if len(ps) > 4 else ''}); on QEMU's dump {len(ref_ps)} "
                f"(active {sorted(ref_active)})" + (f"; missing {missing}" if missing else "")
                + (f"; differ {differ}" if differ else "")
                + ("; idle and active tasks only (crash 8.0.2 and struct pid's flexible numbers[])"
                   if ok and not whole_table else ""))
    # The task list itself, walked by crash: the agent with its PID on QEMU's
    # dump, pmem running; init and kthreadd the same.
    agents = [pid for pid, comm in walk.items() if comm == AGENT_COMM]
    ref_agents = [pid for pid, comm in ref_walk.items() if comm == AGENT_COMM]
    pmems = [pid for pid, comm in walk.items() if comm == "pmem"]
    stable = {pid: ref_walk.get(pid) for pid in [1, 2, *ref_agents]}
    moved = [f"{pid} {walk.get(pid)!r} vs {comm!r}" for pid, comm in stable.items() if walk.get(pid) != comm]
    ok = opened and bool(agents) and agents == ref_agents and bool(pmems) and not moved
    results.add(case.name, subject, "crash: init_task's task list has the agent and pmem", ok,
                f"{len(walk)} tasks ({len(ref_walk)} on QEMU's dump); agent pid {agents} ({ref_agents} on QEMU's dump), "
                f"pmem pid {pmems}" + (f"; differ: {'; '.join(moved)}" if moved else ""))

    t = time.monotonic()
    proc, walk = run_drgn(vmlinux, image)
    timing["drgn"] = time.monotonic() - t
    if walk is None:
        results.add(case.name, subject, "drgn walks init_task's task list", False, f"exit {proc.returncode}: {tail(proc)}")
        return
    comms = {comm for _, comm in walk["tasks"]}
    check_gdb(results, case, subject, image, walk["banner_direct"], banner, timing)
    ok = walk["release"] == release and AGENT_COMM in comms and "pmem" in comms
    results.add(case.name, subject, "drgn walks init_task's task list", ok,
                f"release {walk['release']}, {len(walk['tasks'])} tasks after {walk['init']}, "
                f"agent {'found' if AGENT_COMM in comms else 'MISSING'}, pmem {'found' if 'pmem' in comms else 'MISSING'}")


if __name__ == "__main__":
    # By hand, on a case kept with --keep:
    #   python3 testing/guest/crashcheck.py testing/guest/work/6.1-1g [6.1]
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    class Printed:
        failed = 0

        def add(self, case, subject, check_name, ok, detail=""):
            self.failed += not ok
            print(f"[{'ok  ' if ok else 'FAIL'}] {case} {subject}: {check_name} - {detail}", flush=True)

    work = Path(sys.argv[1])
    case = SimpleNamespace(name=work.name, kernel=sys.argv[2] if len(sys.argv) > 2 else "6.1")
    release = (work / "out" / "version.txt").read_text().split()[2]
    timing, printed = {}, Printed()
    check(printed, case, "elf", work / "out" / "image.elf", work / "dump.elf", release, timing,
          (work / "out" / "version.txt").read_text())
    print(", ".join(f"{k} {v:.1f}s" for k, v in timing.items()))
    sys.exit(1 if printed.failed else 0)

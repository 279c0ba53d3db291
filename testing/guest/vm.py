"""One QEMU guest run: data disk in, serial protocol, QMP ground truth, files out.

The guest talks to the host over its serial console (QEMU's stdio), with
lines starting "@@pmem-guest ":

    step NAME T0 T1 RC   a timed step of the case script (guest uptime seconds)
    dump                 "take the ground-truth dump now": the host runs QMP
                         dump-guest-memory (synchronous, guest paused), then
                         answers "dumped" on the serial input
    done                 the case script finished; /init powers off next
    error TEXT           something the host should report

A hard timeout kills QEMU and fails the run with the serial log's tail.
"""

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

PREFIX = "@@pmem-guest "
CPU = os.environ.get("PMEM_GUEST_CPU", "qemu64")


class GuestError(Exception):
    """The guest run failed; str() includes the reason and the serial log's tail."""


def make_data_disk(staging, disk, size_gib):
    """An ext4 image built from `staging` without mounting anything.

    No journal and few inodes: the guest's disk writes are the slow part under
    TCG, so the guest should spend its time writing images only. The itable is
    initialised here so the guest's ext4lazyinit thread has nothing to do.
    """
    if disk.exists():
        disk.unlink()
    with open(disk, "wb") as f:
        f.truncate(size_gib << 30)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", "1024", "-L", "pmemdata",
         "-E", "lazy_itable_init=0,nodiscard", "-d", str(staging), str(disk)],
        check=True, capture_output=True,
    )


def extract(disk, guest_dir, dest):
    """Copies guest_dir out of the ext4 image (debugfs: no loop mount, no root)."""
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["debugfs", "-R", f"rdump {guest_dir} {dest}", str(disk)],
        capture_output=True, text=True,
    )
    out = dest / Path(guest_dir).name
    if result.returncode != 0 or not out.is_dir():
        raise GuestError(f"debugfs rdump {guest_dir} failed: {result.stderr.strip()}")
    return out


class Qmp:
    """Just enough QMP for dump-guest-memory."""

    def __init__(self, path, deadline):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"cannot connect to QMP socket {path}")
                time.sleep(0.1)
        self.reader = self.sock.makefile("r")
        self.reader.readline()  # greeting
        self.command("qmp_capabilities")

    def command(self, name, **arguments):
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            line = self.reader.readline()
            if not line:
                raise GuestError(f"QMP closed during {name}")
            reply = json.loads(line)
            if "error" in reply:
                raise GuestError(f"QMP {name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]
            # anything else is an asynchronous event (STOP, RESUME, DUMP_COMPLETED)

    def close(self):
        self.sock.close()


class Guest:
    """Runs one guest to completion; see the module docstring."""

    def __init__(self, kernel, initrd, disk, memory_mib, workdir, timeout, dump_path=None, log=print,
                 machine="pc", smp=1, append="", qemu=None):
        self.machine = machine
        self.qemu = qemu  # another architecture's command line (env.Kernel.qemu), or None
        self.append = append  # extra kernel command line (module.sig_enforce=1, ...)
        self.smp = smp  # vCPUs (the benchmark compares 1 and 2)
        self.kernel = kernel
        self.initrd = initrd
        self.disk = disk
        self.memory_mib = memory_mib
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.dump_path = dump_path
        self.log = log
        self.serial_log = self.workdir / "serial.log"
        self.steps = []  # (name, seconds, rc) reported by the guest
        self.errors = []
        self.dump_seconds = None
        self.boot_seconds = None
        self.agent_rc = None
        self.agent_report = ""  # the agent's report as the guest printed it

    def command(self, qmp_socket):
        if self.qemu:
            return self.qemu(self, qmp_socket)
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", self.machine, "-cpu", CPU,
            "-m", str(self.memory_mib), "-smp", str(self.smp),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd),
            # panic=-1 + -no-reboot: a kernel panic ends QEMU instead of hanging
            "-append", f"console=ttyS0 panic=-1 loglevel=4 transparent_hugepage=never {self.append}".strip(),
            "-drive", f"file={self.disk},if=virtio,format=raw,cache=unsafe",
            "-serial", "stdio", "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        ]

    def tail(self, lines=60):
        try:
            text = self.serial_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no serial log)"
        return "\n".join(text[-lines:])

    def fail(self, reason):
        return GuestError(f"{reason}\n--- serial log tail ({self.serial_log}) ---\n{self.tail()}\n---")

    def run(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        qmp_socket = self.workdir / "qmp.sock"
        if qmp_socket.exists():
            qmp_socket.unlink()
        started = time.monotonic()
        deadline = started + self.timeout
        proc = subprocess.Popen(
            self.command(qmp_socket), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, bufsize=0,
        )
        lines = queue.Queue()

        def pump():
            # Serial output -> log file and the protocol queue.
            with open(self.serial_log, "wb") as log_file:
                for raw in iter(proc.stdout.readline, b""):
                    log_file.write(raw)
                    log_file.flush()
                    lines.put(raw.decode(errors="replace").rstrip("\r\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        done = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.fail(f"guest timed out after {self.timeout}s (QEMU killed)")
                try:
                    line = lines.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    break  # QEMU exited
                if PREFIX not in line:
                    continue
                # The kernel may have printed on the same line first.
                words = line[line.index(PREFIX) + len(PREFIX):].split()
                if not words:
                    continue
                event = words[0]
                if event == "booted":
                    self.boot_seconds = float(words[1])
                elif event == "step":
                    name, t0, t1, rc = words[1], float(words[2]), float(words[3]), int(words[4])
                    self.steps.append((name, t1 - t0, rc))
                    self.log(f"  guest: {name} {'ok' if rc == 0 else f'FAILED rc={rc}'} ({t1 - t0:.1f}s)")
                elif event == "dump":
                    self.take_dump(qmp_socket, deadline)
                    proc.stdin.write(b"dumped\n")
                    proc.stdin.flush()
                elif event == "agent":
                    self.agent_rc = int(words[1])
                elif event == "agent-report":
                    self.agent_report = " ".join(words[1:])
                elif event == "done":
                    done = True
                elif event == "error":
                    self.errors.append(" ".join(words[1:]))
                    self.log(f"  guest error: {' '.join(words[1:])}")
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise self.fail(f"guest timed out after {self.timeout}s (QEMU killed)")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.seconds = time.monotonic() - started
        if not done:
            raise self.fail(f"guest stopped before finishing its case (QEMU exit {proc.returncode})")
        if self.dump_path and self.dump_seconds is None:
            raise self.fail("the guest never asked for the ground-truth dump")

    def take_dump(self, qmp_socket, deadline):
        if not self.dump_path:
            return
        t0 = time.monotonic()
        qmp = Qmp(qmp_socket, deadline)
        try:
            # paging=false: PT_LOAD p_paddr are guest physical addresses.
            qmp.command("dump-guest-memory", paging=False, protocol=f"file:{self.dump_path}")
        finally:
            qmp.close()
        self.dump_seconds = time.monotonic() - t0
        self.log(f"  host: QMP dump-guest-memory ({self.dump_seconds:.1f}s)")


def cleanup(paths):
    for p in paths:
        p = Path(p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            os.unlink(p)

#!/usr/bin/env python3
"""One VM life over QMP with Python's `qemu.qmp`, against QEMU 7.2 (TCG) or accel (KVM),
with the same expectations for both:

  start with -S and a QMP socket, negotiate, query-status is prelaunch, query-cpus-fast
  lists the -smp vCPUs with thread ids that are threads of the process, cont + RESUME, the
  guest reaches init, stop/cont + STOP/RESUME, system_reset + RESET + a second boot, an
  unknown command is CommandNotFound and the session goes on, quit + SHUTDOWN
  (host-qmp-quit) and exit status 0.

Usage: flock /tmp/vm.lock tests/qmp/qmp_lifecycle.py accel|qemu [GUEST_DIR]
(pip install qemu.qmp; accel from target/debug unless $ACCEL is set).
"""

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time

from qemu.qmp import ExecuteError, QMPClient

CMDLINE = ("console=ttyS0 panic=-1 reboot=k quiet noxsave nofsgsbase "
           "clearcpuid=popcnt,cx16,smap,erms,fsrm")
BOOT_DEADLINE = 600  # seconds; TCG and a loaded 2-core host are slow


def vmm_command(which, guest, sock):
    common = ["-S", "-qmp", f"unix:{sock},server=on,wait=off", "-name", "life",
              "-m", "128", "-smp", "2", "-display", "none", "-nodefaults",
              "-serial", "stdio", "-kernel", f"{guest}/vmlinux",
              "-initrd", f"{guest}/lean.cpio",
              "-append", f'{CMDLINE} gcmd="sleep 600"']
    if which == "qemu":
        return ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg"] + common
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    accel = os.environ.get("ACCEL", f"{root}/target/debug/accel")
    return [accel, "-accel", "kvm", "-cpu", "host"] + common


class Serial:
    def __init__(self, stream):
        self.lines = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def count(self, marker):
        return sum(marker in line for line in self.lines)

    async def wait(self, marker, n):
        end = time.monotonic() + BOOT_DEADLINE
        while self.count(marker) < n:
            if time.monotonic() > end:
                raise AssertionError(f"no {n}x {marker!r}: " + "\n".join(self.lines[-20:]))
            await asyncio.sleep(0.2)


async def expect_event(qmp, name, timeout=60):
    async def first():
        async for event in qmp.events:
            if event["event"] == name:
                return event
    return await asyncio.wait_for(first(), timeout)


async def life(which, guest):
    tmp = tempfile.mkdtemp(prefix="qmp-life-")
    sock = f"{tmp}/qmp.sock"
    proc = subprocess.Popen(vmm_command(which, guest, sock), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    serial = Serial(proc.stdout)
    try:
        for _ in range(300):
            if os.path.exists(sock):
                break
            await asyncio.sleep(0.1)
        qmp = QMPClient("life")
        await qmp.connect(sock)  # reads the greeting and runs qmp_capabilities
        assert qmp.greeting.QMP.version["qemu"]["major"] == 7

        status = await qmp.execute("query-status")
        assert status["status"] == "prelaunch", status
        cpus = await qmp.execute("query-cpus-fast")
        assert len(cpus) == 2, cpus
        tasks = os.listdir(f"/proc/{proc.pid}/task")
        for i, cpu in enumerate(cpus):
            assert cpu["cpu-index"] == i
            assert str(cpu["thread-id"]) in tasks, (cpu, tasks)
        assert (await qmp.execute("query-name")) == {"name": "life"}
        assert serial.count("GUEST UP") == 0

        try:
            await qmp.execute("no-such-command")
            raise AssertionError("unknown command accepted")
        except ExecuteError as e:
            assert e.error_class == "CommandNotFound", e

        await qmp.execute("cont")
        await expect_event(qmp, "RESUME")
        assert (await qmp.execute("query-status"))["status"] == "running"
        await serial.wait("GUEST UP", 1)

        await qmp.execute("stop")
        await expect_event(qmp, "STOP")
        assert (await qmp.execute("query-status"))["status"] == "paused"
        await qmp.execute("cont")
        await expect_event(qmp, "RESUME")

        await qmp.execute("system_reset")
        event = await expect_event(qmp, "RESET")
        assert event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}, event
        await serial.wait("GUEST UP", 2)

        await qmp.execute("quit")
        event = await expect_event(qmp, "SHUTDOWN")
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event
        try:
            await qmp.disconnect()
        except EOFError:
            pass  # the VMM closed the socket first, as it exits
        rc = proc.wait(timeout=60)
        assert rc == 0, rc
        print(f"{which}: PASS")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "accel"
    guest = sys.argv[2] if len(sys.argv) > 2 else os.environ.get(
        "ACCEL_GUEST_DIR", "/work/shared/guest")
    asyncio.run(life(which, guest))


if __name__ == "__main__":
    main()

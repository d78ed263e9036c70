#!/usr/bin/env python3
"""VM lives over QMP with Python's `qemu.qmp`, against QEMU 7.2 (TCG) or accel (KVM), with
the same expectations for both. Three VMs, one after the other:

  life: start with -S and a QMP socket, negotiate, query-status is prelaunch,
    query-cpus-fast lists the -smp vCPUs with thread ids that are threads of the process,
    cont + RESUME, the guest reaches init, stop/cont + STOP/RESUME and the guest clock goes
    on after cont, an unknown command is CommandNotFound and the session goes on,
    system_reset + RESET + a second boot, system_powerdown + POWERDOWN, the guest's ACPI
    power button handler powers off: SHUTDOWN (guest-shutdown) and exit status 0.
  poweroff: -no-shutdown; the guest powers itself off: SHUTDOWN (guest-shutdown), STOP,
    status shutdown, the process stays; malformed JSON and a bad argument on a raw socket
    are errors and the session goes on; quit + SHUTDOWN (host-qmp-quit), exit status 0.
  panic: -device pvpanic; the guest panics (out of memory with vm.panic_on_oom):
    GUEST_PANICKED (poweroff), SHUTDOWN (guest-panic), exit status 0.

Usage: tests/qmp/qmp_lifecycle.py accel|qemu GUEST_DIR [life|poweroff|panic ...]
(pip install qemu.qmp; accel from target/debug unless $ACCEL is set; the guest must have
ACPI: scripts/guest.sh prints its directory).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from qemu.qmp import ExecuteError, QMPClient

CMDLINE = ("console=ttyS0 panic=-1 reboot=k quiet noreplace-smp noxsave nofsgsbase "
           "clearcpuid=popcnt,cx16,smap,erms,fsrm")
BOOT_DEADLINE = 600  # seconds; TCG and a loaded 2-core host are slow


def vmm_command(which, guest, sock, gcmd, extra=(), append=""):
    common = ["-S", "-qmp", f"unix:{sock},server=on,wait=off", "-name", "life",
              "-m", "128", "-smp", "2", "-display", "none", "-nodefaults",
              "-serial", "stdio", "-kernel", f"{guest}/vmlinux",
              "-initrd", f"{guest}/lean.cpio",
              "-append", f'{CMDLINE} {append} gcmd="{gcmd}"', *extra]
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


async def run_vm(which, guest, scenario, gcmd, extra=(), append=""):
    """Starts the VMM paused with a QMP socket, connects, runs `scenario(qmp, proc, serial,
    sock)`, and checks the exit status it returns."""
    tmp = tempfile.mkdtemp(prefix="qmp-life-")
    sock = f"{tmp}/qmp.sock"
    proc = subprocess.Popen(vmm_command(which, guest, sock, gcmd, extra, append),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    serial = Serial(proc.stdout)
    try:
        for _ in range(300):
            if os.path.exists(sock):
                break
            await asyncio.sleep(0.1)
        qmp = QMPClient(scenario.__name__)
        await qmp.connect(sock)  # reads the greeting and runs qmp_capabilities
        assert qmp.greeting.QMP.version["qemu"]["major"] == 7
        await scenario(qmp, proc, serial, sock)
        try:
            await qmp.disconnect()
        except EOFError:
            pass  # the VMM closed the socket first, as it exits
        rc = proc.wait(timeout=120)
        assert rc == 0, rc
        print(f"{which}: {scenario.__name__}: PASS", flush=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def uptimes(serial):
    """The guest's uptime lines ("T: <seconds>") seen so far."""
    return [float(line.split()[1]) for line in serial.lines if line.startswith("T: ")]


async def life(qmp, proc, serial, _sock):
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
    await serial.wait("T: ", 2)

    await qmp.execute("stop")
    await expect_event(qmp, "STOP")
    assert (await qmp.execute("query-status"))["status"] == "paused"
    before = max(uptimes(serial))
    await qmp.execute("cont")
    await expect_event(qmp, "RESUME")
    # The guest clock goes on: two more uptime lines, the last one later than before stop.
    await serial.wait("T: ", len(uptimes(serial)) + 2)
    assert max(uptimes(serial)) > before, (before, uptimes(serial)[-3:])

    await qmp.execute("system_reset")
    event = await expect_event(qmp, "RESET")
    assert event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}, event
    await serial.wait("GUEST UP", 2)

    # The power button: the guest's acpid runs its handler, which powers off (ACPI S5).
    await qmp.execute("system_powerdown")
    await expect_event(qmp, "POWERDOWN")
    event = await expect_event(qmp, "SHUTDOWN", BOOT_DEADLINE)
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}, event
    assert serial.count("GUEST POWER BUTTON") == 1, serial.lines[-10:]


def raw_round(sock):
    """A second client on its own connection: malformed JSON, then a bad argument, then a
    good command; every answer arrives and the session goes on."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(sock)
        f = s.makefile("rw")
        greeting = json.loads(f.readline())
        assert "QMP" in greeting, greeting

        def ask(line):
            f.write(line + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "event" not in reply:
                    return reply
        assert ask('{"execute": "qmp_capabilities"}') == {"return": {}}
        for bad in ('{"execute": ]', 'garbage'):
            reply = ask(bad)
            assert reply["error"]["class"] == "GenericError", (bad, reply)
        reply = ask('{"execute": "query-name", "arguments": {"bogus": 1}}')
        assert reply["error"]["class"] == "GenericError", reply
        reply = ask('{"execute": "query-status", "id": 7}')
        assert reply["id"] == 7 and reply["return"]["status"] == "shutdown", reply


async def poweroff(qmp, _proc, serial, sock):
    await qmp.execute("cont")
    await expect_event(qmp, "RESUME")
    event = await expect_event(qmp, "SHUTDOWN", BOOT_DEADLINE)
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}, event
    await expect_event(qmp, "STOP")
    assert serial.count("GUEST DONE") == 1
    assert (await qmp.execute("query-status"))["status"] == "shutdown"
    # Only one client per monitor at a time (QEMU's too): let go of this one meanwhile.
    await qmp.disconnect()
    await asyncio.get_running_loop().run_in_executor(None, raw_round, sock)
    await qmp.connect(sock)
    await qmp.execute("quit")
    event = await expect_event(qmp, "SHUTDOWN")
    assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event


async def panic(qmp, _proc, serial, _sock):
    await qmp.execute("cont")
    event = await expect_event(qmp, "GUEST_PANICKED", BOOT_DEADLINE)
    assert event["data"]["action"] == "poweroff", event
    event = await expect_event(qmp, "SHUTDOWN")
    assert event["data"] == {"guest": True, "reason": "guest-panic"}, event
    assert serial.count("GUEST CMD: ") == 1


# Each scenario: (coroutine, guest command, extra VMM options, extra kernel options).
SCENARIOS = {
    "life": (life, "while true; do read t i < /proc/uptime; echo T: $t; sleep 1; done", [], ""),
    "poweroff": (poweroff, "true", ["-no-shutdown"], "guest_halt"),
    # 64 MiB of RAM (the later -m wins) and a 256 MiB buffer that dd fills
    # (overcommit_memory=1: the allocation itself succeeds): the OOM killer would run; with
    # panic_on_oom the guest panics instead. Little RAM because on an emulating host (kvm_pvm)
    # every page fault runs in KVM's instruction emulator: filling 100 MiB takes minutes there.
    "panic": (panic,
              "echo 1 > /proc/sys/vm/panic_on_oom; echo 1 > /proc/sys/vm/overcommit_memory; "
              "dd if=/dev/zero of=/dev/null bs=256M count=1",
              ["-device", "pvpanic", "-m", "64"], ""),
}


async def all_lives(which, guest, names):
    for name in names:
        scenario, gcmd, extra, append = SCENARIOS[name]
        await run_vm(which, guest, scenario, gcmd, extra, append)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "accel"
    guest = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("ACCEL_GUEST_DIR")
    names = sys.argv[3:] or list(SCENARIOS)
    asyncio.run(all_lives(which, guest, names))


if __name__ == "__main__":
    main()

//! accel boots the test guest directly (PVH vmlinux and bzImage), with one and two vCPUs, runs
//! a command in it, reboots it, and reports bad kernel/initrd files clearly.
//!
//! Each boot costs about a minute on the emulating `kvm_pvm` host, so there are few, each
//! checking several things.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use integration_tests::{
    GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, TestDir, bin, guest_append, guest_file,
    run_with_timeout,
};

/// The boots in this file run one at a time: on a 2-core host, parallel guests starve each
/// other past their deadlines.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Deadline for one boot and its command: the shared harness's, times four, because the test
/// host's 2 cores are shared with builds and other VMs (a boot that takes 70 s alone took
/// 150 s with both cores busy).
const BOOT_DEADLINE: Duration = Duration::from_secs(4 * KVM_BOOT_TIMEOUT.as_secs());

fn vm_slot() -> MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn accel_cmd(kernel: &Path, smp: &str, append: &str, no_reboot: bool) -> Command {
    let mut cmd = Command::new(bin("accel"));
    cmd.args(["-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", smp])
        .args(["-display", "none", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(guest_file("lean.cpio"))
        .args(["-append", append]);
    if no_reboot {
        cmd.arg("-no-reboot");
    }
    cmd
}

/// The `<n> cpu(s)` the guest's /init reported on its `GUEST UP` line.
fn guest_cpus(out: &RunOutput) -> Option<u32> {
    let line = out.stdout.lines().find(|l| l.contains("GUEST UP"))?;
    let before = line.split(" cpu(s)").next()?;
    before.rsplit(", ").next()?.trim().parse().ok()
}

fn assert_clean_run(out: &RunOutput) {
    assert_eq!(out.code(), Some(0), "accel exit status\n{}", out.both());
    assert_eq!(
        out.guest_rc(),
        Some(0),
        "guest command status\n{}",
        out.both()
    );
}

#[test]
fn pvh_two_vcpus_are_both_online() {
    let _slot = vm_slot();
    // Also the clocksource: with two vCPUs the guest must not run on the raw TSC (accel used
    // to pass KVM's invariant-TSC bit through, so Linux picked `tsc`; QEMU's `-cpu host` hides
    // it and the guest stays on kvm-clock).
    let append = guest_append(
        "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online; \
         cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
         grep -c nonstop_tsc /proc/cpuinfo || true; \
         cat /sys/firmware/acpi/tables/FACP >/dev/null 2>&1 && echo acpi-on || echo acpi-off",
    );
    // With acpi=off: the MP table describes the two CPUs (the ACPI boot, with the MADT, is
    // acpi_poweroff_ends_the_vm below).
    let out = run_with_timeout(
        accel_cmd(&guest_file("vmlinux"), "2", &append, true).args(["-machine", "acpi=off"]),
        BOOT_DEADLINE,
    );
    assert_clean_run(&out);
    assert_eq!(guest_cpus(&out), Some(2), "{}", out.both());
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let cmd_at = lines
        .iter()
        .position(|l| l.starts_with("GUEST CMD:"))
        .expect("GUEST CMD line");
    assert_eq!(lines.get(cmd_at + 1), Some(&"2"), "{}", out.both());
    assert_eq!(lines.get(cmd_at + 2), Some(&"0-1"), "{}", out.both());
    assert_eq!(lines.get(cmd_at + 3), Some(&"kvm-clock"), "{}", out.both());
    assert_eq!(lines.get(cmd_at + 4), Some(&"0"), "{}", out.both());
    assert_eq!(lines.get(cmd_at + 5), Some(&"acpi-off"), "{}", out.both());
}

/// With ACPI (the default) and two vCPUs (from the MADT), the guest sees the tables and the
/// power button (acpid runs, ready for QMP's system_powerdown), and its `poweroff` (SLP_EN
/// with `\_S5`'s SLP_TYP on PM1a_CNT) ends accel with status 0. Without -no-reboot, so a
/// reset could not pass for a power-off (it would boot the guest again).
#[test]
fn acpi_poweroff_ends_the_vm() {
    let _slot = vm_slot();
    let append = guest_append(
        "cat /sys/firmware/acpi/tables/FACP >/dev/null && echo acpi-on; \
         grep -c 'Name=.Power Button' /proc/bus/input/devices; \
         cat /proc/[0-9]*/comm | grep -c '^acpid$'; poweroff -f",
    );
    let out = run_with_timeout(
        accel_cmd(&guest_file("vmlinux"), "2", &append, false).env("RUST_LOG", "info"),
        BOOT_DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "accel exit status\n{}", out.both());
    assert_eq!(out.stdout.matches("GUEST UP").count(), 1, "{}", out.both());
    assert_eq!(guest_cpus(&out), Some(2), "{}", out.both());
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let cmd_at = lines
        .iter()
        .position(|l| l.starts_with("GUEST CMD:"))
        .expect("GUEST CMD line");
    assert_eq!(
        lines.get(cmd_at + 1..cmd_at + 4),
        Some(&["acpi-on", "1", "1"][..]),
        "tables, one power button, acpid\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains("guest powered off (ACPI S5)"),
        "{}",
        out.both()
    );
    assert!(!out.stdout.contains("GUEST CMD RC"), "{}", out.both());
}

/// A bzImage through the 64-bit boot protocol, one vCPU, `-no-reboot`: the guest runs its
/// command and its reset ends accel with status 0; `--timing` reports the start-up time. (The
/// other boots here, and every other VM test, boot the PVH `vmlinux`.)
#[test]
fn one_vcpu_bzimage_runs_a_command_and_exits_on_reset() {
    let _slot = vm_slot();
    let append = guest_append("echo accel-says-$((6*7)); uname -m");
    let out = run_with_timeout(
        accel_cmd(&guest_file("bzImage"), "1", &append, true).arg("--timing"),
        BOOT_DEADLINE + KVM_BOOT_TIMEOUT,
    );
    assert_clean_run(&out);
    assert_eq!(guest_cpus(&out), Some(1), "{}", out.both());
    for line in ["accel-says-42", "x86_64"] {
        assert!(
            out.stdout.lines().any(|l| l.trim() == line),
            "{line}\n{}",
            out.both()
        );
    }
    assert!(
        out.stderr.contains("process start to first KVM_RUN"),
        "--timing line missing\n{}",
        out.both()
    );
}

/// Without -no-reboot a guest reset reboots the VM (the guest comes up a second time); SIGTERM
/// then ends accel cleanly with status 0, as QEMU does.
#[test]
fn reset_reboots_and_sigterm_exits_zero() {
    let _slot = vm_slot();
    let mut child = accel_cmd(
        &guest_file("vmlinux"),
        "1",
        &guest_append("echo boot-ok"),
        false,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn accel");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("GUEST UP") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + 2 * BOOT_DEADLINE;
    let mut ups = 0;
    while ups < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(()) => ups += 1,
            Err(_) => break,
        }
    }
    if ups < 2 {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "guest came up {ups} time(s), expected 2:\n{}",
            reader.join().unwrap()
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let stdout = reader.join().unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status after SIGTERM\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("terminating on signal 15"), "{stderr}");
    assert!(stdout.matches("boot-ok").count() >= 1, "{stdout}");
}

fn run_quick(kernel: &Path, initrd: &Path) -> RunOutput {
    let mut cmd = Command::new(bin("accel"));
    cmd.args([
        "-m",
        "128",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-kernel",
    ])
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd);
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

#[test]
fn missing_kernel_or_initrd_is_an_error_naming_the_file() {
    let dir = TestDir::new("boot-missing");
    let nok = dir.join("no-such-kernel");
    let out = run_quick(&nok, &guest_file("lean.cpio"));
    assert_ne!(out.code(), Some(0), "{}", out.both());
    assert!(
        out.stderr.contains(&*nok.to_string_lossy()),
        "{}",
        out.both()
    );

    let noi = dir.join("no-such-initrd.cpio");
    let out = run_quick(&guest_file("vmlinux"), &noi);
    assert_ne!(out.code(), Some(0), "{}", out.both());
    assert!(
        out.stderr.contains(&*noi.to_string_lossy()),
        "{}",
        out.both()
    );
}

#[test]
fn garbage_kernel_is_a_clear_error() {
    let dir = TestDir::new("boot-garbage");
    let k = dir.join("garbage.bin");
    std::fs::write(&k, vec![0x5au8; 8192]).unwrap();
    let out = run_quick(&k, &guest_file("lean.cpio"));
    assert_eq!(out.code(), Some(1), "{}", out.both());
    assert!(
        out.stderr.contains("is not a Linux kernel image"),
        "{}",
        out.both()
    );
    assert!(out.stderr.contains(&*k.to_string_lossy()), "{}", out.both());
}

/// A minimal PVH "kernel": an ELF64 with one PT_LOAD at 1 MiB and a Xen PHYS32_ENTRY note,
/// whose 32-bit code loads a marker into EAX and executes UD2 (with the boot IDT empty, the
/// guest cannot handle the fault: triple fault, or a KVM internal error on emulating hosts).
fn crashing_pvh_elf() -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    let code: &[u8] = &[0xb8, 0xef, 0xbe, 0xad, 0xde, 0x0f, 0x0b]; // mov eax,0xdeadbeef; ud2
    let mut f = vec![0u8; 0x1000];
    // ELF header.
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    let put16 =
        |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut f, 16, 2); // ET_EXEC
    put16(&mut f, 18, 0x3e); // x86-64
    put32(&mut f, 20, 1);
    put64(&mut f, 24, ENTRY);
    put64(&mut f, 32, 64); // e_phoff
    put16(&mut f, 52, 64); // e_ehsize
    put16(&mut f, 54, 56); // e_phentsize
    put16(&mut f, 56, 2); // e_phnum
    // PT_LOAD: the code at file offset 0x1000 -> 1 MiB.
    let ph = 64;
    put32(&mut f, ph, 1);
    put32(&mut f, ph + 4, 5); // R+X
    put64(&mut f, ph + 8, 0x1000);
    put64(&mut f, ph + 16, ENTRY);
    put64(&mut f, ph + 24, ENTRY);
    put64(&mut f, ph + 32, code.len() as u64);
    put64(&mut f, ph + 40, code.len() as u64);
    put64(&mut f, ph + 48, 0x1000);
    // PT_NOTE at 0x200: "Xen" note type 18 (XEN_ELFNOTE_PHYS32_ENTRY) = ENTRY.
    let ph = 64 + 56;
    let note = 0x200;
    put32(&mut f, ph, 4);
    put32(&mut f, ph + 4, 4);
    put64(&mut f, ph + 8, note as u64);
    put64(&mut f, ph + 32, 20);
    put64(&mut f, ph + 40, 20);
    put64(&mut f, ph + 48, 4);
    put32(&mut f, note, 4); // namesz
    put32(&mut f, note + 4, 4); // descsz
    put32(&mut f, note + 8, 18); // type
    f[note + 12..note + 16].copy_from_slice(b"Xen\0");
    put32(&mut f, note + 16, ENTRY as u32);
    f.extend_from_slice(code);
    f
}

#[test]
fn a_guest_crash_dumps_registers_and_exits_nonzero() {
    let dir = TestDir::new("boot-crash");
    let k = dir.join("crash.elf");
    std::fs::write(&k, crashing_pvh_elf()).unwrap();
    let mut cmd = Command::new(bin("accel"));
    cmd.args([
        "-m",
        "32",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-kernel",
    ])
    .arg(&k);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.code(), Some(1), "{}", out.both());
    assert!(
        out.stderr.contains("accel: vCPU 0 stopped:"),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains("RAX=00000000deadbeef"),
        "{}",
        out.both()
    );
    assert!(out.stderr.contains("CR0="), "{}", out.both());
    assert!(
        out.stderr.contains("RIP=0000000000100005"),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains("code at CS:RIP: 0f 0b"),
        "{}",
        out.both()
    );
}

//! accel boots the test guest directly (PVH vmlinux and bzImage), with one and two vCPUs, runs
//! a command in it, reboots it, and reports bad kernel/initrd files clearly.
//!
//! Each boot costs ~15 s on the emulating `kvm_pvm` host (bzImage ~25 s), so there are few.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use integration_tests::{
    KVM_BOOT_TIMEOUT, RunOutput, TempDir, bin, guest_append, guest_file, run_with_timeout,
};

/// The boots in this file run one at a time: on a 2-core host, parallel guests starve each
/// other past their deadlines.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

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
fn pvh_one_vcpu_runs_a_command_and_exits_on_reset() {
    let _slot = vm_slot();
    let append = guest_append("echo accel-says-$((6*7)); uname -m");
    let out = run_with_timeout(
        accel_cmd(&guest_file("vmlinux"), "1", &append, true).arg("--timing"),
        KVM_BOOT_TIMEOUT,
    );
    assert_clean_run(&out);
    assert_eq!(guest_cpus(&out), Some(1), "{}", out.both());
    assert!(
        out.stdout.lines().any(|l| l.trim() == "accel-says-42"),
        "{}",
        out.both()
    );
    assert!(
        out.stdout.lines().any(|l| l.trim() == "x86_64"),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains("process start to first KVM_RUN"),
        "--timing line missing\n{}",
        out.both()
    );
}

#[test]
fn pvh_two_vcpus_are_both_online() {
    let _slot = vm_slot();
    let append =
        guest_append("grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online");
    let out = run_with_timeout(
        &mut accel_cmd(&guest_file("vmlinux"), "2", &append, true),
        KVM_BOOT_TIMEOUT,
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
}

#[test]
fn bzimage_boots_through_the_64bit_protocol() {
    let _slot = vm_slot();
    let append = guest_append("echo bz-$((1+1))");
    let out = run_with_timeout(
        &mut accel_cmd(&guest_file("bzImage"), "1", &append, true),
        KVM_BOOT_TIMEOUT + Duration::from_secs(60),
    );
    assert_clean_run(&out);
    assert!(
        out.stdout.lines().any(|l| l.trim() == "bz-2"),
        "{}",
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
    let deadline = Instant::now() + 2 * KVM_BOOT_TIMEOUT;
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
    let dir = TempDir::new("boot-missing");
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
    let dir = TempDir::new("boot-garbage");
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

//! vhost-user-rng end to end: the test guest reads /dev/hwrng (virtio_rng must be the current
//! hw_random device) under QEMU 7.2's vhost-user-rng-pci (TCG) and under accel (KVM). The
//! backend's source is a file of one repeated byte, so the md5 of what the guest reads is
//! known whatever the kernel's own hwrng thread takes in between.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    KVM_BOOT_TIMEOUT, KillOnDrop, RunOutput, TempDir, bin, guest_append, guest_file, qemu,
    run_with_timeout, wait_for_path,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(90);
/// The byte the source file repeats.
const FILL: u8 = b'Z';

fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Starts `vhost-user-rng` on a 4 MiB source of [`FILL`] bytes.
fn start_backend(dir: &TempDir, extra: &[&str]) -> (KillOnDrop, PathBuf) {
    let source = dir.join("source");
    std::fs::write(&source, vec![FILL; 4 << 20]).unwrap();
    let sock = dir.join("rng.sock");
    let child = Command::new(bin("vhost-user-rng"))
        .arg("--socket-path")
        .arg(&sock)
        .arg("--source")
        .arg(&source)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vhost-user-rng");
    let backend = KillOnDrop(child);
    assert!(
        wait_for_path(&sock, Duration::from_secs(10)),
        "backend socket did not appear"
    );
    (backend, sock)
}

/// The guest's command: name the current hwrng, hash `len` bytes of it.
fn gcmd(len: usize) -> String {
    format!("cat /sys/class/misc/hw_random/rng_current; head -c {len} /dev/hwrng | md5sum")
}

fn vm_args(sock: &Path, gcmd: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        "pc",
        "-m",
        "128",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
        "-object",
        "memory-backend-memfd,id=mem,size=128M,share=on",
        "-numa",
        "node,memdev=mem",
        "-device",
        "vhost-user-rng-pci,chardev=c0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("-chardev".into());
    a.push(format!("socket,id=c0,path={}", sock.display()));
    a.push("-kernel".into());
    a.push(guest_file("vmlinux").display().to_string());
    a.push("-initrd".into());
    a.push(guest_file("lean.cpio").display().to_string());
    a.push("-append".into());
    a.push(guest_append(gcmd));
    a
}

fn check_guest(out: &RunOutput, len: usize) {
    assert_eq!(out.guest_rc(), Some(0), "{}", out.both());
    assert!(
        out.stdout.lines().any(|l| l.trim() == "virtio_rng.0"),
        "virtio_rng.0 is not the current hw_random device\n{}",
        out.both()
    );
    let want = format!("{}  -", md5_hex(&vec![FILL; len]));
    assert!(
        out.stdout.lines().any(|l| l.trim() == want),
        "the guest did not read the source's bytes (want {want})\n{}",
        out.both()
    );
}

#[test]
fn qemu_guest_reads_hwrng() {
    let dir = TempDir::new("rng-qemu");
    let (_backend, sock) = start_backend(&dir, &[]);
    let out = run_with_timeout(
        Command::new(qemu())
            .args(["-accel", "tcg"])
            .args(vm_args(&sock, &gcmd(4096))),
        QEMU_TIMEOUT,
    );
    assert!(out.status.is_some(), "QEMU timed out\n{}", out.both());
    check_guest(&out, 4096);
}

#[test]
fn qemu_guest_reads_hwrng_rate_limited() {
    let dir = TempDir::new("rng-qemu-limit");
    // 2 KiB in windows of 512 bytes: at least three waits on the backend's timer.
    let (_backend, sock) = start_backend(&dir, &["--max-bytes", "512", "--period", "100"]);
    let out = run_with_timeout(
        Command::new(qemu())
            .args(["-accel", "tcg"])
            .args(vm_args(&sock, &gcmd(2048))),
        QEMU_TIMEOUT,
    );
    assert!(out.status.is_some(), "QEMU timed out\n{}", out.both());
    check_guest(&out, 2048);
}

#[test]
fn accel_guest_reads_hwrng() {
    let dir = TempDir::new("rng-accel");
    let (_backend, sock) = start_backend(&dir, &[]);
    let out = run_with_timeout(
        Command::new(bin("accel")).args(vm_args(&sock, &gcmd(1024))),
        KVM_BOOT_TIMEOUT * 3,
    );
    assert!(out.status.is_some(), "accel timed out\n{}", out.both());
    check_guest(&out, 1024);
}

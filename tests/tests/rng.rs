//! vhost-user-rng end to end: the test guest reads /dev/hwrng (virtio_rng must be the current
//! hw_random device) under QEMU 7.2's vhost-user-rng-pci (TCG) and under accel (KVM). The
//! backend's source is a file of one repeated byte, so the md5 of what the guest reads is
//! known whatever the kernel's own hwrng thread takes in between.

use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, TestDir, VmCommand, md5_hex,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(90);
/// The byte the source file repeats.
const FILL: u8 = b'Z';

/// Starts `vhost-user-rng` on a 4 MiB source of [`FILL`] bytes.
fn start_backend(dir: &TestDir, extra: &[&str]) -> Backend {
    let source = dir.join("source");
    std::fs::write(&source, vec![FILL; 4 << 20]).unwrap();
    let mut args = vec!["--source", source.to_str().unwrap()];
    args.extend(extra);
    Backend::spawn("vhost-user-rng", &dir.join("rng.sock"), &args)
}

/// The guest's command: name the current hwrng, hash `len` bytes of it.
fn gcmd(len: usize) -> String {
    format!("cat /sys/class/misc/hw_random/rng_current; head -c {len} /dev/hwrng | md5sum")
}

fn vm(backend: &Backend, gcmd: &str) -> VmCommand {
    VmCommand::new()
        .device("vhost-user-rng-pci,chardev=c0")
        .chardev("c0", backend.socket())
        .gcmd(gcmd)
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
    let dir = TestDir::new("rng-qemu");
    let backend = start_backend(&dir, &[]);
    let out = vm(&backend, &gcmd(4096))
        .accel("tcg")
        .run_qemu(QEMU_TIMEOUT);
    check_guest(&out, 4096);
}

#[test]
fn qemu_guest_reads_hwrng_rate_limited() {
    let dir = TestDir::new("rng-qemu-limit");
    // 2 KiB in windows of 512 bytes: at least three waits on the backend's timer.
    let backend = start_backend(&dir, &["--max-bytes", "512", "--period", "100"]);
    let out = vm(&backend, &gcmd(2048))
        .accel("tcg")
        .run_qemu(QEMU_TIMEOUT);
    check_guest(&out, 2048);
}

#[test]
fn accel_guest_reads_hwrng() {
    let dir = TestDir::new("rng-accel");
    let backend = start_backend(&dir, &[]);
    let out = vm(&backend, &gcmd(1024)).run_accel(KVM_BOOT_TIMEOUT * 3);
    check_guest(&out, 1024);
}

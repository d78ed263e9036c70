//! QEMU interop: QEMU 7.2's vhost-user-blk-pci (under TCG) drives our `vhost-user-blk` backend;
//! the test guest reads and writes /dev/vda and we compare bytes with the image on the host.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    KillOnDrop, RunOutput, TempDir, bin, guest_append, guest_file, qemu, run_with_timeout,
    wait_for_path,
};

const IMAGE_SIZE: usize = 16 << 20;
const QEMU_TIMEOUT: Duration = Duration::from_secs(90);

fn make_image(path: &Path) -> Vec<u8> {
    // Deterministic, non-repeating bytes (xorshift), so any misplaced sector shows up.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(IMAGE_SIZE);
    while data.len() < IMAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&data))
        .expect("write image");
    data
}

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

fn start_backend(dir: &TempDir, extra: &[&str]) -> (KillOnDrop, std::path::PathBuf) {
    let sock = dir.join("blk.sock");
    let image = dir.join("disk.img");
    let child = Command::new(bin("vhost-user-blk"))
        .arg("--socket-path")
        .arg(&sock)
        .arg("--image")
        .arg(&image)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vhost-user-blk");
    let backend = KillOnDrop(child);
    assert!(
        wait_for_path(&sock, Duration::from_secs(10)),
        "backend socket did not appear"
    );
    (backend, sock)
}

fn run_qemu(sock: &Path, device_opts: &str, gcmd: &str) -> RunOutput {
    let out = run_with_timeout(
        Command::new(qemu())
            .args([
                "-accel",
                "tcg",
                "-M",
                "pc",
                "-m",
                "256",
                "-smp",
                "2,sockets=2",
            ])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}", sock.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-blk-pci,chardev=c0,disable-legacy=on{device_opts}"
            ))
            .arg("-kernel")
            .arg(guest_file("vmlinux"))
            .arg("-initrd")
            .arg(guest_file("lean.cpio"))
            .arg("-append")
            .arg(guest_append(gcmd))
            .args([
                "-nographic",
                "-nodefaults",
                "-serial",
                "stdio",
                "-no-reboot",
            ]),
        QEMU_TIMEOUT,
    );
    assert!(out.status.is_some(), "QEMU timed out\n{}", out.both());
    out
}

/// The md5 the guest printed for /dev/vda.
fn guest_md5(out: &RunOutput) -> Option<String> {
    out.stdout.lines().find_map(|l| {
        let l = l.trim();
        l.strip_suffix("/dev/vda")
            .map(|h| h.trim().to_string())
            .filter(|h| h.len() == 32)
    })
}

/// The guest reads the whole disk (md5), copies its first 64 KiB to 4 MiB, writes a marker
/// at 4 KiB, both with fsync (FLUSH). A second QEMU then sees the new contents (the backend
/// served again after the first QEMU went away).
fn read_write_round_trip(device_opts: &str, backend_opts: &[&str]) -> RunOutput {
    let dir = TempDir::new("blk-qemu");
    let original = make_image(&dir.join("disk.img"));
    let (_backend, sock) = start_backend(&dir, backend_opts);

    let gcmd = "md5sum /dev/vda && echo accel-blk-marker | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync \
                && dd if=/dev/vda of=/dev/vda bs=65536 count=1 seek=64 conv=fsync \
                && echo mq-queues $(ls /sys/block/vda/mq | wc -l)";
    let out = run_qemu(&sock, device_opts, gcmd);
    assert_eq!(out.guest_rc(), Some(0), "{}", out.both());
    assert_eq!(
        guest_md5(&out).as_deref(),
        Some(md5_hex(&original).as_str()),
        "the guest did not read the image's bytes\n{}",
        out.both()
    );

    let after = std::fs::read(dir.join("disk.img")).unwrap();
    assert_eq!(after.len(), IMAGE_SIZE);
    let mut marker = b"accel-blk-marker\n".to_vec();
    marker.resize(512, 0);
    assert_eq!(
        &after[4096..4608],
        &marker[..],
        "marker write not in the image"
    );
    assert_eq!(
        &after[4 << 20..(4 << 20) + 65536],
        &after[..65536],
        "64 KiB copy not in the image"
    );
    assert_eq!(
        &after[4608..4 << 20],
        &original[4608..4 << 20],
        "unrelated bytes changed"
    );
    assert_eq!(&after[(4 << 20) + 65536..], &original[(4 << 20) + 65536..]);

    // Serve again: a second frontend on the same backend process sees the new contents.
    let out2 = run_qemu(&sock, device_opts, "md5sum /dev/vda");
    assert_eq!(out2.guest_rc(), Some(0), "{}", out2.both());
    assert_eq!(
        guest_md5(&out2).as_deref(),
        Some(md5_hex(&after).as_str()),
        "second boot\n{}",
        out2.both()
    );
    out
}

#[test]
fn qemu_reads_and_writes_through_the_backend() {
    read_write_round_trip("", &[]);
}

#[test]
fn qemu_with_two_queues() {
    let out = read_write_round_trip(",num-queues=2", &["--num-queues", "2"]);
    assert!(
        out.stdout.lines().any(|l| l.trim() == "mq-queues 2"),
        "guest did not get 2 queues\n{}",
        out.both()
    );
}

#[test]
fn qemu_read_only_backend_refuses_writes() {
    let dir = TempDir::new("blk-qemu-ro");
    let original = make_image(&dir.join("disk.img"));
    let (_backend, sock) = start_backend(&dir, &["--read-only"]);
    let gcmd = "md5sum /dev/vda; echo ro $(cat /sys/block/vda/ro); \
                echo x | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync; echo dd-rc $?";
    let out = run_qemu(&sock, ",num-queues=1", gcmd);
    assert!(out.guest_rc().is_some(), "{}", out.both());
    assert_eq!(
        guest_md5(&out).as_deref(),
        Some(md5_hex(&original).as_str()),
        "{}",
        out.both()
    );
    assert!(
        out.stdout.lines().any(|l| l.trim() == "ro 1"),
        "/sys/block/vda/ro is not 1\n{}",
        out.both()
    );
    let dd_rc = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("dd-rc "))
        .and_then(|v| v.trim().parse::<i32>().ok());
    assert!(
        matches!(dd_rc, Some(rc) if rc != 0),
        "dd to a read-only disk succeeded\n{}",
        out.both()
    );
    assert!(
        std::fs::read(dir.join("disk.img")).unwrap() == original,
        "read-only image changed"
    );
}

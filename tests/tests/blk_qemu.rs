//! QEMU interop: QEMU 7.2's vhost-user-blk-pci (under TCG) drives our `vhost-user-blk` backend;
//! the test guest reads and writes /dev/vda and we compare bytes with the image on the host.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, RunOutput, TestDir, VmCommand, md5_hex, xorshift_bytes,
};

const IMAGE_SIZE: usize = 16 << 20;
const QEMU_TIMEOUT: Duration = Duration::from_secs(90);

fn make_image(path: &Path) -> Vec<u8> {
    let data = xorshift_bytes(0x9e37_79b9_7f4a_7c15, IMAGE_SIZE);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&data))
        .expect("write image");
    data
}

fn start_backend(dir: &TestDir, extra: &[&str]) -> Backend {
    let image = dir.join("disk.img");
    let mut args = vec!["--image", image.to_str().unwrap()];
    args.extend(extra);
    Backend::spawn("vhost-user-blk", &dir.join("blk.sock"), &args)
}

fn run_qemu(sock: &Path, device_opts: &str, gcmd: &str) -> RunOutput {
    VmCommand::new()
        .accel("tcg")
        .mem(256)
        .smp("2,sockets=2")
        .chardev("c0", sock)
        .device(&format!(
            "vhost-user-blk-pci,chardev=c0,disable-legacy=on{device_opts}"
        ))
        .gcmd(gcmd)
        .run_qemu(QEMU_TIMEOUT)
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
    let dir = TestDir::new("blk-qemu");
    let original = make_image(&dir.join("disk.img"));
    let backend = start_backend(&dir, backend_opts);

    let gcmd = "md5sum /dev/vda && echo accel-blk-marker | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync \
                && dd if=/dev/vda of=/dev/vda bs=65536 count=1 seek=64 conv=fsync \
                && echo mq-queues $(ls /sys/block/vda/mq | wc -l)";
    let out = run_qemu(backend.socket(), device_opts, gcmd);
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
    let out2 = run_qemu(backend.socket(), device_opts, "md5sum /dev/vda");
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
    let dir = TestDir::new("blk-qemu-ro");
    let original = make_image(&dir.join("disk.img"));
    let backend = start_backend(&dir, &["--read-only"]);
    let gcmd = "md5sum /dev/vda; echo ro $(cat /sys/block/vda/ro); \
                echo x | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync; echo dd-rc $?";
    let out = run_qemu(backend.socket(), ",num-queues=1", gcmd);
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

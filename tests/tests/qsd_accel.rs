//! A C backend as accel's disk: qemu-storage-daemon's vhost-user-blk export (QEMU 7.2,
//! libvhost-user underneath). The guest under accel sees the image's size and a sane block
//! size (the export answers GET_CONFIG from offset 0 whatever offset is asked: accel must read
//! the whole config space once), hashes the disk (md5 compared with the host's), and writes a
//! marker that must land in the image file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    GuestOutput, KVM_BOOT_TIMEOUT, KillOnDrop, TestDir, VmCommand, md5_hex, wait_for_path,
    xorshift_bytes,
};

const IMAGE_SIZE: usize = 1 << 20;
const MARKER_SECTOR: usize = 8;

/// Starts qemu-storage-daemon exporting `image` (writable) on `sock`; its output goes to `log`.
fn start_qsd(image: &Path, sock: &Path, log: &Path) -> KillOnDrop {
    let blockdev = format!(
        "driver=file,filename={},node-name=d0,cache.direct=off",
        image.display()
    );
    let export = format!(
        "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues=1",
        sock.display()
    );
    let log = std::fs::File::create(log).expect("qsd log");
    let child = Command::new("qemu-storage-daemon")
        .args(["--blockdev", &blockdev, "--export", &export])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run qemu-storage-daemon ({e}): apt-get install qemu-system-x86")
        });
    let child = KillOnDrop(child);
    assert!(
        wait_for_path(sock, Duration::from_secs(10)),
        "qemu-storage-daemon did not create {}",
        sock.display()
    );
    child
}

/// The first word of the line after the line `marker`.
fn value_after(out: &str, marker: &str) -> Option<String> {
    let mut lines = out.lines().map(str::trim);
    lines.find(|l| *l == marker)?;
    lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

#[test]
fn qemu_storage_daemon_export_as_accel_disk() {
    let dir = TestDir::new("qsd-accel");
    let image = dir.join("disk.img");
    let original = xorshift_bytes(0x5eed_0000_1234_5679, IMAGE_SIZE);
    std::fs::write(&image, &original).expect("write image");
    let sock = dir.join("qsd.sock");
    let qsd_log = dir.join("qsd.log");
    let _qsd = start_qsd(&image, &sock, &qsd_log);

    let gcmd = format!(
        "echo BS; cat /sys/block/vda/queue/logical_block_size; \
         echo SECTORS; cat /sys/block/vda/size; \
         echo MD5; md5sum /dev/vda; \
         echo accel-qsd-marker | dd of=/dev/vda bs=512 seek={MARKER_SECTOR} conv=sync,notrunc,fsync 2>/dev/null; \
         echo WRITE-RC; echo $?; sync"
    );
    let out = VmCommand::new()
        .chardev("c0", &sock)
        .device("vhost-user-blk-pci,chardev=c0,num-queues=1")
        .gcmd(&gcmd)
        .run_accel(KVM_BOOT_TIMEOUT * 4);
    let qsd_said = std::fs::read_to_string(&qsd_log).unwrap_or_default();
    let ctx = format!("{}\nqemu-storage-daemon:\n{qsd_said}", out.both());
    assert_eq!(out.guest_rc(), Some(0), "guest command failed\n{ctx}");

    // The config space: what the export's GET_CONFIG puts at offset 0.
    assert_eq!(
        value_after(&out.stdout, "BS").as_deref(),
        Some("512"),
        "logical block size\n{ctx}"
    );
    assert_eq!(
        value_after(&out.stdout, "SECTORS").as_deref(),
        Some((IMAGE_SIZE / 512).to_string().as_str()),
        "capacity\n{ctx}"
    );
    // Reads.
    assert_eq!(
        value_after(&out.stdout, "MD5").as_deref(),
        Some(md5_hex(&original).as_str()),
        "the guest did not read the image's bytes\n{ctx}"
    );
    // Writes land in the image file, and nothing else changes.
    assert_eq!(value_after(&out.stdout, "WRITE-RC").as_deref(), Some("0"));
    let after = std::fs::read(&image).expect("read image");
    let mut marker = b"accel-qsd-marker\n".to_vec();
    marker.resize(512, 0);
    let at = MARKER_SECTOR * 512;
    assert_eq!(
        &after[at..at + 512],
        &marker[..],
        "marker not in the image\n{ctx}"
    );
    assert_eq!(
        &after[..at],
        &original[..at],
        "bytes before the marker changed"
    );
    assert_eq!(
        &after[at + 512..],
        &original[at + 512..],
        "bytes after the marker changed"
    );
}

//! virtiofsd (the C one QEMU 7.2 ships at /usr/lib/qemu/virtiofsd) as accel's file system,
//! through `-device vhost-user-fs-pci,chardev=..,tag=..`: the guest mounts the tag, hashes a
//! host file (md5 compared with the host's) and writes one that must appear in the shared
//! directory, then unmounts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    GuestOutput, KVM_BOOT_TIMEOUT, KillOnDrop, TestDir, VmCommand, md5_hex, wait_for_path,
    xorshift_bytes,
};

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// Starts virtiofsd sharing `source` on `sock`; its output goes to `log`.
fn start_virtiofsd(source: &Path, sock: &Path, log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).expect("virtiofsd log");
    let child = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", sock.display()))
        .args(["-o", &format!("source={}", source.display())])
        .args(["-o", "cache=none"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {VIRTIOFSD} ({e}): apt-get install qemu-system-x86")
        });
    let child = KillOnDrop(child);
    assert!(
        wait_for_path(sock, Duration::from_secs(10)),
        "virtiofsd did not create {}",
        sock.display()
    );
    child
}

#[test]
fn guest_mounts_virtiofsd_share_reads_and_writes_host_files() {
    let dir = TestDir::new("virtiofs");
    let share = dir.join("share");
    std::fs::create_dir(&share).expect("share dir");
    let original = xorshift_bytes(0x5eed_f5f5_0000_0001, 300_000);
    std::fs::write(share.join("host.bin"), &original).expect("host file");
    let sock = dir.join("fs.sock");
    let log = dir.join("virtiofsd.log");
    let mut fsd = start_virtiofsd(&share, &sock, &log);

    let gcmd = "mkdir -p /mnt && mount -t virtiofs hostshare /mnt && \
                echo MD5 && md5sum /mnt/host.bin && \
                echo written-by-the-guest > /mnt/guest.txt && sync && umount /mnt && echo UNMOUNTED";
    let out = VmCommand::new()
        .chardev("fs0", &sock)
        .device("vhost-user-fs-pci,chardev=fs0,tag=hostshare,queue-size=512")
        .gcmd(gcmd)
        .run_accel(KVM_BOOT_TIMEOUT * 4);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let ctx = format!("{}\nvirtiofsd:\n{said}", out.both());
    assert_eq!(out.guest_rc(), Some(0), "guest command failed\n{ctx}");
    let md5 = out
        .stdout
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "MD5")
        .nth(1)
        .and_then(|l| l.split_whitespace().next());
    assert_eq!(
        md5,
        Some(md5_hex(&original).as_str()),
        "the guest did not read the host file's bytes\n{ctx}"
    );
    assert!(out.stdout.contains("UNMOUNTED"), "{ctx}");
    assert_eq!(
        std::fs::read_to_string(share.join("guest.txt"))
            .ok()
            .as_deref(),
        Some("written-by-the-guest\n"),
        "the guest's file is not in the shared directory\n{ctx}"
    );
    // accel closed the connection when it exited: virtiofsd's session loop ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fsd.0.try_wait().expect("wait virtiofsd").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "virtiofsd still runs after accel exited\n{ctx}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

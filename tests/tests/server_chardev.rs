//! `-chardev socket,...,server=on` for vhost-user: the frontend listens and the backend
//! connects (`--client`), as OVS-DPDK's `dpdkvhostuserclient`, DPDK/SPDK client mode and
//! libvirt's `mode='server'` interfaces do. Under accel the guest reads entropy from a
//! client-mode vhost-user-rng; the backend is then killed and a new one (another source byte)
//! connects to accel's socket, and the guest's next reads are served by it. Under QEMU 7.2
//! (TCG) the same client-mode backend serves the guest too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, TestDir, VmCommand, bin, md5_hex, spawn_until,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a client-mode vhost-user-rng for `sock` whose source repeats `fill`; log to `log`.
fn client_backend(dir: &Path, sock: &Path, fill: u8, log: &str) -> Backend {
    let source = dir.join(format!("source-{}", fill as char));
    std::fs::write(&source, vec![fill; 4 << 20]).unwrap();
    let source = source.display().to_string();
    Backend::spawn_logged(
        "vhost-user-rng",
        sock,
        &["--client", "--source", &source],
        &dir.join(log),
    )
}

fn vm(sock: &Path, gcmd: &str) -> VmCommand {
    VmCommand::new()
        .chardev_opts("c0", sock, ",server=on")
        .device("vhost-user-rng-pci,chardev=c0")
        .gcmd(gcmd)
}

#[test]
fn accel_listens_and_a_restarted_client_backend_serves_the_guest_again() {
    let dir = TestDir::new("server-chardev-accel");
    let sock = dir.join("rng.sock");
    // The backend starts before accel listens: it retries until accel's socket exists.
    let first = client_backend(dir.path(), &sock, b'A', "first.log");
    // First read: only the first backend's bytes. Then, while the guest sleeps, the test
    // swaps the backend; the later reads block until the new one is connected. The kernel's
    // hw_random core may still hold a few bytes from the first backend, so the second read
    // is checked to hold only A and B bytes, and some B bytes. The marker is computed by the
    // guest's shell: the console also echoes the command line itself.
    let gcmd = "head -c 1024 /dev/hwrng | md5sum; echo FIRST-READ-$((40+2)); sleep 15; \
                head -c 4096 /dev/hwrng > /tmp/r; echo NOT-AB; tr -d AB < /tmp/r | wc -c; \
                echo NOT-A; tr -d A < /tmp/r | wc -c";
    let args = vm(&sock, gcmd).args();
    let running = spawn_until(
        Command::new(bin("accel")).args(&args),
        "FIRST-READ-42",
        KVM_BOOT_TIMEOUT * 3,
    )
    .unwrap_or_else(|out| panic!("no first read\n{}", out.both()));
    first.kill();
    let _second = client_backend(dir.path(), &sock, b'B', "second.log");
    let out = running.finish_within(KVM_BOOT_TIMEOUT * 4);
    let ctx = format!(
        "{}\nfirst backend:\n{}\nsecond backend:\n{}",
        out.both(),
        std::fs::read_to_string(dir.join("first.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("second.log")).unwrap_or_default()
    );
    assert_eq!(out.guest_rc(), Some(0), "{ctx}");
    let want = format!("{}  -", md5_hex(&[b'A'; 1024]));
    assert!(
        out.stdout.lines().any(|l| l.trim() == want),
        "the first read is not the first backend's bytes\n{ctx}"
    );
    let after = |marker: &str| {
        let mut lines = out.stdout.lines().map(str::trim);
        lines.find(|l| *l == marker);
        lines.next().and_then(|l| l.parse::<u64>().ok())
    };
    assert_eq!(
        after("NOT-AB"),
        Some(0),
        "bytes from neither backend\n{ctx}"
    );
    assert!(
        after("NOT-A").is_some_and(|n| n > 0),
        "the second read has no byte of the second backend\n{ctx}"
    );
    assert!(
        out.stderr.contains("reconnected to vhost-user backend"),
        "{ctx}"
    );
}

#[test]
fn qemu_listens_and_a_client_backend_serves_the_guest() {
    let dir = TestDir::new("server-chardev-qemu");
    let sock = dir.join("rng.sock");
    let _backend = client_backend(dir.path(), &sock, b'Q', "backend.log");
    let out = vm(&sock, "head -c 1024 /dev/hwrng | md5sum")
        .accel("tcg")
        .run_qemu(QEMU_TIMEOUT);
    let ctx = format!(
        "{}\nbackend:\n{}",
        out.both(),
        std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default()
    );
    assert_eq!(out.guest_rc(), Some(0), "{ctx}");
    let want = format!("{}  -", md5_hex(&[b'Q'; 1024]));
    assert!(out.stdout.lines().any(|l| l.trim() == want), "{ctx}");
}

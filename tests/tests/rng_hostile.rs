//! A hostile guest under QEMU 7.2 (TCG) and under accel breaks its vhost-user-rng ring from inside: a small
//! static program (tests/guest/hostile_ring.c, built here with the host's gcc and appended to
//! the guest's initramfs) takes the device from its kernel driver and starts queue 0 with
//! EVENT_IDX and the avail ring at guest address 0. The backend must stop that queue with
//! bounded CPU and log, let QEMU stop the ring at the guest's reboot (QEMU used to hang in
//! `vhost_virtqueue_stop`), and serve the next guest normally.
//!
//! Run VM tests one at a time on this machine: `flock /tmp/vm.lock cargo test ...`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    Backend, KVM_BOOT_TIMEOUT, RunOutput, TestDir, VmCommand, guest_file, md5_hex, workspace_root,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(120);
const FILL: u8 = b'Z';
/// How long the backend is watched after the hostile guest left.
const WINDOW: Duration = Duration::from_secs(3);
/// Generous: a spinning worker burns ~100 ticks a second.
const MAX_TICKS_PER_SECOND: f64 = 20.0;
const MAX_LOG_BYTES: u64 = 64 * 1024;

/// A newc cpio archive holding one executable file at `/name`.
fn cpio_with(name: &str, data: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, name, 0o100_755, data);
    entry(&mut out, "TRAILER!!!", 0, &[]);
    out
}

/// The guest's lean initramfs plus the hostile program, built from source.
fn hostile_initrd(dir: &TestDir) -> std::path::PathBuf {
    let exe = dir.join("hostile_ring");
    let src = workspace_root().join("tests/guest/hostile_ring.c");
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}): apt-get install gcc libc6-dev"));
    assert!(
        out.status.success(),
        "gcc -static failed (needs static glibc: apt-get install libc6-dev): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut initrd = std::fs::read(guest_file("lean.cpio")).unwrap();
    while !initrd.len().is_multiple_of(4) {
        initrd.push(0);
    }
    initrd.extend(cpio_with("hostile_ring", &std::fs::read(&exe).unwrap()));
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, initrd).unwrap();
    path
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn qemu_guest_breaking_its_ring_does_not_wedge_the_backend() {
    guest_breaks_its_ring("rng-hostile-qemu", |vm| {
        vm.accel("tcg").run_qemu(QEMU_TIMEOUT)
    });
}

#[test]
fn accel_guest_breaking_its_ring_does_not_wedge_the_backend() {
    guest_breaks_its_ring("rng-hostile-accel", |vm| vm.run_accel(KVM_BOOT_TIMEOUT * 3));
}

/// The test with `run` booting the VM (QEMU or accel); see the module documentation.
fn guest_breaks_its_ring(tag: &str, run: impl Fn(VmCommand) -> RunOutput) {
    let dir = TestDir::new(tag);
    let initrd = hostile_initrd(&dir);
    let source = dir.join("source");
    std::fs::write(&source, vec![FILL; 4 << 20]).unwrap();
    let log = dir.join("rng.log");
    let backend = Backend::spawn_logged(
        "vhost-user-rng",
        &dir.join("rng.sock"),
        &["--source", source.to_str().unwrap()],
        &log,
    );
    let pid = backend.pid();
    let vm = |initrd: &Path, gcmd: &str| {
        VmCommand::new()
            .initrd(initrd)
            .device("vhost-user-rng-pci,chardev=c0")
            .chardev("c0", backend.socket())
            .gcmd(gcmd)
    };

    // Exits only if QEMU could stop the ring (GET_VRING_BASE) at the guest's reboot.
    let out = run(vm(&initrd, "/hostile_ring 1044"));
    assert!(
        out.stdout.contains("HOSTILE: queue 0 of 1044 kicked"),
        "the hostile program did not run\n{}",
        out.both()
    );
    // The guest is gone: a wedged worker would still spin. (With the spin, the VM run above
    // does not even end: the frontend hangs stopping the ring.)
    let c0 = cpu_ticks(pid);
    std::thread::sleep(WINDOW);
    let secs = WINDOW.as_secs_f64();
    let ticks = cpu_ticks(pid) - c0;
    let log_bytes = size(&log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "{tag}: backend {ticks} CPU ticks over {secs:.1} s, {log_bytes} log bytes, {} log lines",
        text.lines().count()
    );
    assert!(
        text.contains("broken ring"),
        "no broken-ring line in the backend log:\n{text}"
    );
    assert!(
        (ticks as f64) / secs <= MAX_TICKS_PER_SECOND,
        "backend used {ticks} ticks in {secs:.1} s"
    );
    assert!(log_bytes <= MAX_LOG_BYTES, "{log_bytes} log bytes");

    // The next guest gets its entropy from the same backend process.
    let len = 4096;
    let gcmd =
        format!("cat /sys/class/misc/hw_random/rng_current; head -c {len} /dev/hwrng | md5sum");
    let out = run(vm(&guest_file("lean.cpio"), &gcmd));
    let want = format!("{}  -", md5_hex(&vec![FILL; len]));
    assert!(
        out.stdout.lines().any(|l| l.trim() == want),
        "the next guest did not get the source's bytes\n{}",
        out.both()
    );
}

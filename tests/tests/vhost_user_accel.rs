//! accel's virtio-pci transport + vhost-user frontend, end to end: the test guest under accel
//! (KVM) and under QEMU 7.2 (TCG) with the same command line, against the same
//! `vhost-user-blk` backend process; guest reboot and backend restart inside one accel run;
//! the data path bypassing accel (no notify exits).
//!
//! Each KVM boot takes 15 s to minutes on this emulating host, so the tests keep boots few.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, Streaming, TestDir, VmCommand, bin, md5_hex,
    qemu, run_with_timeout, xorshift_bytes,
};

/// Small enough that the guest hashes it quickly, large enough for many requests.
const IMAGE_SIZE: usize = 1 << 20;
/// QEMU 7.2's SeaBIOS MP table lists one CPU per socket: two sockets for two vCPUs.
const SMP2: &str = "2,sockets=2";
/// Sectors the guest reads with O_DIRECT, one request each, in the no-exit check.
const DIRECT_READS: usize = IMAGE_SIZE / 512;

fn make_image(path: &Path, seed: u64) -> Vec<u8> {
    let data = xorshift_bytes(seed | 1, IMAGE_SIZE);
    std::fs::write(path, &data).expect("write image");
    data
}

fn start_backend(sock: &Path, image: &Path, log: &Path) -> Backend {
    let image = image.to_str().unwrap();
    Backend::spawn_logged("vhost-user-blk", sock, &["--image", image], log)
}

/// The command line both VMMs get (only the accelerator differs).
fn vm(sock: &Path, chardev_extra: &str, smp: &str, no_reboot: bool, gcmd: &str) -> VmCommand {
    VmCommand::new()
        .smp(smp)
        .no_reboot(no_reboot)
        .chardev_opts("c0", sock, chardev_extra)
        .device("vhost-user-blk-pci,chardev=c0,num-queues=2,queue-size=128,bootindex=1")
        .gcmd(gcmd)
}

fn value_after(out: &str, marker: &str) -> Option<String> {
    let mut lines = out.lines().map(str::trim);
    lines.find(|l| *l == marker)?;
    lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

fn stat(out: &RunOutput, name: &str) -> Option<u64> {
    out.stderr
        .lines()
        .find(|l| l.contains("vhost-user-blk0:") && l.contains("bar_accesses="))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// The guest: hash the whole disk, list the blk-mq hardware queues (a glob: no applet that
/// uses ctype: under accel a busybox applet touching ctype TLS can fault on CPU 1), write `tag` at sector
/// `sector`, then read every sector with O_DIRECT (one request per sector).
fn guest_rw(tag: &str, sector: usize) -> String {
    format!(
        "echo MD5; md5sum /dev/vda; echo NRQ; echo /sys/block/vda/mq/*; \
         echo {tag} | dd of=/dev/vda bs=512 seek={sector} conv=notrunc,fsync 2>/dev/null; \
         dd if=/dev/vda of=/dev/null bs=512 count={DIRECT_READS} iflag=direct 2>/dev/null; \
         echo DIRECT; echo done; sync"
    )
}

fn check_rw_run(who: &str, out: &RunOutput, image: &Path, before: &[u8], tag: &str, sector: usize) {
    assert_eq!(
        out.guest_rc(),
        Some(0),
        "{who}: guest command failed\n{}",
        out.both()
    );
    assert_eq!(
        value_after(&out.stdout, "MD5").as_deref(),
        Some(md5_hex(before).as_str()),
        "{who}: guest read different bytes\n{}",
        out.both()
    );
    let queues = out
        .stdout
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "NRQ")
        .nth(1)
        .unwrap_or_default();
    assert_eq!(
        queues,
        "/sys/block/vda/mq/0 /sys/block/vda/mq/1",
        "{who}: num-queues=2 must give the guest 2 queues\n{}",
        out.both()
    );
    assert_eq!(value_after(&out.stdout, "DIRECT").as_deref(), Some("done"));
    let after = std::fs::read(image).unwrap();
    let at = sector * 512;
    assert_eq!(
        &after[at..at + tag.len() + 1],
        format!("{tag}\n").as_bytes(),
        "{who}: the guest's write did not land in the image"
    );
    // Nothing else changed.
    assert_eq!(&after[..at], &before[..at]);
    assert_eq!(&after[at + 512..], &before[at + 512..]);
}

/// Same command line under QEMU 7.2 TCG and under accel, same backend process: both read the
/// image correctly (md5), both see 2 queues, both writes land in the file. The accel run also
/// proves the data path bypasses accel: hundreds of requests, zero notify exits.
#[test]
fn same_command_line_under_qemu_tcg_and_accel() {
    let dir = TestDir::new("vu-accel-rw");
    let image = dir.join("disk.img");
    let sock = dir.join("blk.sock");
    let mut before = make_image(&image, 0x5eed_1234);
    let _backend = start_backend(&sock, &image, &dir.join("backend.log"));

    let qemu_args = vm(&sock, "", SMP2, true, &guest_rw("written-by-qemu", 1000))
        .accel("tcg")
        .args();
    let out = run_with_timeout(
        Command::new(qemu()).args(&qemu_args),
        Duration::from_secs(300),
    );
    check_rw_run("qemu", &out, &image, &before, "written-by-qemu", 1000);

    before = std::fs::read(&image).unwrap();
    let accel_args = vm(&sock, "", SMP2, true, &guest_rw("written-by-accel", 1001))
        .accel("kvm")
        .vmm_arg("--timing")
        .args();
    let out = run_with_timeout(
        Command::new(bin("accel")).args(&accel_args),
        KVM_BOOT_TIMEOUT * 4,
    );
    check_rw_run("accel", &out, &image, &before, "written-by-accel", 1001);
    assert_eq!(out.code(), Some(0), "{}", out.both());

    // The data path: every request was kicked through an ioeventfd and completed through an
    // irqfd. Only configuration accesses (probe, MSI-X setup) reached accel, far fewer than
    // the requests the guest made.
    for l in out.stderr.lines().filter(|l| l.contains("exits")) {
        eprintln!("{l}");
    }
    let mmio_exits: u64 = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("accel: vcpu exits: "))
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("mmio=")))
        .and_then(|v| v.parse().ok())
        .expect("vcpu exit counters on stderr");
    assert!(
        (mmio_exits as usize) < DIRECT_READS / 2,
        "{mmio_exits} MMIO exits for {DIRECT_READS} requests\n{}",
        out.both()
    );
    let notify = stat(&out, "notify_exits").expect("stats line on stderr");
    let bar = stat(&out, "bar_accesses").expect("stats line on stderr");
    assert_eq!(notify, 0, "{}", out.both());
    assert!(
        bar > 0,
        "the guest must have probed the device\n{}",
        out.both()
    );
    assert!(
        (bar as usize) < DIRECT_READS / 2,
        "{bar} BAR accesses for {DIRECT_READS} requests: the data path exits\n{}",
        out.both()
    );
}

/// One accel run (with reboots allowed, `reconnect=1`, one vCPU to keep this long test's
/// boots as short as possible): boot 1 reads the disk, the test kills
/// the backend and starts a new one, the guest's next I/O completes with the right bytes;
/// the guest then reboots (same accel process) and the device works in boot 2.
#[test]
fn backend_restart_and_guest_reboot_in_one_accel_run() {
    let dir = TestDir::new("vu-accel-restart");
    let image = dir.join("disk.img");
    let sock = dir.join("blk.sock");
    let log = dir.join("backend.log");
    let data = make_image(&image, 0xfeed_beef);
    let whole = md5_hex(&data);
    let head = md5_hex(&data[..64 << 10]);
    let backend = start_backend(&sock, &image, &log);

    // The guest waits long enough for the test to replace the backend, then drops its page
    // cache and reads the first 64 KiB again with O_DIRECT (requests the new backend serves).
    let gcmd = "echo MD5; md5sum /dev/vda; echo RESTART-BACKEND-NOW; sleep 10; \
                echo 3 > /proc/sys/vm/drop_caches; echo HEAD; \
                dd if=/dev/vda bs=4096 count=16 iflag=direct 2>/dev/null | md5sum";
    let args = vm(&sock, ",reconnect=1", "1", false, gcmd)
        .accel("kvm")
        .args();
    let mut vm = Streaming::spawn(Command::new(bin("accel")).args(&args));

    let boot = KVM_BOOT_TIMEOUT * 3;
    vm.expect("MD5", boot);
    let md5 = vm.expect("/dev/vda", Duration::from_secs(120));
    assert!(
        md5.starts_with(&whole),
        "boot 1 read: {md5}\n{}",
        vm.seen.join("\n")
    );
    vm.expect("RESTART-BACKEND-NOW", Duration::from_secs(60));
    drop(backend);
    std::thread::sleep(Duration::from_millis(300));
    let _backend2 = start_backend(&sock, &image, &log);
    vm.expect("HEAD", Duration::from_secs(120));
    let line = vm.expect("  -", Duration::from_secs(120));
    assert!(
        line.starts_with(&head),
        "I/O after backend restart: {line}\n{}",
        vm.seen.join("\n")
    );
    vm.expect("GUEST CMD RC: 0", Duration::from_secs(60));

    // Boot 2 in the same process.
    vm.expect("GUEST UP", boot);
    vm.expect("MD5", Duration::from_secs(120));
    let line = vm.expect("/dev/vda", Duration::from_secs(120));
    assert!(
        line.starts_with(&whole),
        "read after reboot: {line}\n{}",
        vm.seen.join("\n")
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = vm.child.0.wait().unwrap();
    assert!(
        status.success(),
        "accel exit: {status:?}\n{}",
        vm.seen.join("\n")
    );
}

/// A missing backend is a clean start-up error that names the socket.
#[test]
fn missing_backend_is_an_error_naming_the_socket() {
    let dir = TestDir::new("vu-accel-missing");
    let sock: PathBuf = dir.join("nobody-listens.sock");
    let args = vm(&sock, "", "1", true, "").accel("kvm").args();
    let out = run_with_timeout(
        Command::new(bin("accel")).args(&args),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.both());
    assert!(
        out.stderr.contains(&sock.display().to_string()),
        "{}",
        out.both()
    );
    assert!(!out.stdout.contains("GUEST UP"));
}

/// Without `reconnect=`, a backend that dies while the guest runs leaves accel up: the device
/// reports NEEDS_RESET (status bit 0x40, read live by the guest through sysfs) and the guest
/// keeps running to a clean shutdown.
#[test]
fn backend_death_marks_device_needs_reset() {
    let dir = TestDir::new("vu-accel-death");
    let image = dir.join("disk.img");
    let sock = dir.join("blk.sock");
    make_image(&image, 0xdead_0001);
    let backend = start_backend(&sock, &image, &dir.join("backend.log"));
    let gcmd = "echo KILL-BACKEND-NOW; sleep 6; echo STATUS; \
                cat /sys/bus/virtio/devices/virtio0/status";
    let args = vm(&sock, "", "1", true, gcmd).accel("kvm").args();
    let mut vm = Streaming::spawn(Command::new(bin("accel")).args(&args));
    vm.expect("KILL-BACKEND-NOW", KVM_BOOT_TIMEOUT * 3);
    drop(backend);
    vm.expect("STATUS", Duration::from_secs(60));
    let status = vm.expect("0x", Duration::from_secs(60));
    let value = u32::from_str_radix(status.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    assert_eq!(
        value & 0x4f,
        0x4f,
        "DRIVER_OK|FEATURES_OK|NEEDS_RESET expected: {status}\n{}",
        vm.seen.join("\n")
    );
    vm.expect("GUEST CMD RC: 0", Duration::from_secs(60));
    let status = vm.child.0.wait().unwrap();
    vm.drain(Duration::from_secs(2));
    let out = vm.seen.join("\n");
    assert!(status.success(), "accel exit: {status:?}\n{out}");
    assert!(out.contains("needs reset"), "{out}");
    assert!(out.contains(&sock.display().to_string()), "{out}");
}

/// blk, rng, console and vsock backends behind one accel guest: each gets its virtio id, the
/// guest reads entropy from the rng backend and its hvc0 output reaches the console backend.
#[test]
fn rng_console_vsock_kinds() {
    let dir = TestDir::new("vu-accel-kinds");
    let image = dir.join("disk.img");
    make_image(&image, 7);
    let hvc_out = dir.join("hvc.out");
    let socks: Vec<PathBuf> = ["blk", "rng", "con", "vsock"]
        .iter()
        .map(|n| dir.join(&format!("{n}.sock")))
        .collect();
    let image_s = image.display().to_string();
    let hvc_s = hvc_out.display().to_string();
    let uds = dir.join("vsock.uds").display().to_string();
    let _daemons = [
        Backend::spawn_logged(
            "vhost-user-blk",
            &socks[0],
            &["--image", &image_s],
            &dir.join("b.log"),
        ),
        Backend::spawn_logged(
            "vhost-user-rng",
            &socks[1],
            &[] as &[&str],
            &dir.join("r.log"),
        ),
        Backend::spawn_logged(
            "vhost-user-console",
            &socks[2],
            &["--output", &hvc_s],
            &dir.join("c.log"),
        ),
        Backend::spawn_logged(
            "vhost-user-vsock",
            &socks[3],
            &["--guest-cid", "5", "--uds-path", &uds],
            &dir.join("v.log"),
        ),
    ];
    let gcmd = "echo IDS; cat /sys/bus/virtio/devices/virtio0/device \
                /sys/bus/virtio/devices/virtio1/device /sys/bus/virtio/devices/virtio2/device \
                /sys/bus/virtio/devices/virtio3/device; echo RNG; \
                head -c 64 /dev/hwrng | wc -c; echo hello-from-hvc0 > /dev/hvc0";
    let kinds = [
        "vhost-user-blk-pci",
        "vhost-user-rng-pci",
        "vhost-user-console-pci",
        "vhost-user-vsock-pci",
    ];
    let mut vm = VmCommand::new().accel("kvm").gcmd(gcmd);
    for (i, (sock, kind)) in socks.iter().zip(kinds).enumerate() {
        vm = vm
            .chardev(&format!("c{i}"), sock)
            .device(&format!("{kind},chardev=c{i}"));
    }
    let out = run_with_timeout(
        Command::new(bin("accel")).args(vm.args()),
        KVM_BOOT_TIMEOUT * 3,
    );
    assert_eq!(out.guest_rc(), Some(0), "{}", out.both());
    let ids: Vec<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "IDS")
        .skip(1)
        .take(4)
        .collect();
    assert_eq!(
        ids,
        ["0x0002", "0x0004", "0x0003", "0x0013"],
        "{}",
        out.both()
    );
    assert_eq!(
        value_after(&out.stdout, "RNG").as_deref(),
        Some("64"),
        "{}",
        out.both()
    );
    let hvc = std::fs::read_to_string(&hvc_out).unwrap_or_default();
    assert!(
        hvc.contains("hello-from-hvc0"),
        "console backend got {hvc:?}"
    );
}

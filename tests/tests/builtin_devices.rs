//! QEMU's built-in device spellings under accel, served by backends accel starts itself: one
//! boot (plain `-m`, no shared-memory object) with
//! - `-drive file=..,if=virtio,format=raw` (the guest writes, the host checks the image),
//! - `-blockdev driver=file` + `-device virtio-blk-pci,drive=` (the guest reads bytes the host
//!   wrote),
//! - `-object rng-random` + `virtio-rng-pci` (the guest reads /dev/hwrng),
//! - `vhost-vsock-pci,guest-cid=` (the guest connects to a host unix socket),
//! - `virtio-serial-pci` + `virtconsole` on `-chardev file` (the guest writes /dev/hvc0),
//! - `-netdev tap,fd=N` with an fd the test opened, as libvirt passes it (guest frames
//!   reach the host tap),
//!
//! then a SIGKILL of the `-drive` disk's backend: accel restarts it, the guest's writes and reads after that
//! complete, and every backend is gone once accel exits.
//!
//! accel runs with its default confinement (no `-sandbox` option: seccomp, no_new_privs): the
//! backends are children of its launcher process (`accel-launcher`), which restarts the
//! killed one, not of accel, which cannot fork.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{
    GUEST_CMDLINE, KVM_BOOT_TIMEOUT, Streaming, Tap, TestDir, bin, guest_file, guest_tools_initrd,
    proc_stat,
};

const GUEST_CID: u32 = 7;
const HOST_PORT: u32 = 6000;
const BLOCKDEV_BYTES: &str = "HELLO-DISK-TWO";

/// The guest (kernel command line: no double quotes). As in QEMU, the `-device` disk comes
/// first on the bus and the `-drive if=virtio` one after it: /dev/vda is the `-blockdev`
/// image (read-only, BLOCKDEV_BYTES at its start), /dev/vdb the `-drive` image.
const GUEST: &str = "echo GUEST-WROTE-DRIVE | dd of=/dev/vdb conv=notrunc 2>/dev/null; sync; \
echo BLOCKDEV=$(head -c 14 /dev/vda); \
echo RNG=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c); \
echo HVC-HELLO-FROM-GUEST > /dev/hvc0; \
vsock-tool connect 2 6000 hello-from-guest; \
ip link set eth0 up; udhcpc -i eth0 -n -q -t 2 -T 1 >/dev/null 2>&1; \
echo KILL-ME; sleep 4; \
echo SECOND-WRITE-AFTER-RESTART | dd of=/dev/vdb bs=512 seek=8 conv=notrunc 2>/dev/null; sync; \
echo READ=$(dd if=/dev/vdb bs=4096 skip=100 count=1 iflag=direct 2>/dev/null | wc -c); \
echo END";

/// Opens a queue of `tap` as libvirt does for `-netdev tap,fd=N`: IFF_VNET_HDR, inheritable.
fn open_tap_fd(name: &str) -> OwnedFd {
    let path = CString::new("/dev/net/tun").unwrap();
    // SAFETY: open(2) with a valid C string; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE)
        as libc::c_short;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte struct ifreq, which `req` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

fn tap_rx_packets(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_packets"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The pid in accel's `LABEL: served by PROGRAM (pid N)` lines for `label`, in order.
fn served_pids(output: &str, label: &str) -> Vec<u32> {
    output
        .lines()
        .filter(|l| l.contains(label) && l.contains("served by"))
        .filter_map(|l| l.rsplit("(pid ").next()?.strip_suffix(')')?.parse().ok())
        .collect()
}

/// A field of /proc/PID/status (`Seccomp`, `PPid`, ...).
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.comm.starts_with("vhost-user-"))
}

/// Host port 6000 (`<uds>_6000`): reads what the guest sends, answers.
fn serve_host_port(uds: &std::path::Path) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + KVM_BOOT_TIMEOUT * 4;
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                let _ = s.write_all(b"hello-from-host");
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::new()
    })
}

#[test]
fn accel_serves_builtin_spellings_and_restarts_a_killed_backend() {
    let dir = TestDir::new("builtin-devices");
    let drive_img = dir.join("drive_img.img");
    let blockdev_img = dir.join("blockdev_img.img");
    std::fs::write(&drive_img, vec![0u8; 1 << 20]).unwrap();
    let mut b = BLOCKDEV_BYTES.as_bytes().to_vec();
    b.resize(1 << 20, 0);
    std::fs::write(&blockdev_img, b).unwrap();
    let console = dir.join("console.txt");
    let uds = dir.join("vsock");
    let host_port = serve_host_port(&uds);
    let tap = Tap::create(11, 211);
    let tap_fd = open_tap_fd(&tap.name);
    let rx_before = tap_rx_packets(&tap.name);
    let initrd = guest_tools_initrd(dir.path(), &guest_file("lean.cpio"));
    let fd = tap_fd.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on the test's own fd so accel inherits it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };

    let args: Vec<String> = [
        "-accel",
        "kvm",
        "-m",
        "128",
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,cache=writeback",
            drive_img.display()
        ),
        "-blockdev",
        &format!(
            "driver=file,filename={},node-name=disk2,read-only=on",
            blockdev_img.display()
        ),
        "-device",
        "virtio-blk-pci,drive=disk2",
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-device",
        &format!(
            "vhost-vsock-pci,guest-cid={GUEST_CID},uds-path={}",
            uds.display()
        ),
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!("file,id=con0,path={}", console.display()),
        "-device",
        "virtconsole,chardev=con0,bus=vser0.0",
        "-netdev",
        &format!("tap,id=net0,fd={fd},script=no,downscript=no,vhost=on"),
        "-device",
        "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:77",
        "-kernel",
        &guest_file("vmlinux").display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        &format!("{GUEST_CMDLINE} gcmd=\"{GUEST}\""),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = Streaming::spawn(
        Command::new(bin("accel"))
            .args(&args)
            .env("RUST_LOG", "warn,accel=info"),
    );
    drop(tap_fd);
    let drive_label = format!("-drive file={}", drive_img.display());

    // A boot plus a dozen guest commands (udhcpc among them): in CI, with the other lane's VM
    // on the second core, the boot alone took 83 s and KILL-ME missed a 120 s deadline.
    vm.expect_start("KILL-ME", KVM_BOOT_TIMEOUT * 4);
    let pids = served_pids(&vm.output(), &drive_label);
    assert_eq!(pids.len(), 1, "{}", vm.output());
    let all_pids: Vec<u32> = served_pids(&vm.output(), ": ");
    assert_eq!(all_pids.len(), 6, "six backends\n{}", vm.output());
    // accel is confined by default; the backends' parent is the launcher, accel's child.
    let accel = vm.child.0.id();
    assert_eq!(status_field(accel, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(accel, "NoNewPrivs").as_deref(), Some("1"));
    let launcher: u32 = status_field(pids[0], "PPid").unwrap().parse().unwrap();
    assert_eq!(comm(launcher), "accel-launcher");
    assert_eq!(
        status_field(launcher, "PPid").as_deref(),
        Some(accel.to_string().as_str())
    );
    for p in &all_pids {
        assert_eq!(status_field(*p, "PPid"), Some(launcher.to_string()), "{p}");
    }
    let status = Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    vm.expect_start("END", KVM_BOOT_TIMEOUT);
    vm.drain(Duration::from_secs(60));
    let status = vm.terminate();
    let out = vm.output();

    // The killed backend was restarted (a second pid) and I/O after it completed.
    let pids = served_pids(&out, &drive_label);
    assert_eq!(pids.len(), 2, "restarted once\n{out}");
    assert_ne!(pids[0], pids[1]);
    assert!(out.contains("killed by signal 9; restarting"), "{out}");
    assert!(out.contains("READ=4096"), "{out}");
    assert!(status.success(), "accel exit status {status:?}\n{out}");
    let image = std::fs::read(&drive_img).unwrap();
    assert!(image.starts_with(b"GUEST-WROTE-DRIVE\n"), "{out}");
    assert!(
        image[4096..].starts_with(b"SECOND-WRITE-AFTER-RESTART\n"),
        "{out}"
    );
    // The other devices.
    assert!(out.contains(&format!("BLOCKDEV={BLOCKDEV_BYTES}")), "{out}");
    assert!(out.contains("RNG=64"), "{out}");
    assert!(out.contains("REPLY: hello-from-host"), "{out}");
    assert_eq!(host_port.join().unwrap(), "hello-from-guest");
    let hvc = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        hvc.contains("HVC-HELLO-FROM-GUEST"),
        "console: {hvc:?}\n{out}"
    );
    let rx = tap_rx_packets(&tap.name) - rx_before;
    assert!(rx >= 2, "guest DHCP frames on the host tap: {rx}\n{out}");
    // Every backend ended with accel.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all: Vec<u32> = served_pids(&out, ": ");
    all.dedup();
    while all.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        all.iter().all(|&p| !alive(p)),
        "backends left after accel exited: {all:?}"
    );
    assert_ne!(
        comm(launcher),
        "accel-launcher",
        "the launcher outlived accel"
    );
}

//! vhost-user-vsock with a real guest: the guest's kernel vsock driver talks to the backend
//! process, and host programs talk to the guest through the backend's unix sockets (hybrid
//! vsock). Under QEMU 7.2 TCG (`-device vhost-user-vsock-pci`) and under accel on KVM, the
//! same run: the guest connects to host CID 2 port 6000 (`<uds>_6000`) and gets a reply, and
//! a host client connects to guest port 5000 (`CONNECT 5000`) and gets a reply.
//!
//! The test guest has no vsock tools: `scripts/guest-tools/build.sh` builds a static
//! `vsock-tool` and appends it to lean.cpio as a second cpio archive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, TestDir, VmCommand, guest_file,
    guest_tools_initrd,
};

const GUEST_CID: u32 = 3;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 6000;

/// lean.cpio followed by an archive with /bin/vsock-tool.
fn build_initrd(dir: &TestDir) -> PathBuf {
    guest_tools_initrd(dir.path(), &guest_file("lean.cpio"))
}

/// The backend and its host-side socket (`--uds-path`).
fn start_backend(dir: &TestDir) -> (Backend, PathBuf) {
    let uds = dir.join("v.sock");
    let cid = GUEST_CID.to_string();
    let backend = Backend::spawn_logged(
        "vhost-user-vsock",
        &dir.join("vu.sock"),
        &["--guest-cid", &cid, "--uds-path", uds.to_str().unwrap()],
        &dir.join("backend.log"),
    );
    (backend, uds)
}

/// What the host side saw.
#[derive(Debug, Default)]
struct HostSide {
    /// What the guest sent to host port 6000.
    from_guest: String,
    /// The `OK <port>` line of the host → guest handshake.
    handshake: String,
    /// The guest's reply to the host's `ping`.
    reply: String,
}

/// Serves host port 6000 once (reads to EOF, answers `hello-from-host`) and connects to guest
/// port 5000 (retrying until the guest listens), sends `ping`, reads the reply.
fn host_side(uds: &Path, deadline: Duration) -> JoinHandle<HostSide> {
    let uds = uds.to_path_buf();
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + deadline;
        let mut seen = HostSide::default();
        let mut served = false;
        let mut connected = false;
        while Instant::now() < end && !(served && connected) {
            if !served && let Ok((mut c, _)) = listener.accept() {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut data = String::new();
                let _ = c.read_to_string(&mut data);
                seen.from_guest = data;
                let _ = c.write_all(b"hello-from-host");
                served = true;
            }
            if !connected && let Ok(s) = UnixStream::connect(&uds) {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let mut w = s;
                if w.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
                    .is_ok()
                    && r.read_line(&mut line).is_ok()
                    && line.starts_with("OK ")
                {
                    seen.handshake = line.trim().to_string();
                    let _ = w.write_all(b"ping");
                    let _ = w.shutdown(Shutdown::Write);
                    let _ = r.read_to_string(&mut seen.reply);
                    connected = true;
                }
                // Otherwise the guest is not listening yet (RST: closed without OK).
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

/// `smp`: accel runs the guest on one vCPU (with two, a guest process's TLS access can fault
/// under this machine's kvm_pvm, see tests/tests/vhost_user_accel.rs).
fn vm(sock: &Path, initrd: &Path, smp: &str) -> VmCommand {
    let gcmd = format!(
        "vsock-tool listen {GUEST_PORT} & vsock-tool connect 2 {HOST_PORT} hello-from-guest; wait"
    );
    VmCommand::new()
        .smp(smp)
        .chardev("c0", sock)
        .device("vhost-user-vsock-pci,chardev=c0")
        .initrd(initrd)
        .gcmd(&gcmd)
}

fn check(who: &str, out: &RunOutput, host: &HostSide, dir: &TestDir) {
    let log = std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default();
    let ctx = format!(
        "{who}\n{}\n--- backend ---\n{log}\n--- host ---\n{host:?}",
        out.both()
    );
    assert!(out.stdout.contains("GUEST UP"), "{ctx}");
    assert!(
        out.stdout.contains("REPLY: hello-from-host"),
        "guest → host round trip: {ctx}"
    );
    assert!(out.stdout.contains("SERVED: ping"), "host → guest: {ctx}");
    assert_eq!(out.guest_rc(), Some(0), "{ctx}");
    assert_eq!(host.from_guest, "hello-from-guest", "{ctx}");
    assert_eq!(host.reply, "pong:ping", "{ctx}");
    let port: u32 = host
        .handshake
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("handshake line: {ctx}"));
    assert!(port >= 1024, "{ctx}");
}

#[test]
fn guest_round_trips_under_qemu_tcg() {
    let dir = TestDir::new("vsock-qemu");
    let initrd = build_initrd(&dir);
    let (backend, uds) = start_backend(&dir);
    let host = host_side(&uds, Duration::from_secs(60));
    let out = vm(backend.socket(), &initrd, "2,sockets=2")
        .accel("tcg")
        .run_qemu(Duration::from_secs(90));
    let host = host.join().unwrap();
    check("qemu", &out, &host, &dir);
}

#[test]
fn guest_round_trips_under_accel_kvm() {
    let dir = TestDir::new("vsock-accel");
    let initrd = build_initrd(&dir);
    let (backend, uds) = start_backend(&dir);
    let host = host_side(&uds, KVM_BOOT_TIMEOUT * 4);
    let out = vm(backend.socket(), &initrd, "1")
        .accel("kvm")
        .run_accel(KVM_BOOT_TIMEOUT * 4);
    let host = host.join().unwrap();
    check("accel", &out, &host, &dir);
    assert_eq!(out.code(), Some(0), "{}", out.both());
}

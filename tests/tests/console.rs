//! vhost-user-console end to end under accel (KVM); QEMU 7.2 has no frontend for it (no
//! vhost-user-console-pci, no generic vhost-user-device-pci).
//!
//! - `vhost-user-console-pci` with `--socket P`: the guest writes a line to /dev/hvc0 and the
//!   socket's client sees it; the client answers a line and the guest reads it from hvc0 and
//!   echoes it to the serial console.
//! - `vhost-user-device-pci,virtio-id=3,num_vqs=2` with `--output FILE`: what the guest writes
//!   to /dev/hvc0 lands in the file.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use integration_tests::{Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, TestDir, VmCommand};

fn start_backend(dir: &TestDir, endpoint: &[&str]) -> Backend {
    Backend::spawn("vhost-user-console", &dir.join("console.sock"), endpoint)
}

/// accel with the console backend as `device` (on chardev `c0`), the guest running `gcmd`.
fn run_accel(backend: &Backend, device: &str, gcmd: &str, timeout: Duration) -> RunOutput {
    VmCommand::new()
        .device(device)
        .chardev("c0", backend.socket())
        .gcmd(gcmd)
        .run_accel(timeout)
}

#[test]
fn accel_hvc0_both_ways_through_the_console_socket() {
    let dir = TestDir::new("console-accel");
    let p = dir.join("p.sock");
    let backend = start_backend(&dir, &["--socket", p.to_str().unwrap()]);
    // The socket's client: wait for the guest's line, answer one, collect everything.
    let mut client = UnixStream::connect(&p).expect("console socket");
    let (tx, rx) = channel();
    let deadline = KVM_BOOT_TIMEOUT * 3;
    std::thread::spawn(move || {
        let _ = client.set_read_timeout(Some(Duration::from_secs(1)));
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut answered = false;
        let mut buf = [0u8; 4096];
        while start.elapsed() < deadline {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if !answered && seen.windows(11).any(|w| w == b"guest-ready") {
                answered = client.write_all(b"hello-from-host\n").is_ok();
            }
            if answered && seen.windows(15).any(|w| w == b"hello-from-host") {
                // The tty echoed the answer: the guest has it.
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let gcmd = "exec 3<>/dev/hvc0; echo guest-ready >&3; read -r line <&3; echo got-line: $line";
    let out = run_accel(
        &backend,
        "vhost-user-console-pci,chardev=c0",
        gcmd,
        deadline,
    );
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("console client");
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("guest-ready"),
        "the client did not get the guest's output: {seen:?}\n{}",
        out.both()
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.trim() == "got-line: hello-from-host"),
        "the guest did not read the client's line\n{}",
        out.both()
    );
    assert_eq!(out.guest_rc(), Some(0), "{}", out.both());
}

#[test]
fn accel_generic_device_output_to_a_file() {
    let dir = TestDir::new("console-accel-file");
    let file = dir.join("out.txt");
    let backend = start_backend(&dir, &["--output", file.to_str().unwrap()]);
    let out = run_accel(
        &backend,
        "vhost-user-device-pci,chardev=c0,virtio-id=3,num_vqs=2,config_size=12",
        "echo console-file-marker > /dev/hvc0",
        KVM_BOOT_TIMEOUT * 3,
    );
    assert_eq!(out.guest_rc(), Some(0), "{}", out.both());
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        text.contains("console-file-marker"),
        "not in the output file: {text:?}\n{}",
        out.both()
    );
}

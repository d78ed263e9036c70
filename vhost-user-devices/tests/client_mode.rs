//! `--client`: a backend connects to a frontend that listens (QEMU's and accel's `-chardev
//! socket,...,server=on`; OVS-DPDK's `dpdkvhostuserclient`), waits while nobody listens, and
//! connects again after the frontend dropped it; confined as in listen mode; SIGTERM leaves
//! the frontend's socket file alone.

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vhost::VhostBackend;
use vhost::vhost_user::Frontend;

mod common;
use common::{KillOnDrop, TIMEOUT, TestDir};

const EXE: &str = env!("CARGO_BIN_EXE_vhost-user-rng");
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Accepts one connection within `timeout` (the listener is non-blocking).
fn accept_within(listener: &UnixListener, timeout: Duration) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the backend did not connect");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A frontend handshake on an accepted connection: the backend's virtio features.
fn handshake(stream: UnixStream) -> (Frontend, u64) {
    let f = Frontend::from_stream(stream, 1);
    f.set_owner().expect("set_owner");
    let features = f.get_features().expect("get_features");
    f.set_features(features).expect("set_features");
    (f, features)
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn connects_to_a_listening_frontend_and_again_after_it_hung_up() {
    let dir = TestDir::new("client-mode");
    let sock = dir.join("frontend.sock");
    // The backend starts first: nobody listens yet, so it retries.
    let mut backend =
        KillOnDrop::spawn_quiet(EXE, &["--socket-path", sock.to_str().unwrap(), "--client"]);
    std::thread::sleep(Duration::from_millis(300));
    let listener = UnixListener::bind(&sock).unwrap();

    let (first, features) = handshake(accept_within(&listener, TIMEOUT * 2));
    assert_ne!(features & VIRTIO_F_VERSION_1, 0, "features {features:#x}");
    assert_eq!(status_field(backend.pid(), "Seccomp:"), "2");
    assert_eq!(status_field(backend.pid(), "NoNewPrivs:"), "1");

    // The frontend drops the connection (a QEMU restart, a device reset): the backend comes
    // back and a second session works.
    drop(first);
    let (_second, again) = handshake(accept_within(&listener, TIMEOUT * 2));
    assert_eq!(again, features);

    // SIGTERM: exit 0, and the frontend's socket stays (it is not the backend's to remove).
    let status = backend.signal_and_wait(Signal::SIGTERM, TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(sock.exists(), "the backend removed the frontend's socket");
}

#[test]
fn client_needs_a_socket_path() {
    let out = common::run(EXE, &["--client", "--fd", "3"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

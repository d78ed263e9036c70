//! Helpers the backend process and socket tests share on top of [`vu_testkit::support`]:
//! running a backend program, its capabilities, waiting for its socket, an in-process vsock
//! device.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

#[allow(unused_imports)]
pub use vu_testkit::support::{KillOnDrop, TestDir, wait_exit};

/// How long a backend gets to create its socket or to exit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `exe args` to completion (stdin on /dev/null), capturing stdout and stderr.
pub fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `--print-capabilities` of `exe`, parsed; asserts the program succeeded.
pub fn capabilities(exe: &str) -> serde_json::Value {
    let out = run(exe, &["--print-capabilities"]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits up to [`TIMEOUT`] until `path` exists (the backend listens).
pub fn wait_for(path: &Path) {
    vu_testkit::support::expect_path(path, TIMEOUT);
}

/// An in-process vhost-user-vsock device (guest CID [`VSOCK_CID`]) serving `connections`
/// frontends, one after the other, on `sock`; host programs reach it through `uds`.
pub struct VsockSetup {
    /// Removed with the setup.
    _dir: TestDir,
    pub sock: PathBuf,
    pub uds: PathBuf,
}

/// The guest CID of [`VsockSetup`]'s device.
pub const VSOCK_CID: u64 = 5;

impl VsockSetup {
    pub fn start(tag: &str, connections: usize, half_open_timeout: Duration) -> Self {
        use vhost_user_devices::vsock::{Config, VsockDevice};
        let dir = TestDir::new(&format!("vuv-sock-{tag}"));
        let sock = dir.join("s");
        let uds = dir.join("v");
        let device = VsockDevice::open(&Config {
            guest_cid: VSOCK_CID,
            uds_path: uds.clone(),
            queue_size: 256,
            half_open_timeout,
        })
        .unwrap();
        let mut listener = vhost::vhost_user::Listener::new(&sock, true).unwrap();
        std::thread::spawn(move || vu_daemon::serve(&device, &mut listener, Some(connections)));
        VsockSetup {
            _dir: dir,
            sock,
            uds,
        }
    }

    /// The host listener guest connections to `port` reach.
    pub fn host_listener(&self, port: u32) -> std::os::unix::net::UnixListener {
        std::os::unix::net::UnixListener::bind(format!("{}_{port}", self.uds.display())).unwrap()
    }
}

//! Helpers the backend process and socket tests share: scratch directories, spawning a
//! backend program, waiting for its socket and for its exit.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a backend gets to create its socket or to exit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory `$TMP/<prefix>-<tag>-<pid>`, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str, tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{prefix}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend process, killed and reaped on drop.
pub struct Backend(pub Child);

impl Backend {
    /// Starts `exe args` with stdin, stdout and stderr on /dev/null.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(exe: &str, args: &[S]) -> Self {
        Backend(
            Command::new(exe)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Sends `sig` and waits up to [`TIMEOUT`] for the exit; `None` if it did not exit.
    pub fn signal_and_wait(&mut self, sig: Signal) -> Option<ExitStatus> {
        kill(Pid::from_raw(self.0.id() as i32), sig).unwrap();
        wait_exit(&mut self.0, TIMEOUT)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An in-process vhost-user-vsock device (guest CID [`VSOCK_CID`]) serving `connections`
/// frontends, one after the other, on `sock`; host programs reach it through `uds`.
pub struct VsockSetup {
    /// Removed with the setup.
    _dir: Scratch,
    pub sock: PathBuf,
    pub uds: PathBuf,
}

/// The guest CID of [`VsockSetup`]'s device.
pub const VSOCK_CID: u64 = 5;

impl VsockSetup {
    pub fn start(tag: &str, connections: usize, half_open_timeout: Duration) -> Self {
        use vhost_user_devices::vsock::{Config, VsockDevice};
        let dir = Scratch::new("vuv-sock", tag);
        let sock = dir.path("s");
        let uds = dir.path("v");
        let device = VsockDevice::open(&Config {
            guest_cid: VSOCK_CID,
            uds_path: uds.clone(),
            queue_size: 256,
            half_open_timeout,
        })
        .unwrap();
        let mut listener = vhost::vhost_user::Listener::new(&sock, true).unwrap();
        std::thread::spawn(move || {
            vu_daemon::serve(&device, &mut listener, Some(connections))
        });
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

//! Helpers shared by the integration tests: locating the workspace's binaries and the test
//! guest, running VMs and backends with a deadline, and collecting what they printed.
//!
//! The binaries are the ones `cargo build --workspace --bins` produced (`scripts/test.sh` builds
//! them before running the tests). The guest comes from `$ACCEL_GUEST_DIR`, `../shared/guest`
//! next to the checkout, or the cache `scripts/guest.sh` builds into.

mod backend;
mod streaming;
mod tap;
mod vm;

pub use backend::{BACKEND_SOCKET_TIMEOUT, Backend, md5_hex, xorshift_bytes};
pub use streaming::Streaming;
pub use tap::{Tap, byte_sink};
pub use vm::VmCommand;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Kernel command-line options every test guest gets: what this machine's `kvm_pvm` needs
/// (harmless under TCG and on real KVM), see ../shared/guest/README.md.
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=k quiet noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm";

/// Generous deadline for one KVM boot of the test guest on this (emulating) host.
pub const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo put the workspace's binaries for this profile.
fn bin_dir() -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Path of a workspace binary (`accel`, `vhost-user-blk`, ...). Panics with the fix if it was not
/// built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` (scripts/test.sh does) first",
        p.display()
    );
    p
}

/// The test guest directory (vmlinux, bzImage, initramfs.cpio, lean.cpio).
///
/// `$ACCEL_GUEST_DIR` is used as given (scripts/test.sh sets it from scripts/guest.sh, which
/// checked it; a developer pointing it at a hand-built guest gets that guest). Without it,
/// `scripts/guest.sh --find` chooses with the same rule as the scripts: `../shared/guest` or
/// the cache, only if its `recipe.sha256` stamp matches this checkout's `scripts/guest/`, so a
/// guest from an older recipe (e.g. without ACPI) is never picked up silently.
pub fn guest_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("ACCEL_GUEST_DIR") {
            let d = PathBuf::from(d);
            return d.canonicalize().unwrap_or(d);
        }
        let script = workspace_root().join("scripts/guest.sh");
        let out = Command::new(&script)
            .arg("--find")
            .output()
            .unwrap_or_else(|e| panic!("running {} --find: {e}", script.display()));
        assert!(
            out.status.success(),
            "no test guest built from this checkout's recipe: run scripts/guest.sh (builds one, \
             about 5 minutes) or set ACCEL_GUEST_DIR\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A guest file (`vmlinux`, `bzImage`, `lean.cpio`, `initramfs.cpio`).
pub fn guest_file(name: &str) -> PathBuf {
    guest_dir().join(name)
}

/// The QEMU binary for interop tests. Panics with the fix if it is missing.
pub fn qemu() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()));
    let found = if p.is_absolute() {
        p.exists()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(&p).exists()))
            .unwrap_or(false)
    };
    assert!(
        found,
        "{} not found: apt-get install qemu-system-x86",
        p.display()
    );
    p
}

/// A per-test scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let base = std::env::temp_dir();
        for n in 0.. {
            let p = base.join(format!("accel-test-{tag}-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        unreachable!()
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished (or killed) process left behind.
#[derive(Debug)]
pub struct RunOutput {
    /// `None` when the deadline passed and the process was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// stdout then stderr, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
    /// The value after `GUEST CMD RC: ` the guest's /init printed, if any.
    pub fn guest_rc(&self) -> Option<i32> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("GUEST CMD RC: "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Runs `cmd` with stdout/stderr captured and stdin closed; kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> RunOutput {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    wait_with_timeout(child, timeout)
}

/// Waits for a child spawned with piped stdout/stderr; kills it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> RunOutput {
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    RunOutput {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The `-append` value for a test guest that runs `gcmd` (empty: just boot and reset).
/// `base` (a guest cpio) followed by an archive with the static test tools of
/// `scripts/guest-tools` (`/bin/vsock-tool`, `/bin/smp-stress`), built into `dir`.
pub fn guest_tools_initrd(dir: &Path, base: &Path) -> PathBuf {
    let out = dir.join("guest-tools");
    let status = Command::new(workspace_root().join("scripts/guest-tools/build.sh"))
        .arg(&out)
        .arg(base)
        .status()
        .expect("run scripts/guest-tools/build.sh");
    assert!(
        status.success(),
        "building the guest tools failed (needs gcc and glibc's static libraries)"
    );
    out.join("initrd.cpio")
}

pub fn guest_append(gcmd: &str) -> String {
    if gcmd.is_empty() {
        GUEST_CMDLINE.to_string()
    } else {
        format!("{GUEST_CMDLINE} gcmd=\"{gcmd}\"")
    }
}

/// A child process killed (and reaped) on drop: backends that tests start.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `path` exists (a backend's listening socket), up to `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A process whose stdout is being collected in the background (see [`spawn_until`]).
pub struct Running {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

/// Spawns `cmd` (stdin closed, output captured) and returns once a line of its stdout contains
/// `marker`. On timeout or early exit the process is killed and its output returned as `Err`.
/// For a VM that must be up before another starts (e.g. two guests on one link).
pub fn spawn_until(
    cmd: &mut Command,
    marker: &str,
    timeout: Duration,
) -> Result<Running, RunOutput> {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (acc, marker) = (stdout.clone(), marker.to_string());
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(&marker) {
                let _ = seen_tx.send(());
            }
            let mut acc = acc.lock().unwrap();
            acc.push_str(&line);
            acc.push('\n');
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let running = Running {
        child,
        stdout,
        reader,
        stderr,
    };
    match seen_rx.recv_timeout(timeout) {
        Ok(()) => Ok(running),
        Err(_) => Err(running.finish()),
    }
}

impl Running {
    /// Kills the process (if still running) and returns everything it printed.
    pub fn finish(mut self) -> RunOutput {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        };
        let _ = self.reader.join();
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        RunOutput {
            status,
            stdout,
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

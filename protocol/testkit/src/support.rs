//! Process and file helpers every test suite shares (integration tests, backend process and
//! socket tests, the test kit's own tests): scratch directories, children killed on drop,
//! waiting for a socket path, a connection or an exit, running a program with a deadline
//! while collecting its output, other processes as `/proc` shows them, and workspace binaries
//! built before they run.
//!
//! Only std, nix and vmm-sys-util: accel's own tests include this file by path
//! (`#[path = ...] mod support;`), since a dev-dependency on vu-testkit would put the bench
//! client's clap and serde_json into `cargo tree -p accel`.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmm_sys_util::tempdir::TempDir;

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(10);

/// A fresh directory `$TMPDIR/vu-test-<tag>-XXXXXX`, removed (with its contents) on drop.
pub struct TestDir(TempDir);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let prefix = std::env::temp_dir().join(format!("vu-test-{tag}-"));
        let dir = TempDir::new_with_prefix(&prefix)
            .unwrap_or_else(|e| panic!("cannot create {}XXXXXX: {e}", prefix.display()));
        TestDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.as_path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.as_path().join(name)
    }
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts `exe args` with stdin, stdout and stderr on /dev/null.
    pub fn spawn_quiet<S: AsRef<std::ffi::OsStr>>(exe: impl AsRef<Path>, args: &[S]) -> Self {
        let exe = exe.as_ref();
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        KillOnDrop(child)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `sig` (SIGSTOP/SIGCONT/SIGTERM/...).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.0.id()));
    }

    /// Sends `sig` and waits up to `timeout` for the exit; `None` if it did not exit.
    pub fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        wait_exit(&mut self.0, timeout)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `timeout` until `path` exists (a listening socket, a file a program creates).
/// Does not connect: a vhost-user backend serves one frontend at a time.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_for_path`], panicking when `path` does not appear.
pub fn expect_path(path: &Path, timeout: Duration) {
    assert!(
        wait_for_path(path, timeout),
        "{} did not appear within {timeout:?}",
        path.display()
    );
}

/// Connects to `path`, retrying for up to `timeout` while nothing listens there yet.
pub fn connect_retry(path: &Path, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
            Err(e) => panic!("connect {}: {e}", path.display()),
        }
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// A process as `/proc/PID/stat` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub ppid: u32,
}

/// `pid`'s `/proc/PID/stat`; `None` once the process is gone (reaped).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split at the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat {
        comm: stat.get(open + 1..close)?.to_string(),
        state,
        ppid,
    })
}

/// Whether `pid` runs: it exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Waits up to `timeout` for `pid` to stop running (exited, reaped or not); true if it did.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while running(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

/// The processes whose parent is `pid`, with their command names.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| proc_stat(child).map(|s| (child, s)))
        .filter(|(_, s)| s.ppid == pid)
        .map(|(child, s)| (child, s.comm))
        .collect()
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
}

/// Spawns `cmd` with stdin closed and stdout/stderr piped.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Reads `r` to its end on a thread.
fn read_to_string_in_background(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Runs `cmd` with stdout/stderr captured and stdin closed; kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> RunOutput {
    wait_with_timeout(spawn_piped(cmd), timeout)
}

/// Waits for a child spawned with piped stdout/stderr; kills it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> RunOutput {
    let out = read_to_string_in_background(child.stdout.take().expect("stdout piped"));
    let err = read_to_string_in_background(child.stderr.take().expect("stderr piped"));
    let status = wait_exit(&mut child, timeout).or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        None
    });
    RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A process whose stdout is being collected in the background (see [`spawn_until`]).
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
    stderr: JoinHandle<String>,
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
    let mut child = spawn_piped(cmd);
    let out = child.stdout.take().expect("stdout piped");
    let stderr = read_to_string_in_background(child.stderr.take().expect("stderr piped"));
    let stdout = Arc::new(Mutex::new(String::new()));
    let (seen_tx, seen_rx) = mpsc::channel();
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
    let running = Running {
        child,
        stdout,
        reader,
        stderr,
    };
    let deadline = Instant::now() + timeout;
    match seen_rx.recv_timeout(timeout) {
        Ok(()) => Ok(running),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(running.finish()),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // Its stdout ended: give it the rest of the time to exit, for the status.
            let mut running = running;
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = wait_exit(&mut running.child, left);
            Err(running.finish())
        }
    }
}

impl Running {
    /// Kills the process (if still running) and returns everything it printed.
    /// Waits up to `timeout` for the process to exit by itself, then [`finish`](Self::finish).
    pub fn finish_within(mut self, timeout: Duration) -> RunOutput {
        let _ = wait_exit(&mut self.child, timeout);
        self.finish()
    }

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

/// Path of binary `name` of the workspace `packages`. The first call for a set of packages in a
/// test process runs `cargo build --quiet --bins -p P...` with the profile and target directory
/// of the running test executable (a no-op when they are up to date), so a test never runs a
/// binary older than its source. Panics with cargo's output if the build fails. For a
/// package's own binaries use `env!("CARGO_BIN_EXE_<name>")` instead.
pub fn workspace_bin(packages: &[&str], name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());
    let key = packages.join(" ");
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let result = match built.iter().find(|(k, _)| *k == key) {
        Some((_, r)) => r.clone(),
        None => {
            let r = build_bins(packages);
            built.push((key, r.clone()));
            r
        }
    };
    drop(built);
    if let Err(e) = result {
        panic!("{e}");
    }
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found although `cargo build --bins -p {}` succeeded",
        p.display(),
        packages.join(" -p ")
    );
    p
}

/// Where cargo puts binaries for the running test's profile (`<target>/debug`, ...): the test
/// executable lives in `<target>/<profile>/deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn build_bins(packages: &[&str]) -> Result<(), String> {
    let dir = bin_dir();
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let target_dir = dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // Any directory of the workspace will do.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--bins", "--target-dir"])
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "building the binaries the tests run failed ({cmd:?}: {}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

//! Process and file helpers every test suite shares (integration tests, backend process and
//! socket tests, the test kit's own tests): scratch directories, children killed on drop,
//! waiting for a socket path, a connection or an exit, and running a program with a deadline
//! while collecting its output.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dir_is_fresh_and_removed_on_drop() {
        let a = TestDir::new("support");
        let b = TestDir::new("support");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn run_with_timeout_collects_output_and_kills_at_the_deadline() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        );
        assert_eq!(out.code(), Some(3), "{}", out.both());
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
        let start = Instant::now();
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo started; exec sleep 60"]),
            Duration::from_millis(300),
        );
        assert!(out.status.is_none());
        assert_eq!(out.stdout, "started\n");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn spawn_until_waits_for_the_marker() {
        let r = spawn_until(
            Command::new("sh").args(["-c", "echo a; echo READY; exec sleep 60"]),
            "READY",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|o| panic!("no marker: {}", o.both()));
        let out = r.finish();
        assert!(out.status.is_none(), "killed");
        assert_eq!(out.stdout, "a\nREADY\n");
        let err = spawn_until(
            Command::new("sh").args(["-c", "echo nope"]),
            "READY",
            Duration::from_secs(30),
        )
        .err()
        .expect("exits without the marker");
        assert_eq!(err.code(), Some(0));
    }

    #[test]
    fn paths_connections_and_signals() {
        let dir = TestDir::new("support");
        let sock = dir.join("s");
        assert!(!wait_for_path(&sock, Duration::from_millis(50)));
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        expect_path(&sock, Duration::from_secs(1));
        let _c = connect_retry(&sock, Duration::from_secs(1));
        assert!(l.accept().is_ok());
        let mut child = KillOnDrop::spawn_quiet("sleep", &["60"]);
        assert!(wait_exit(&mut child.0, Duration::from_millis(50)).is_none());
        let st = child
            .signal_and_wait(Signal::SIGTERM, Duration::from_secs(30))
            .expect("exits on SIGTERM");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(Signal::SIGTERM as i32));
    }
}

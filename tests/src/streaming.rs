//! A VM (or any process) whose output the test reads line by line while it runs, to act on
//! what the guest prints (kill a backend when the guest says so, then check what follows).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// A running process with its stdout and stderr (prefixed `stderr: `) streamed as lines.
pub struct Streaming {
    pub child: KillOnDrop,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Streaming {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, rx) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Streaming {
            child: KillOnDrop(child),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `pat`; returns it. Panics with the output so far on
    /// timeout.
    pub fn expect(&mut self, pat: &str, timeout: Duration) -> String {
        match self.try_expect(pat, timeout) {
            Some(l) => l,
            None => panic!(
                "no line with {pat:?} within {timeout:?}; output so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Waits for a line that starts with `prefix` (what the guest printed, not the echo of
    /// the command that prints it); returns it.
    pub fn expect_start(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.try_expect_by(|l| l.trim_start().starts_with(prefix), timeout) {
            Some(l) => l,
            None => panic!(
                "no line starting with {prefix:?} within {timeout:?}; output so far:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Like [`expect`](Self::expect), `None` on timeout or end of output.
    pub fn try_expect(&mut self, pat: &str, timeout: Duration) -> Option<String> {
        self.try_expect_by(|l| l.contains(pat), timeout)
    }

    /// Waits for a line `matches` accepts; returns it (`None` on timeout or end of output).
    pub fn try_expect_by(
        &mut self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if matches(&l) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// Reads what is left for up to `timeout` (after the process ended or was killed).
    pub fn drain(&mut self, timeout: Duration) {
        while let Ok(l) = self.lines.recv_timeout(timeout) {
            self.seen.push(l);
        }
    }

    /// Everything read so far, one line each.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.child.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.0.wait().expect("wait")
    }
}

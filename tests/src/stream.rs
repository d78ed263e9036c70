//! A VM (or any process) whose stdout and stderr lines are read as they come, for tests that
//! act on the host while the guest runs (kill a backend when the guest says so).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// A running process with its output streamed line by line (stderr lines prefixed
/// `stderr: `); killed on drop.
pub struct Streaming {
    pub child: KillOnDrop,
    lines: Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl Streaming {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
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

    /// Waits up to `timeout` for a line containing `pat`; `None` on timeout or end of output.
    pub fn wait_for(&mut self, pat: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(pat) {
                        return Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// [`wait_for`](Self::wait_for), panicking with the output so far on timeout.
    pub fn expect(&mut self, pat: &str, timeout: Duration) -> String {
        self.wait_for(pat, timeout).unwrap_or_else(|| {
            panic!(
                "no line with {pat:?} within {timeout:?}; output so far:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// Takes the lines that arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Whether some line received so far contains `pat`.
    pub fn saw(&self, pat: &str) -> bool {
        self.seen.iter().any(|l| l.contains(pat))
    }
}

//! A minimal QMP client for tests: connect (retrying while the VMM starts), negotiate, run
//! commands, skipping events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A QMP session on `path`, retried until the VMM listens.
pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for replies ([`QmpClient::execute`] keeps them).
    pub events: Vec<Value>,
}

impl QmpClient {
    pub fn connect(path: &Path, child: &mut Child, ctx: &str) -> QmpClient {
        let start = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                return Self::handshake(s, ctx);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{ctx}: exited with {status} before its QMP socket listened");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{ctx}: no QMP socket"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Connects to a monitor that already listens (a daemonized VMM's, whose parent returned
    /// once it did): greeting, then `qmp_capabilities`.
    pub fn connect_listening(path: &Path, ctx: &str) -> QmpClient {
        let s = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("{ctx}: connecting to {}: {e}", path.display()));
        Self::handshake(s, ctx)
    }

    fn handshake(s: UnixStream, ctx: &str) -> QmpClient {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut q = QmpClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "{ctx}: {greeting}");
        q.call("qmp_capabilities");
        q
    }

    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP reply {line:?}: {e}"))
    }

    pub fn call(&mut self, cmd: &str) -> Value {
        // One write: `writeln!` writes the object and the newline separately, and a VMM whose
        // JSON parser acts on the closing brace may execute `quit` and close the socket
        // before the newline arrives (EPIPE in CI on the corpus test, VMM exit status 0).
        let line = format!("{}\n", json!({ "execute": cmd }));
        self.writer.write_all(line.as_bytes()).unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// Runs `cmd` with `args`; returns the reply, keeping the events read meanwhile.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
        let line = format!("{}\n", json!({ "execute": cmd, "arguments": args }));
        self.writer.write_all(line.as_bytes()).unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
            self.events.push(v);
        }
    }

    /// The next event named `name` (kept ones first), or `None` after `timeout`.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Some(self.events.remove(i));
        }
        let deadline = Instant::now() + timeout;
        let stream = self.reader.get_ref().try_clone().unwrap();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            stream.set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => break None,
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("QMP line {line:?}: {e}"));
                    if v["event"] == name {
                        break Some(v);
                    }
                    self.events.push(v);
                }
                Err(_) => break None,
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        result
    }
}

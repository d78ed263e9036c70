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
}

impl QmpClient {
    pub fn connect(path: &Path, child: &mut Child, ctx: &str) -> QmpClient {
        let start = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut q = QmpClient {
                    reader: BufReader::new(s.try_clone().unwrap()),
                    writer: s,
                };
                let greeting = q.read();
                assert!(greeting.get("QMP").is_some(), "{ctx}: {greeting}");
                q.call("qmp_capabilities");
                return q;
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
}

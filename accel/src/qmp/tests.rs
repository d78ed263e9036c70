//! The monitor thread over real sockets, with a stand-in main thread (no KVM): protocol
//! round trips, events before returns, and clients that flood or never read.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{MonitorServer, QmpShared, RunState, VmCommand, VmInfo};
use crate::config::{MonitorConfig, MonitorListen};

struct Fixture {
    dir: PathBuf,
    server: Option<MonitorServer>,
    main_stop: Arc<AtomicBool>,
    main: Option<std::thread::JoinHandle<()>>,
}

impl Fixture {
    fn new(tag: &str, monitors: usize) -> Fixture {
        Self::build(tag, &vec![false; monitors])
    }

    /// Monitors `m0`, `m1`, ...: a human monitor where `hmp[i]`, else QMP.
    fn build(tag: &str, hmp: &[bool]) -> Fixture {
        let dir = std::env::temp_dir().join(format!("accel-qmp-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let info = VmInfo {
            name: Some("t".into()),
            uuid: None,
            cpus: Vec::new(),
            ram_size: 128 << 20,
            chardevs: Vec::new(),
            pci: None,
        };
        let shared = Arc::new(QmpShared::new(info, RunState::Prelaunch).unwrap());
        let configs: Vec<MonitorConfig> = hmp
            .iter()
            .enumerate()
            .map(|(i, &hmp)| MonitorConfig {
                label: format!("m{i}"),
                listen: MonitorListen::Unix(dir.join(format!("m{i}.sock"))),
                pretty: false,
                wait: false,
                hmp,
            })
            .collect();
        let server = MonitorServer::start(&configs, shared.clone()).unwrap();
        // Stand-in for the main thread: carries out stop/cont with their events.
        let main_stop = Arc::new(AtomicBool::new(false));
        let (s, stop) = (shared.clone(), main_stop.clone());
        let main = std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match s.take_command() {
                    Some(cmd) => {
                        match cmd.command {
                            VmCommand::Stop => {
                                s.set_status(RunState::Paused);
                                s.emit("STOP", None);
                            }
                            VmCommand::Cont => {
                                s.set_status(RunState::Running);
                                s.emit("RESUME", None);
                            }
                            _ => {}
                        }
                        cmd.reply(Ok(()));
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Fixture {
            dir,
            server,
            main_stop,
            main: Some(main),
        }
    }

    fn connect(&self, i: usize) -> Client {
        let stream = UnixStream::connect(self.dir.join(format!("m{i}.sock"))).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut c = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let greeting = c.line();
        assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 7);
        c
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.server.take());
        self.main_stop.store(true, Ordering::Release);
        if let Some(m) = self.main.take() {
            let _ = m.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn line(&mut self) -> Value {
        let mut l = String::new();
        assert!(
            self.reader.read_line(&mut l).unwrap() > 0,
            "connection closed"
        );
        serde_json::from_str(&l).unwrap()
    }

    fn send(&mut self, s: &str) -> Value {
        self.stream.write_all(s.as_bytes()).unwrap();
        self.line()
    }
}

#[test]
fn negotiation_errors_and_events_before_returns() {
    let f = Fixture::new("proto", 2);
    let mut a = f.connect(0);
    let r = a.send("{\"execute\": \"query-status\"}\n");
    assert_eq!(r["error"]["class"], "CommandNotFound");
    assert_eq!(
        a.send("{\"execute\": \"qmp_capabilities\", \"id\": 1}"),
        json!({"return": {}, "id": 1})
    );
    let mut b = f.connect(1);
    b.send("{\"execute\": \"qmp_capabilities\"}");
    let r = a.send("}{\"execute\": \"query-name\"}");
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(a.line(), json!({"return": {"name": "t"}}));
    // STOP reaches the caller before the return, and the other monitor too.
    assert_eq!(a.send("{\"execute\": \"stop\"}")["event"], "STOP");
    assert_eq!(a.line(), json!({"return": {}}));
    assert_eq!(b.line()["event"], "STOP");
    let status = a.send("{\"execute\": \"query-status\"}");
    assert_eq!(status["return"]["status"], "paused");
    // Reconnect: the monitor serves the next client.
    drop(a);
    let mut a = f.connect(0);
    let r = a.send("{\"execute\": \"cont\"}");
    assert_eq!(
        r["error"]["class"], "CommandNotFound",
        "a new client negotiates again"
    );
}

#[test]
fn a_client_that_floods_and_never_reads_is_bounded_and_others_go_on() {
    let f = Fixture::new("flood", 2);
    let mut flood = f.connect(0);
    flood.send("{\"execute\": \"qmp_capabilities\"}");
    let mut other = f.connect(1);
    other.send("{\"execute\": \"qmp_capabilities\"}");
    // 16 MiB of requests, never reading a reply: the server stops reading this socket once
    // its bounded buffers are full, so the writer blocks (write times out) instead of accel
    // growing.
    flood
        .stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let req = "{\"execute\": \"query-commands\"}".repeat(1024);
    let mut sent = 0usize;
    let start = Instant::now();
    while sent < 16 << 20 && start.elapsed() < Duration::from_secs(30) {
        match flood.stream.write(req.as_bytes()) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // What it took: socket buffers, 64 KiB of pending input and the requests whose replies
    // filled the 256 KiB output high-water mark.
    eprintln!("flood: {sent} bytes accepted before the writer blocked");
    assert!(
        sent < 4 << 20,
        "accel kept reading a client that never reads ({sent} bytes)"
    );
    // Meanwhile the other monitor answers at once.
    let r = other.send("{\"execute\": \"query-name\"}");
    assert_eq!(r, json!({"return": {"name": "t"}}));
    // The flooder's replies are all there, in order, once it reads.
    let mut buf = vec![0u8; 1 << 16];
    let n = flood.reader.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("{\"return\": [{\"name\": "));
}

#[test]
fn oversized_and_deep_requests_are_answered_and_skipped() {
    let f = Fixture::new("big", 1);
    let mut c = f.connect(0);
    c.send("{\"execute\": \"qmp_capabilities\"}");
    let big = format!("{{\"execute\": \"{}\"}}", "x".repeat(2 << 20));
    c.stream.write_all(big.as_bytes()).unwrap();
    let r = c.line();
    assert_eq!(r["error"]["desc"], "JSON token size limit exceeded");
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let r = c.send(&deep);
    assert_eq!(r["error"]["desc"], "JSON nesting depth limit exceeded");
    assert_eq!(
        c.send("{\"execute\": \"query-name\"}"),
        json!({"return": {"name": "t"}})
    );
}

/// Reads from a human monitor until `until` has arrived (or the timeout fails the read).
fn read_until(stream: &mut UnixStream, until: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn human_monitor_greets_runs_lines_and_prompts_again() {
    let f = Fixture::build("hmp", &[true, false]);
    let mut h = UnixStream::connect(f.dir.join("m0.sock")).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let greeting = read_until(&mut h, "(qemu) ");
    assert!(
        greeting.starts_with("QEMU 7.2.0 monitor - type 'help' for more information\r\n"),
        "{greeting:?}"
    );
    // Two commands in one write, the second split over two writes.
    h.write_all(b"info status\r\ninfo na").unwrap();
    let out = read_until(&mut h, "VM status: paused (prelaunch)\r\n(qemu) ");
    assert!(!out.contains("name"), "{out:?}");
    h.write_all(b"me\n").unwrap();
    assert_eq!(read_until(&mut h, "(qemu) "), "t\r\n(qemu) ");
    h.write_all(b"cont\ninfo status\n").unwrap();
    read_until(&mut h, "VM status: running\r\n(qemu) ");
    h.write_all(b"frobnicate\n").unwrap();
    assert_eq!(
        read_until(&mut h, "(qemu) "),
        "unknown command: 'frobnicate'\r\n(qemu) "
    );
    // A line that never ends is bounded: dropped with an error, the monitor goes on.
    let long = vec![b'x'; super::server::MAX_PENDING_INPUT + 10];
    h.write_all(&long).unwrap();
    h.write_all(b"\ninfo name\n").unwrap();
    let out = read_until(&mut h, "t\r\n(qemu) ");
    assert!(out.contains("Error: line too long"), "{out:?}");
    // Events go to QMP clients only; the QMP monitor next to it works as before.
    let mut q = f.connect(1);
    q.send("{\"execute\":\"qmp_capabilities\"}");
    let r = q.send("{\"execute\":\"query-status\"}");
    assert_eq!(r["return"]["status"], "running");
}

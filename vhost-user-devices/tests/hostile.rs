//! Hostile guests and frontends against every backend program (as a process, log captured):
//! a broken ring (avail index more than a queue ahead, a ring at guest address 0) stops that
//! queue with bounded CPU and log while the worker stays responsive and the next frontend is
//! served; a memory table larger than its memfd is refused instead of killing the backend
//! with SIGBUS; connections leave no fd behind; a silent frontend does not block the next;
//! 10,000 malformed connections leave fds, VmRSS and the log at their baseline; a ring that
//! refills itself keeps its worker busy but does not shut the frontend out.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vu_daemon::FIRST_MESSAGE_TIMEOUT;
use vu_frontend::FrontendSession;
use vu_testkit::driver::blk::BlkDriver;
use vu_testkit::driver::console::ConsoleDriver;
use vu_testkit::driver::net::NetDriver;
use vu_testkit::driver::rng::RngDriver;
use vu_testkit::driver::vsock::VsockDriver;
use vu_testkit::driver::{Driver, DriverOptions, Segment};

mod common;
use common::{KillOnDrop, TestDir, wait_for};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Rng,
    Blk,
    Console,
    Net,
    Vsock,
}

const ALL: [Kind; 5] = [Kind::Rng, Kind::Blk, Kind::Console, Kind::Net, Kind::Vsock];

impl Kind {
    fn exe(self) -> &'static str {
        match self {
            Kind::Rng => env!("CARGO_BIN_EXE_vhost-user-rng"),
            Kind::Blk => env!("CARGO_BIN_EXE_vhost-user-blk"),
            Kind::Console => env!("CARGO_BIN_EXE_vhost-user-console"),
            Kind::Net => env!("CARGO_BIN_EXE_vhost-user-net"),
            Kind::Vsock => env!("CARGO_BIN_EXE_vhost-user-vsock"),
        }
    }

    /// The queue a hostile guest breaks: the one the device reads requests from.
    fn victim_queue(self) -> usize {
        match self {
            Kind::Rng | Kind::Blk => 0,
            Kind::Console | Kind::Net | Kind::Vsock => 1,
        }
    }
}

/// A backend process with its stderr (the log) in a file; killed on drop.
struct Proc {
    child: KillOnDrop,
    sock: PathBuf,
    log: PathBuf,
    _dir: TestDir,
}

impl Proc {
    fn spawn(kind: Kind, tag: &str) -> Proc {
        let dir = TestDir::new(&format!("vuhostile-{kind:?}-{tag}"));
        let sock = dir.join("s");
        let log = dir.join("log");
        let s = sock.to_str().unwrap().to_string();
        let args: Vec<String> = match kind {
            Kind::Rng => vec!["-s".into(), s],
            Kind::Blk => {
                let img = dir.join("img");
                std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
                let img = img.to_str().unwrap().to_string();
                vec!["--socket-path".into(), s, "--image".into(), img]
            }
            Kind::Console => {
                let out = dir.join("out").to_str().unwrap().to_string();
                vec!["-s".into(), s, "--output".into(), out]
            }
            Kind::Net => {
                let peer = dir.join("peer").to_str().unwrap().to_string();
                vec!["-s".into(), s, "--peer".into(), peer]
            }
            Kind::Vsock => {
                let uds = dir.join("uds").to_str().unwrap().to_string();
                vec!["-s".into(), s, "--uds-path".into(), uds]
            }
        };
        let child = Command::new(kind.exe())
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for(&sock);
        Proc {
            child: KillOnDrop(child),
            sock,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// User + system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    fn assert_alive(&mut self) {
        let status = self.child.0.try_wait().unwrap();
        assert!(
            status.is_none(),
            "backend exited ({status:?}); log:\n{}",
            tail(&self.log_text())
        );
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs `f` on another thread; panics if it takes longer than `limit` (a wedged backend
/// would otherwise hang the test instead of failing it).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// A driver with every queue of `kind` set up.
fn raw_driver(sock: &Path, opts: DriverOptions) -> vu_testkit::driver::Result<Driver> {
    Driver::connect(
        sock,
        TIMEOUT,
        DriverOptions {
            num_queues: 0,
            ..opts
        },
    )
}

/// A fresh frontend gets real service from `kind`'s backend.
fn served(kind: Kind, sock: &Path) {
    let sock = sock.to_path_buf();
    within(
        Duration::from_secs(30),
        &format!("{kind:?}: next frontend"),
        move || {
            let opts = DriverOptions::default();
            match kind {
                Kind::Rng => {
                    let mut d = RngDriver::connect(&sock, TIMEOUT, opts).expect("connect");
                    assert_eq!(d.request(64, TIMEOUT).expect("entropy").len(), 64);
                }
                Kind::Blk => {
                    let mut d = BlkDriver::connect(&sock, TIMEOUT, opts).expect("connect");
                    assert_eq!(d.read(0, 0, 512).expect("read"), vec![0x5a; 512]);
                }
                Kind::Console => {
                    let mut d = ConsoleDriver::connect(&sock, TIMEOUT, opts).expect("connect");
                    d.send(b"hello", TIMEOUT).expect("send");
                }
                Kind::Net => {
                    let mut d = NetDriver::connect(&sock, TIMEOUT, opts).expect("connect");
                    d.read_config().expect("config");
                }
                Kind::Vsock => {
                    VsockDriver::connect(&sock, TIMEOUT).expect("connect");
                }
            }
        },
    );
}

/// CPU ticks and log bytes the backend spends over `window` (the hostile state left as is).
fn cost_over(p: &Proc, window: Duration) -> (u64, u64) {
    let (c0, l0) = (p.cpu_ticks(), p.log_bytes());
    std::thread::sleep(window);
    (p.cpu_ticks() - c0, p.log_bytes() - l0)
}

/// Generous bounds: a wedged worker burns a whole core (~100 ticks a second) and logs
/// hundreds of thousands of lines a second.
const WINDOW: Duration = Duration::from_secs(3);
const MAX_TICKS: u64 = 60;
const MAX_LOG_BYTES: u64 = 16 * 1024;

fn broken_ring(kind: Kind, forge: impl FnOnce(&mut Driver, usize) + Send + 'static, tag: &str) {
    let mut p = Proc::spawn(kind, tag);
    let sock = p.sock.clone();
    let q = kind.victim_queue();
    let log_before = p.log_bytes();
    let mut drv = within(TIMEOUT * 2, "setup", move || {
        let mut drv = raw_driver(
            &sock,
            DriverOptions {
                mem_base: GuestAddress(0),
                ..DriverOptions::default()
            },
        )
        .expect("connect");
        forge(&mut drv, q);
        drv.kick(q).expect("kick");
        // More kicks: each one must cost next to nothing.
        for _ in 0..100 {
            drv.kick(q).expect("kick");
        }
        drv
    });
    std::thread::sleep(Duration::from_millis(200));
    let (ticks, log) = cost_over(&p, WINDOW);
    let total_log = p.log_bytes() - log_before;
    eprintln!(
        "{kind:?} {tag}: {ticks} CPU ticks and {log} log bytes over {WINDOW:?} after the \
         break ({total_log} log bytes since connecting)"
    );
    assert!(ticks <= MAX_TICKS, "{kind:?}: {ticks} ticks in {WINDOW:?}");
    assert!(
        total_log <= MAX_LOG_BYTES,
        "{kind:?}: {total_log} log bytes:\n{}",
        tail(&p.log_text())
    );
    assert!(
        p.log_text().contains("broken ring"),
        "{kind:?}: no line about the broken ring:\n{}",
        tail(&p.log_text())
    );
    // The worker still answers: GET_VRING_BASE, then a clean disconnect.
    let base = within(TIMEOUT, "GET_VRING_BASE", move || {
        let base = drv.session().stop_vring(q).expect("GET_VRING_BASE");
        drop(drv);
        base
    });
    eprintln!("{kind:?} {tag}: GET_VRING_BASE answered {base}");
    p.assert_alive();
    served(kind, &p.sock);
    p.assert_alive();
}

#[test]
fn avail_index_jump_stops_the_queue_not_the_backend() {
    for kind in ALL {
        broken_ring(
            kind,
            |drv, q| {
                let size = drv.queue(q).unwrap().geometry().size;
                drv.forge_avail_idx(q, size + 7).unwrap();
            },
            "jump",
        );
    }
}

#[test]
fn ring_at_guest_address_zero_stops_the_queue_not_the_backend() {
    for kind in ALL {
        broken_ring(
            kind,
            |drv, q| {
                drv.forge_avail_ring(q, GuestAddress(0)).unwrap();
                // avail->idx (at GPA 2) says one request is there.
                drv.write(GuestAddress(2), &1u16.to_le_bytes()).unwrap();
            },
            "gpa0",
        );
    }
}

#[test]
fn memory_table_larger_than_its_file_is_refused() {
    for kind in ALL {
        let mut p = Proc::spawn(kind, "shortfd");
        let sock = p.sock.clone();
        // 64 MiB region, 1 MiB file: rings (at the start) lie inside the file.
        let res = within(TIMEOUT * 2, "short memfd", move || {
            let opts = DriverOptions {
                forge_file_size: Some(1 << 20),
                ..DriverOptions::default()
            };
            let mut drv = match raw_driver(&sock, opts) {
                Ok(d) => d,
                Err(e) => return Err(e.to_string()),
            };
            // Accepted: make the backend touch memory past the file's end.
            let _pad = drv.alloc(32 << 20, 4096).unwrap();
            let buf = drv.alloc(4096, 4096).unwrap();
            let q = kind.victim_queue();
            let _ = drv.submit(q, &[Segment::writable(buf.addr, 4096)], false, 1);
            let _ = drv.submit(q, &[Segment::readable(buf.addr, 4096)], false, 2);
            let _ = drv.kick(q);
            let _ = drv.wait(q, Duration::from_secs(2));
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(300));
        p.assert_alive();
        assert!(
            res.is_err(),
            "{kind:?}: the short memory table was accepted"
        );
        served(kind, &p.sock);
        p.assert_alive();
    }
}

/// A ring that refills itself: its avail ring is its used ring, and the frontend starts the
/// device's used index one ahead of its avail position (SET_VRING_ADDR takes the used index
/// from memory, SET_VRING_BASE sets the avail position), so every completion the backend
/// writes makes one more request available. Every entry names descriptor 0, 16 readable
/// bytes. The backend serves it for ever, like a guest that keeps the queue full; but its
/// frontend still gets `GET_VRING_BASE` answered, and the next frontend is served. (A worker
/// used to stay in one processing round as long as chains kept coming, holding the ring's
/// lock: `GET_VRING_BASE` and the end of the connection waited for ever. Found by the
/// vhost_user_blk fuzz target.)
fn self_feeding_ring(kind: Kind) {
    use vm_memory::Bytes;

    let mut p = Proc::spawn(kind, "refill");
    let sock = p.sock.clone();
    let q = kind.victim_queue();
    let log_before = p.log_bytes();
    let mut drv = within(TIMEOUT * 2, "setup", move || {
        raw_driver(&sock, DriverOptions::default()).expect("connect")
    });
    let g = drv.queue(q).unwrap().geometry();
    let buf = drv.alloc(16, 16).unwrap();
    let mut desc = buf.at(0).0.to_le_bytes().to_vec();
    desc.extend(16u32.to_le_bytes());
    desc.extend([0u8; 4]); // flags 0 (device-readable), next 0
    drv.write(g.desc, &desc).unwrap();
    // Used ring: flags 0, index 1, every element {id 0, len 0}.
    let mut used = vec![0u8; 6 + 8 * usize::from(g.size)];
    used[2] = 1;
    drv.write(g.used, &used).unwrap();
    let used_idx =
        move |d: &Driver| -> u16 { d.memory().read_obj(GuestAddress(g.used.0 + 2)).unwrap() };
    let mut drv = within(TIMEOUT, "forge", move || {
        drv.forge_avail_ring(q, g.used).expect("forge");
        drv.kick(q).expect("kick");
        drv
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = used_idx(&drv);
    std::thread::sleep(Duration::from_millis(200));
    let after = used_idx(&drv);
    assert_ne!(
        before,
        after,
        "{kind:?}: the backend does not serve the ring (used index {before}); log:\n{}",
        tail(&p.log_text())
    );
    let base = within(
        TIMEOUT,
        "GET_VRING_BASE on a self-feeding ring",
        move || {
            let base = drv.session().stop_vring(q).expect("GET_VRING_BASE");
            drop(drv);
            base
        },
    );
    eprintln!(
        "{kind:?}: GET_VRING_BASE answered {base} on a self-feeding ring (used index {before}, \
         then {after} 200 ms later)"
    );
    let total_log = p.log_bytes() - log_before;
    assert!(
        total_log <= MAX_LOG_BYTES,
        "{kind:?}: {total_log} log bytes:\n{}",
        tail(&p.log_text())
    );
    p.assert_alive();
    served(kind, &p.sock);
    p.assert_alive();
}

#[test]
fn a_self_feeding_ring_does_not_shut_out_the_frontend() {
    // Not blk: resuming a ring from its in-flight buffer, it starts its avail position at the
    // used index, so this ring does not refill itself there. The fuzz corpus keeps the input
    // that did it to blk (fuzz/corpus/vhost_user_blk/regress-self-feeding-ring), and the
    // bound (`vu_daemon::ring::Round`) is the same code for every backend.
    for kind in [Kind::Rng, Kind::Console, Kind::Net, Kind::Vsock] {
        self_feeding_ring(kind);
    }
}

#[test]
fn connections_leave_no_fds_behind() {
    for kind in ALL {
        let p = Proc::spawn(kind, "fds");
        let mut counts = Vec::new();
        for i in 0..50 {
            let sock = p.sock.clone();
            let drv = within(TIMEOUT * 2, "connect", move || {
                raw_driver(&sock, DriverOptions::default()).expect("connect")
            });
            // Connected and set up: every earlier connection has been torn down.
            if i == 0 || i == 49 {
                counts.push(p.open_fds());
            }
            drop(drv);
        }
        eprintln!("{kind:?}: open fds after 1 and 50 connections: {counts:?}");
        assert_eq!(counts[0], counts[1], "{kind:?} leaks fds per connection");
    }
}

#[test]
fn silent_and_half_header_frontends_do_not_block_the_next() {
    let mut p = Proc::spawn(Kind::Rng, "silent");
    let silent = UnixStream::connect(&p.sock).unwrap();
    let mut half = UnixStream::connect(&p.sock).unwrap();
    half.write_all(&[1, 0, 0, 0, 1, 0]).unwrap();
    let t0 = Instant::now();
    served(Kind::Rng, &p.sock);
    let took = t0.elapsed();
    eprintln!("served after {took:?} behind a silent and a half-header frontend");
    assert!(took < FIRST_MESSAGE_TIMEOUT * 2 + TIMEOUT);
    drop((silent, half));
    p.assert_alive();
}

#[test]
fn second_frontend_is_turned_away_not_left_hanging() {
    let mut p = Proc::spawn(Kind::Rng, "busy");
    let first = RngDriver::connect(&p.sock, TIMEOUT, DriverOptions::default()).expect("first");
    let sock = p.sock.clone();
    let second = within(Duration::from_secs(20), "second frontend", move || {
        FrontendSession::connect(&sock, TIMEOUT).map(|_| ())
    });
    assert!(
        second.is_err(),
        "a second frontend was served beside the first"
    );
    drop(first);
    // Gone: the next one is served.
    served(Kind::Rng, &p.sock);
    p.assert_alive();
}

impl Proc {
    /// The open fd count once it stopped changing for a second (a connection that just ended
    /// is still being torn down for a moment); at most 20 s.
    fn settled_fds(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.open_fds();
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.open_fds();
            if now != last {
                (last, stable_since) = (now, Instant::now());
            } else if stable_since.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        last
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// One malformed frontend, `i` picking the kind of garbage: it waits for the backend to drop
/// the connection (end-of-file), unless it hangs up first.
fn malformed_connection(sock: &Path, i: usize) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut c = UnixStream::connect(sock).unwrap();
    let msg = |req: u32, flags: u32, size: u32| {
        let mut m = Vec::new();
        for v in [req, flags, size] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m
    };
    match i % 6 {
        // Unknown request code.
        0 => c.write_all(&msg(0xffff, 1, 0)).unwrap(),
        // SET_OWNER claiming a huge payload.
        1 => c.write_all(&msg(3, 1, 0x7fff_ffff)).unwrap(),
        // Bad version bits.
        2 => c.write_all(&msg(1, 7, 0)).unwrap(),
        // SET_OWNER twice.
        3 => {
            let mut m = msg(3, 1, 0);
            m.extend(msg(3, 1, 0));
            c.write_all(&m).unwrap();
        }
        // SET_VRING_KICK for a queue that does not exist, an eventfd attached: the fd the
        // backend received must not stay open once the connection is dropped.
        4 => {
            let mut m = msg(3, 1, 0);
            m.extend(msg(12, 1, 8));
            m.extend(200u64.to_le_bytes());
            let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            let fds = [efd.as_raw_fd()];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            nix::sys::socket::sendmsg::<()>(
                c.as_raw_fd(),
                &[std::io::IoSlice::new(&m)],
                &cmsg,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .unwrap();
        }
        // Half a header, then hang up.
        _ => {
            c.write_all(&[1, 0, 0, 0, 1]).unwrap();
            return;
        }
    }
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            // The backend may drop the connection with our bytes unread (ECONNRESET).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("garbage {}: connection not dropped: {e}", i % 6),
        }
        assert!(total < 4096, "garbage {}: endless answer", i % 6);
    }
}

#[test]
fn malformed_connections_leave_fds_and_memory_at_baseline() {
    const CONNECTIONS: usize = 10_000;
    const WARMUP: usize = 300;
    for kind in ALL {
        let mut p = Proc::spawn(kind, "garbage");
        let sock = p.sock.clone();
        // Allocator arenas and caches settle during the warm-up.
        let s = sock.clone();
        within(Duration::from_secs(120), "warm-up", move || {
            (0..WARMUP).for_each(|i| malformed_connection(&s, i))
        });
        served(kind, &p.sock);
        // The served frontend's connection is torn down after it hangs up: let that finish.
        let fds0 = p.settled_fds();
        let (rss0, log0) = (p.rss_kib(), p.log_bytes());
        let t0 = Instant::now();
        let s = sock.clone();
        within(
            Duration::from_secs(600),
            "malformed connections",
            move || (0..CONNECTIONS).for_each(|i| malformed_connection(&s, i)),
        );
        let took = t0.elapsed();
        p.assert_alive();
        // The next well-behaved frontend is served, and every malformed one is torn down.
        served(kind, &p.sock);
        let fds1 = p.settled_fds();
        let (rss1, log1) = (p.rss_kib(), p.log_bytes());
        eprintln!(
            "{kind:?}: {CONNECTIONS} malformed connections in {took:?}: fds {fds0} -> {fds1}, \
             VmRSS {rss0} -> {rss1} KiB, log +{} bytes",
            log1 - log0
        );
        assert_eq!(
            fds0, fds1,
            "{kind:?}: fds leaked over malformed connections"
        );
        // 4 MiB over 10,000 connections: a leak of more than ~420 bytes each fails.
        assert!(
            rss1 <= rss0 + 4096,
            "{kind:?}: VmRSS grew from {rss0} to {rss1} KiB over {CONNECTIONS} connections"
        );
        // Every dropped connection is a log line a peer causes: rate-limited.
        assert!(
            log1 - log0 < 256 * 1024,
            "{kind:?}: {} log bytes for malformed connections",
            log1 - log0
        );
        p.assert_alive();
    }
}

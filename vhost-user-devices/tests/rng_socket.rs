//! vhost-user-rng served in-process on a real vhost-user socket, driven by the userspace
//! virtio driver: bytes come from the source, odd chains get the error path (used length 0,
//! device keeps serving), the rate limit holds, and a second frontend is served.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_devices::rng::{Config, RngDevice};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vu_daemon::serve;
use vu_testkit::driver::rng::RngDriver;
use vu_testkit::driver::{DriverOptions, RawDesc, RawNext, Segment};

mod common;
use common::TestDir;

const TIMEOUT: Duration = Duration::from_secs(10);
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

struct Setup {
    /// Removed with the setup.
    _dir: TestDir,
    sock: PathBuf,
}

/// Non-repeating bytes (xorshift), so any offset into them is recognisable.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Starts the backend for `connections` frontends; `source` None = a pattern file.
fn start(
    tag: &str,
    source: Option<&Path>,
    rate: Option<(u64, Duration)>,
    connections: usize,
) -> Setup {
    let dir = TestDir::new(&format!("vurng-{}", tag));
    let src = match source {
        Some(p) => p.to_path_buf(),
        None => {
            let p = dir.join("source");
            std::fs::write(&p, pattern(1 << 20)).unwrap();
            p
        }
    };
    let sock = dir.join("s");
    let config = Config {
        source: src,
        rate_limit: rate,
        queue_size: 256,
    };
    let device = RngDevice::open(&config).unwrap();
    let mut listener = Listener::new(&sock, true).unwrap();
    std::thread::spawn(move || serve(&device, &mut listener, Some(connections)));
    Setup { _dir: dir, sock }
}

fn connect(sock: &Path) -> RngDriver {
    let opts = DriverOptions {
        queue_size: 64,
        ..DriverOptions::default()
    };
    RngDriver::connect(sock, TIMEOUT, opts).expect("connect")
}

#[test]
fn bytes_come_from_the_source_in_order() {
    let s = start("order", None, None, 1);
    let mut d = connect(&s.sock);
    let p = pattern(1 << 20);
    assert_eq!(d.request(100, TIMEOUT).unwrap(), p[..100]);
    assert_eq!(d.request(300, TIMEOUT).unwrap(), p[100..400]);
    // A chain of two writable buffers, once direct and once indirect.
    let mut off = 400;
    for indirect in [false, true] {
        let a = d.driver().alloc(10, 8).unwrap();
        let b = d.driver().alloc(20, 8).unwrap();
        let segs = [Segment::writable(a.addr, 10), Segment::writable(b.addr, 20)];
        d.driver().submit(0, &segs, indirect, 9).unwrap();
        d.driver().kick(0).unwrap();
        let c = d.driver().wait(0, TIMEOUT).unwrap();
        assert_eq!(c.len, 30);
        assert_eq!(d.driver().read(a.addr, 10).unwrap(), p[off..off + 10]);
        assert_eq!(d.driver().read(b.addr, 20).unwrap(), p[off + 10..off + 30]);
        off += 30;
    }
    // Larger than one request may carry: filled partly, from where the source is.
    let big = d.request(100_000, TIMEOUT).unwrap();
    assert_eq!(big.len(), 64 * 1024);
    assert_eq!(big, p[off..off + 64 * 1024]);
}

#[test]
fn urandom_gives_distinct_bytes() {
    let s = start("urandom", Some(Path::new("/dev/urandom")), None, 1);
    let mut d = connect(&s.sock);
    let a = d.request(64, TIMEOUT).unwrap();
    let b = d.request(64, TIMEOUT).unwrap();
    assert_eq!((a.len(), b.len()), (64, 64));
    assert_ne!(a, b);
    assert!(a.iter().any(|&x| x != 0));
}

#[test]
fn misused_descriptors_get_the_error_path() {
    let s = start("misuse", None, None, 1);
    let mut d = connect(&s.sock);
    let p = pattern(1 << 20);
    let run = |d: &mut RngDriver, descs: &[RawDesc]| -> u32 {
        d.driver()
            .submit_raw_and_wait(0, descs, 1, TIMEOUT)
            .expect("no completion")
            .len
    };
    let ro = d.driver().alloc(16, 8).unwrap();
    d.driver().write(ro.addr, &[0xaa; 16]).unwrap();
    let wr = d.driver().alloc(32, 8).unwrap();
    // A device-readable buffer before the writable one: ignored, never written.
    let used = run(
        &mut d,
        &[
            RawDesc::new(ro.addr.0, 16, N, RawNext::Rel(1)),
            RawDesc::new(wr.addr.0, 32, W, RawNext::Zero),
        ],
    );
    assert_eq!(used, 32);
    assert_eq!(d.driver().read(ro.addr, 16).unwrap(), [0xaa; 16]);
    assert_eq!(d.driver().read(wr.addr, 32).unwrap(), p[..32]);
    // Only a device-readable buffer: nothing to fill.
    let used = run(&mut d, &[RawDesc::new(ro.addr.0, 16, 0, RawNext::Zero)]);
    assert_eq!(used, 0);
    assert_eq!(d.driver().read(ro.addr, 16).unwrap(), [0xaa; 16]);
    // A writable buffer outside guest memory.
    let used = run(&mut d, &[RawDesc::new(1 << 50, 64, W, RawNext::Zero)]);
    assert_eq!(used, 0);
    // A loop.
    d.driver()
        .submit_raw(
            0,
            &[
                RawDesc::new(wr.addr.0, 8, W | N, RawNext::Rel(1)),
                RawDesc::new(wr.addr.0, 8, W | N, RawNext::Rel(0)),
            ],
            false,
            2,
        )
        .unwrap();
    d.driver().kick(0).unwrap();
    let c = d
        .driver()
        .wait(0, TIMEOUT)
        .expect("no completion for a looping chain");
    assert_eq!((c.token, c.len), (2, 0));
    // The device still serves, from where the source was (the bad chains took nothing).
    assert_eq!(d.request(8, TIMEOUT).unwrap(), p[32..40]);
}

#[test]
fn rate_limit_holds_and_requests_wait() {
    const MAX: u64 = 1000;
    const PERIOD: Duration = Duration::from_millis(200);
    const REQUESTS: usize = 14;
    const LEN: u32 = 300;
    let s = start("rate", None, Some((MAX, PERIOD)), 1);
    let mut d = connect(&s.sock);
    let mut bufs = Vec::new();
    for i in 0..REQUESTS {
        let b = d.driver().alloc(u64::from(LEN), 8).unwrap();
        d.driver()
            .submit(0, &[Segment::writable(b.addr, LEN)], false, i as u64)
            .unwrap();
        bufs.push(b);
    }
    let t0 = Instant::now();
    d.driver().kick(0).unwrap();
    let mut total = 0u64;
    let mut done = 0;
    while done < REQUESTS {
        let c = d
            .driver()
            .wait(0, TIMEOUT)
            .expect("request never completed");
        let seen = t0.elapsed();
        assert!(c.len > 0 && c.len <= LEN, "used length {}", c.len);
        total += u64::from(c.len);
        done += 1;
        // Every window (which opens no earlier than t0) grants at most MAX bytes; `seen` is
        // measured after the fact, so a slow test only loosens this bound.
        let windows = seen.as_nanos() / PERIOD.as_nanos() + 1;
        assert!(
            u128::from(total) <= u128::from(MAX) * windows,
            "{total} bytes after {seen:?}: more than {MAX} per {PERIOD:?}"
        );
    }
    let elapsed = t0.elapsed();
    // `total` bytes need at least ceil(total / MAX) windows: the last opens
    // (windows - 1) periods after the first, whatever the machine's speed.
    let windows = total.div_ceil(MAX) as u32;
    assert!(total > MAX, "the limit was never reached ({total} bytes)");
    assert!(
        elapsed >= PERIOD * (windows - 1),
        "{total} bytes in {elapsed:?}: the limit did not hold"
    );
}

#[test]
fn serves_the_next_frontend() {
    let s = start("again", None, None, 2);
    let p = pattern(1 << 20);
    {
        let mut d = connect(&s.sock);
        assert_eq!(d.request(16, TIMEOUT).unwrap(), p[..16]);
    }
    let mut d = connect(&s.sock);
    assert_eq!(d.request(16, TIMEOUT).unwrap(), p[16..32]);
}

#[test]
fn waiting_requests_do_not_hold_up_a_disconnect() {
    // 16 bytes per minute: the second request waits far longer than the test.
    let s = start("hold", None, Some((16, Duration::from_secs(60))), 2);
    let p = pattern(1 << 20);
    {
        let mut d = connect(&s.sock);
        assert_eq!(d.request(64, TIMEOUT).unwrap(), p[..16]);
        let b = d.driver().alloc(64, 8).unwrap();
        d.driver()
            .submit(0, &[Segment::writable(b.addr, 64)], false, 1)
            .unwrap();
        d.driver().kick(0).unwrap();
        assert!(matches!(
            d.driver().wait(0, Duration::from_millis(300)),
            Err(vu_testkit::driver::Error::Timeout { .. })
        ));
    }
    // The worker was not blocked waiting for budget: the connection ends at once and the
    // next frontend is served (its requests wait for the same, shared budget).
    let t = Instant::now();
    let mut d = connect(&s.sock);
    assert!(t.elapsed() < Duration::from_secs(5));
    let b = d.driver().alloc(8, 8).unwrap();
    d.driver()
        .submit(0, &[Segment::writable(b.addr, 8)], false, 2)
        .unwrap();
    d.driver().kick(0).unwrap();
    assert!(matches!(
        d.driver().wait(0, Duration::from_millis(300)),
        Err(vu_testkit::driver::Error::Timeout { .. })
    ));
}

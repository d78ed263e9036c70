//! vhost-user-console served in-process on a real vhost-user socket, driven by the userspace
//! virtio driver: text both ways through a file and through the console socket's client,
//! input waiting for buffers, backpressure with large input, odd chains on both queues.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::Listener;
use vhost_user_devices::console::{Config, ConsoleDevice, Endpoint};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vu_daemon::serve;
use vu_spec::console::{CONSOLE_RX_QUEUE, CONSOLE_TX_QUEUE};
use vu_testkit::driver::console::ConsoleDriver;
use vu_testkit::driver::{DriverOptions, RawDesc, RawNext, Segment};

mod common;
use common::TestDir;

const TIMEOUT: Duration = Duration::from_secs(10);
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

struct Setup {
    dir: TestDir,
    sock: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let dir = TestDir::new(&format!("vucon-{}", tag));
        let sock = dir.join("s");
        Setup { dir, sock }
    }

    /// Starts the backend on `endpoint` for `connections` frontends.
    fn start(&self, endpoint: Endpoint, connections: usize) {
        let config = Config {
            endpoint,
            queue_size: 256,
        };
        let device = ConsoleDevice::open(&config).unwrap();
        let mut listener = Listener::new(&self.sock, true).unwrap();
        std::thread::spawn(move || serve(&device, &mut listener, Some(connections)));
    }
}

fn connect(sock: &Path) -> ConsoleDriver {
    let opts = DriverOptions {
        queue_size: 64,
        ..DriverOptions::default()
    };
    ConsoleDriver::connect(sock, TIMEOUT, opts).expect("connect")
}

/// Polls `path` until it holds `want` (or the timeout passes); returns its contents.
fn file_with(path: &Path, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let data = std::fs::read(path).unwrap_or_default();
        if data.windows(want.len()).any(|w| w == want) || Instant::now() > deadline {
            return data;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads from `client` until `want` bytes arrived (or the timeout passes).
fn read_n(client: &mut UnixStream, want: usize) -> Vec<u8> {
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match client.read(&mut out[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    out.truncate(got);
    out
}

fn connect_client(path: &Path) -> UnixStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("console socket: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn output_to_a_file_and_the_config_space() {
    let s = Setup::new("file");
    let out = s.dir.join("out.txt");
    s.start(Endpoint::File(out.clone()), 1);
    let mut d = connect(&s.sock);
    let cfg = d.read_config().unwrap();
    assert_eq!({ cfg.max_nr_ports }, 1);
    assert_eq!(d.send(b"hello from the guest\n", TIMEOUT).unwrap(), 0);
    // Two readable buffers in one chain, indirect: concatenated.
    let a = d.driver().alloc(6, 8).unwrap();
    let b = d.driver().alloc(7, 8).unwrap();
    d.driver().write(a.addr, b"split ").unwrap();
    d.driver().write(b.addr, b"chain\n\n").unwrap();
    let segs = [Segment::readable(a.addr, 6), Segment::readable(b.addr, 6)];
    d.driver().submit(CONSOLE_TX_QUEUE, &segs, true, 5).unwrap();
    d.driver().kick(CONSOLE_TX_QUEUE).unwrap();
    assert_eq!(d.driver().wait(CONSOLE_TX_QUEUE, TIMEOUT).unwrap().len, 0);
    let data = file_with(&out, b"split chain\n");
    assert_eq!(data, b"hello from the guest\nsplit chain\n");
}

#[test]
fn text_both_ways_through_the_console_socket() {
    let s = Setup::new("sock");
    let p = s.dir.join("console.sock");
    s.start(Endpoint::Socket(p.clone()), 1);
    let mut d = connect(&s.sock);
    // Output before any client connected is kept for the first one.
    d.send(b"early output\n", TIMEOUT).unwrap();
    let mut client = connect_client(&p);
    assert_eq!(read_n(&mut client, 13), b"early output\n");
    d.send(b"later output\n", TIMEOUT).unwrap();
    assert_eq!(read_n(&mut client, 13), b"later output\n");
    // Input typed before the driver posted buffers waits for them.
    client.write_all(b"typed early\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    d.post_receive(4, 64).unwrap();
    assert_eq!(d.receive_at_least(12, TIMEOUT).unwrap(), b"typed early\n");
    client.write_all(b"second line\n").unwrap();
    assert_eq!(d.receive_at_least(12, TIMEOUT).unwrap(), b"second line\n");
    // A new client after the first left gets the output.
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    let mut client = connect_client(&p);
    d.send(b"for the second client\n", TIMEOUT).unwrap();
    assert_eq!(read_n(&mut client, 22), b"for the second client\n");
}

#[test]
fn large_input_arrives_intact() {
    let s = Setup::new("large");
    let p = s.dir.join("console.sock");
    s.start(Endpoint::Socket(p.clone()), 1);
    let mut d = connect(&s.sock);
    d.post_receive(8, 4096).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut client = connect_client(&p);
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        client.write_all(&to_send).unwrap();
        client
    });
    let got = d
        .receive_at_least(data.len(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "input corrupted");
    drop(writer.join().unwrap());
}

#[test]
fn odd_chains_get_the_error_path() {
    let s = Setup::new("odd");
    let p = s.dir.join("console.sock");
    s.start(Endpoint::Socket(p.clone()), 1);
    let mut d = connect(&s.sock);
    let mut client = connect_client(&p);
    client.write_all(b"xyz").unwrap();
    let ro = d.driver().alloc(16, 8).unwrap();
    d.driver().write(ro.addr, &[0x55; 16]).unwrap();
    // receiveq: a device-readable-only chain gets nothing and is not written.
    let c = d
        .driver()
        .submit_raw_and_wait(
            CONSOLE_RX_QUEUE,
            &[RawDesc::new(ro.addr.0, 16, 0, RawNext::Zero)],
            1,
            TIMEOUT,
        )
        .unwrap();
    assert_eq!((c.token, c.len), (1, 0));
    assert_eq!(d.driver().read(ro.addr, 16).unwrap(), [0x55; 16]);
    // receiveq: a writable buffer outside guest memory.
    let c = d
        .driver()
        .submit_raw_and_wait(
            CONSOLE_RX_QUEUE,
            &[RawDesc::new(1 << 50, 16, W, RawNext::Zero)],
            2,
            TIMEOUT,
        )
        .unwrap();
    assert_eq!((c.token, c.len), (2, 0));
    // transmitq: a writable descriptor is ignored, the readable part is sent; a looping
    // chain and one outside memory send nothing.
    let wr = d.driver().alloc(8, 8).unwrap();
    d.driver().write(ro.addr, b"tx-ok\n").unwrap();
    for (token, descs) in [
        (
            3u64,
            vec![
                RawDesc::new(ro.addr.0, 6, N, RawNext::Rel(1)),
                RawDesc::new(wr.addr.0, 8, W, RawNext::Zero),
            ],
        ),
        (
            4,
            vec![
                RawDesc::new(ro.addr.0, 6, N, RawNext::Rel(1)),
                RawDesc::new(ro.addr.0, 6, N, RawNext::Rel(0)),
            ],
        ),
        (5, vec![RawDesc::new(1 << 50, 6, 0, RawNext::Zero)]),
    ] {
        let c = d
            .driver()
            .submit_raw_and_wait(CONSOLE_TX_QUEUE, &descs, token, TIMEOUT)
            .unwrap();
        assert_eq!((c.token, c.len), (token, 0));
    }
    d.send(b"end\n", TIMEOUT).unwrap();
    assert_eq!(read_n(&mut client, 10), b"tx-ok\nend\n");
    // The pending input still reaches a proper buffer.
    d.post_receive(1, 16).unwrap();
    assert_eq!(d.receive_at_least(3, TIMEOUT).unwrap(), b"xyz");
}

#[test]
fn serves_the_next_frontend_with_the_same_endpoint() {
    let s = Setup::new("again");
    let out = s.dir.join("out.txt");
    s.start(Endpoint::File(out.clone()), 2);
    {
        let mut d = connect(&s.sock);
        d.send(b"one\n", TIMEOUT).unwrap();
    }
    let mut d = connect(&s.sock);
    d.send(b"two\n", TIMEOUT).unwrap();
    assert_eq!(file_with(&out, b"two\n"), b"one\ntwo\n");
}

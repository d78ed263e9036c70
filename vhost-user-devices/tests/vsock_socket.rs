//! vhost-user-vsock served in-process on a real vhost-user socket, driven by the userspace
//! virtio driver (`vu_testkit::driver::vsock`) playing the guest, with real unix sockets on the
//! host side: handshakes both ways, data both ways, credit, shutdown, RST and malformed input.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vhost_user_devices::vsock::DEFAULT_BUF_ALLOC;
use vm_memory::ByteValued;
use vu_spec::vsock::{
    PacketHeader, VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND, VSOCK_HOST_CID,
    VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE,
    VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_OP_SHUTDOWN, VSOCK_TYPE_SEQPACKET,
};
use vu_testkit::driver::vsock::VsockDriver;

mod common;
use common::{VSOCK_CID as CID, VsockSetup as Setup};

const TIMEOUT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

fn recv(d: &mut VsockDriver) -> (PacketHeader, Vec<u8>) {
    d.recv(TIMEOUT).expect("a packet from the device")
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Guest port `src` connects to host port `dst` (a listener must exist); returns the host end.
fn guest_connect(d: &mut VsockDriver, l: &UnixListener, src: u32, dst: u32) -> UnixStream {
    d.send(d.header(src, dst, VSOCK_OP_REQUEST), &[]).unwrap();
    let (h, _) = recv(d);
    assert_eq!({ h.op }, VSOCK_OP_RESPONSE);
    assert_eq!(({ h.src_port }, { h.dst_port }), (dst, src));
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

#[test]
fn config_and_guest_to_host_stream() {
    let s = Setup::start("g2h", 2, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    assert_eq!(d.guest_cid(), CID);
    let l = s.host_listener(1234);

    d.send(d.header(5000, 1234, VSOCK_OP_REQUEST), &[]).unwrap();
    let (h, data) = recv(&mut d);
    assert!(data.is_empty());
    assert_eq!({ h.op }, VSOCK_OP_RESPONSE);
    assert_eq!(({ h.src_cid }, { h.dst_cid }), (VSOCK_HOST_CID, CID));
    assert_eq!(({ h.src_port }, { h.dst_port }), (1234, 5000));
    assert_eq!({ h.buf_alloc }, DEFAULT_BUF_ALLOC);
    let (mut host, _) = l.accept().unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();

    // Guest → host.
    d.send(d.header(5000, 1234, VSOCK_OP_RW), b"hello host")
        .unwrap();
    assert_eq!(read_exact(&mut host, 10), b"hello host");
    // Host → guest.
    host.write_all(b"hello guest").unwrap();
    let (h, data) = recv(&mut d);
    assert_eq!({ h.op }, VSOCK_OP_RW);
    assert_eq!(({ h.src_port }, { h.dst_port }), (1234, 5000));
    assert_eq!(data, b"hello guest");
    assert_eq!(
        { h.fwd_cnt },
        10,
        "fwd_cnt counts guest bytes written to the host"
    );

    // CREDIT_REQUEST is answered with our credit.
    d.send(d.header(5000, 1234, VSOCK_OP_CREDIT_REQUEST), &[])
        .unwrap();
    let (h, _) = recv(&mut d);
    assert_eq!({ h.op }, VSOCK_OP_CREDIT_UPDATE);
    assert_eq!(({ h.buf_alloc }, { h.fwd_cnt }), (DEFAULT_BUF_ALLOC, 10));

    // Guest closes: the host reads EOF, the device completes the close with RST.
    let mut bye = d.header(5000, 1234, VSOCK_OP_SHUTDOWN);
    bye.flags = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
    d.send(bye, &[]).unwrap();
    let (h, _) = recv(&mut d);
    assert_eq!({ h.op }, VSOCK_OP_RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // The connection is gone: data on it gets RST.
    d.send(d.header(5000, 1234, VSOCK_OP_RW), b"late").unwrap();
    assert_eq!({ recv(&mut d).0.op }, VSOCK_OP_RST);

    // A second frontend connection (the serve-again loop) gets a fresh device.
    drop(d);
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let mut host = guest_connect(&mut d, &l, 6000, 1234);
    d.send(d.header(6000, 1234, VSOCK_OP_RW), b"again").unwrap();
    assert_eq!(read_exact(&mut host, 5), b"again");
}

#[test]
fn host_to_guest_stream_with_handshake() {
    let s = Setup::start("h2g", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Bytes after the line are data for the guest once connected.
    host.write_all(b"CONNECT 80\nearly").unwrap();
    let (h, _) = recv(&mut d);
    assert_eq!({ h.op }, VSOCK_OP_REQUEST);
    assert_eq!(({ h.src_cid }, { h.dst_cid }), (VSOCK_HOST_CID, CID));
    assert_eq!({ h.dst_port }, 80);
    let local = h.src_port;
    let mut resp = d.header(80, local, VSOCK_OP_RESPONSE);
    resp.buf_alloc = 4096;
    d.send(resp, &[]).unwrap();
    let line = read_exact(&mut host, format!("OK {local}\n").len());
    assert_eq!(line, format!("OK {local}\n").as_bytes());
    let (h, data) = recv(&mut d);
    assert_eq!(({ h.op }, data.as_slice()), (VSOCK_OP_RW, &b"early"[..]));

    // Host → guest within the guest's 4096-byte credit: 5 already sent, 10000 written.
    host.write_all(&[7u8; 10000]).unwrap();
    let mut got = 0usize;
    while let Some((h, data)) = d.try_recv(QUIET).unwrap() {
        assert_eq!({ h.op }, VSOCK_OP_RW);
        assert!(data.iter().all(|&b| b == 7));
        got += data.len();
    }
    assert_eq!(got, 4096 - 5, "the device must stop at the guest's credit");
    // The guest consumed everything: credit update, the rest flows.
    let mut upd = d.header(80, local, VSOCK_OP_CREDIT_UPDATE);
    upd.buf_alloc = 1 << 20;
    upd.fwd_cnt = 4096;
    d.send(upd, &[]).unwrap();
    while got < 10000 {
        let (h, data) = recv(&mut d);
        assert_eq!({ h.op }, VSOCK_OP_RW);
        got += data.len();
    }
    assert_eq!(got, 10000);

    // Guest → host, then the host half-closes: the guest gets SHUTDOWN(SEND) and can still
    // send; then the guest closes too.
    d.send(d.header(80, local, VSOCK_OP_RW), b"pong").unwrap();
    assert_eq!(read_exact(&mut host, 4), b"pong");
    host.shutdown(Shutdown::Write).unwrap();
    let (h, _) = recv(&mut d);
    assert_eq!(
        ({ h.op }, { h.flags }),
        (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND)
    );
    d.send(d.header(80, local, VSOCK_OP_RW), b"last words")
        .unwrap();
    assert_eq!(read_exact(&mut host, 10), b"last words");
    let mut bye = d.header(80, local, VSOCK_OP_SHUTDOWN);
    bye.flags = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
    d.send(bye, &[]).unwrap();
    assert_eq!({ recv(&mut d).0.op }, VSOCK_OP_RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Guest refuses a host connection: the host client is closed without "OK".
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"CONNECT 81\n").unwrap();
    let (h, _) = recv(&mut d);
    assert_eq!(({ h.op }, { h.dst_port }), (VSOCK_OP_REQUEST, 81));
    let mut rst = d.header(81, h.src_port, VSOCK_OP_RST);
    rst.buf_alloc = 0;
    d.send(rst, &[]).unwrap();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // A bad handshake line closes the client; nothing reaches the guest.
    let mut host = UnixStream::connect(&s.uds).unwrap();
    host.set_read_timeout(Some(TIMEOUT)).unwrap();
    host.write_all(b"HELLO 80\n").unwrap();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(d.try_recv(QUIET).unwrap().is_none());
}

#[test]
fn rst_for_unknown_ports_ops_and_types() {
    let s = Setup::start("rst", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let expect_rst = |d: &mut VsockDriver, src: u32, dst: u32| {
        let (h, _) = recv(d);
        assert_eq!({ h.op }, VSOCK_OP_RST);
        assert_eq!(({ h.src_port }, { h.dst_port }), (dst, src));
    };
    // Nobody listens on host port 9999.
    d.send(d.header(100, 9999, VSOCK_OP_REQUEST), &[]).unwrap();
    expect_rst(&mut d, 100, 9999);
    // Data, credit and shutdown for a connection that does not exist.
    for op in [
        VSOCK_OP_RW,
        VSOCK_OP_CREDIT_UPDATE,
        VSOCK_OP_SHUTDOWN,
        VSOCK_OP_RESPONSE,
    ] {
        d.send(d.header(101, 9999, op), b"x").unwrap();
        expect_rst(&mut d, 101, 9999);
    }
    // RST is never answered.
    d.send(d.header(102, 9999, VSOCK_OP_RST), &[]).unwrap();
    // Seqpacket is not offered; other CIDs are not reachable.
    let mut h = d.header(103, 9999, VSOCK_OP_REQUEST);
    h.type_ = VSOCK_TYPE_SEQPACKET;
    d.send(h, &[]).unwrap();
    expect_rst(&mut d, 103, 9999);
    let l = s.host_listener(7);
    let mut h = d.header(104, 7, VSOCK_OP_REQUEST);
    h.dst_cid = 9;
    d.send(h, &[]).unwrap();
    expect_rst(&mut d, 104, 7);
    assert!(d.try_recv(QUIET).unwrap().is_none());

    // An unknown op on an established connection resets it: the host sees EOF.
    let mut host = guest_connect(&mut d, &l, 105, 7);
    d.send(d.header(105, 7, 99), &[]).unwrap();
    expect_rst(&mut d, 105, 7);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // A second REQUEST for an open connection resets it too.
    let _host = guest_connect(&mut d, &l, 106, 7);
    d.send(d.header(106, 7, VSOCK_OP_REQUEST), &[]).unwrap();
    expect_rst(&mut d, 106, 7);

    // Still serving.
    let mut host = guest_connect(&mut d, &l, 107, 7);
    d.send(d.header(107, 7, VSOCK_OP_RW), b"alive").unwrap();
    assert_eq!(read_exact(&mut host, 5), b"alive");
}

#[test]
fn malformed_packets_are_dropped() {
    let s = Setup::start("bad", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let l = s.host_listener(8);
    // A header descriptor shorter than a header.
    d.send_raw(&[0xAB; 20], &[]).unwrap();
    // `len` larger than any packet may be.
    let mut h = d.header(200, 8, VSOCK_OP_RW).to_le();
    h.len = (1u32 << 20).to_le();
    d.send_raw(h.as_slice(), &[]).unwrap();
    // `len` says data follows but there is none.
    h.len = 100u32.to_le();
    d.send_raw(h.as_slice(), &[]).unwrap();
    // A data descriptor shorter than `len`.
    d.send_raw(h.as_slice(), &[1, 2, 3]).unwrap();
    // Not from the guest's CID: dropped without answer.
    let mut h = d.header(201, 8, VSOCK_OP_REQUEST);
    h.src_cid = 77;
    d.send(h, &[]).unwrap();
    assert!(d.try_recv(QUIET).unwrap().is_none());

    // Guest data beyond the credit the device gave: the host does not read, so the device's
    // buffer fills up; the connection is reset, the device lives on.
    let mut host = guest_connect(&mut d, &l, 202, 8);
    let chunk = vec![0x5Au8; 60 * 1024];
    let mut sent = 0usize;
    let mut reset = false;
    while sent < 4 * DEFAULT_BUF_ALLOC as usize {
        d.send(d.header(202, 8, VSOCK_OP_RW), &chunk).unwrap();
        sent += chunk.len();
        while let Some((h, _)) = d.try_recv(Duration::from_millis(20)).unwrap() {
            if h.op == VSOCK_OP_RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "no RST after {sent} bytes beyond the credit");
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    // What the host socket held arrives intact; the device's buffer is discarded by the reset.
    assert!(!all.is_empty() && all.len() < sent && all.iter().all(|&b| b == 0x5A));

    let mut host = guest_connect(&mut d, &l, 203, 8);
    d.send(d.header(203, 8, VSOCK_OP_RW), b"alive").unwrap();
    assert_eq!(read_exact(&mut host, 5), b"alive");
}

/// 2 MiB each way with flow control on both sides: the driver (guest) respects the device's
/// credit and returns its own as it consumes; the host side reads and writes concurrently.
#[test]
fn bulk_both_ways_with_credit() {
    const SIZE: usize = 2 << 20;
    let pattern = |i: usize| (i % 251) as u8 ^ (i >> 12) as u8;
    let s = Setup::start("bulk", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let l = s.host_listener(9);
    let host = guest_connect(&mut d, &l, 300, 9);
    let mut host_r = host.try_clone().unwrap();
    let mut host_w = host;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        host_r.read_to_end(&mut all).unwrap();
        all
    });
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..SIZE).map(pattern).collect();
        host_w.write_all(&data).unwrap();
        host_w.shutdown(Shutdown::Write).unwrap();
    });

    // Guest side: interleave sending (within credit) and receiving (returning credit).
    let guest_buf = 64 * 1024u32;
    let (mut sent, mut received) = (0usize, Vec::with_capacity(SIZE));
    let (mut dev_buf_alloc, mut dev_fwd_cnt) = (DEFAULT_BUF_ALLOC, 0u32);
    let mut reported = 0u32;
    let mut host_done = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent < SIZE || !host_done {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled: sent {sent}, got {}",
            received.len()
        );
        let credit = dev_buf_alloc as usize - (sent as u32).wrapping_sub(dev_fwd_cnt) as usize;
        if sent < SIZE && credit > 0 {
            let n = credit.min(8192).min(SIZE - sent);
            let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
            let mut h = d.header(300, 9, VSOCK_OP_RW);
            h.buf_alloc = guest_buf;
            h.fwd_cnt = received.len() as u32;
            d.send(h, &chunk).unwrap();
            reported = received.len() as u32;
            sent += n;
        }
        let wait = if sent < SIZE && credit > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        while let Some((h, data)) = d.try_recv(wait.max(Duration::from_millis(1))).unwrap() {
            assert_eq!(({ h.src_port }, { h.dst_port }), (9, 300));
            dev_buf_alloc = h.buf_alloc;
            dev_fwd_cnt = h.fwd_cnt;
            match h.op {
                VSOCK_OP_RW => received.extend_from_slice(&data),
                VSOCK_OP_CREDIT_UPDATE => {}
                VSOCK_OP_SHUTDOWN => host_done = true,
                op => panic!("unexpected op {op}"),
            }
            assert!(
                received.len() as u32 - reported <= guest_buf,
                "device exceeded our credit"
            );
        }
        if received.len() as u32 - reported >= guest_buf / 2 {
            let mut h = d.header(300, 9, VSOCK_OP_CREDIT_UPDATE);
            h.buf_alloc = guest_buf;
            h.fwd_cnt = received.len() as u32;
            d.send(h, &[]).unwrap();
            reported = received.len() as u32;
        }
    }
    writer.join().unwrap();
    assert_eq!(received.len(), SIZE);
    assert!(received.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    let mut bye = d.header(300, 9, VSOCK_OP_SHUTDOWN);
    bye.flags = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
    d.send(bye, &[]).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), SIZE);
    assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i)));
}

/// Forged tx chains (write-only header, memory outside the table, a descriptor loop, data in
/// a write-only descriptor) are completed and dropped; the device keeps serving.
#[test]
fn descriptor_abuse_on_tx() {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vu_spec::vsock::TX_QUEUE;
    use vu_testkit::driver::{RawDesc, RawNext};

    let s = Setup::start("abuse", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let l = s.host_listener(10);
    let mut host = guest_connect(&mut d, &l, 400, 10);
    let buf = d.driver().alloc(4096, 64).unwrap();
    let mut hdr = d.header(400, 10, VSOCK_OP_RW);
    hdr.len = 4;
    d.driver().write(buf.addr, hdr.to_le().as_slice()).unwrap();
    d.driver().write(buf.at(64), b"evil").unwrap();
    let (h, data) = (buf.addr.0, buf.at(64).0);
    let desc = RawDesc::new;
    let chains: Vec<Vec<RawDesc>> = vec![
        // Header the device would have to write.
        vec![desc(h, 44, VRING_DESC_F_WRITE as u16, RawNext::Zero)],
        // Header outside guest memory.
        vec![desc(0xdead_0000_0000, 44, 0, RawNext::Zero)],
        // Data outside guest memory.
        vec![
            desc(h, 44, VRING_DESC_F_NEXT as u16, RawNext::Rel(1)),
            desc(u64::MAX - 2, 4, 0, RawNext::Zero),
        ],
        // Data in a device-writable descriptor.
        vec![
            desc(h, 44, VRING_DESC_F_NEXT as u16, RawNext::Rel(1)),
            desc(data, 4, VRING_DESC_F_WRITE as u16, RawNext::Zero),
        ],
        // A loop.
        vec![
            desc(h, 44, VRING_DESC_F_NEXT as u16, RawNext::Rel(1)),
            desc(data, 4, VRING_DESC_F_NEXT as u16, RawNext::Rel(0)),
        ],
        // `next` outside the table.
        vec![desc(h, 44, VRING_DESC_F_NEXT as u16, RawNext::Abs(60000))],
    ];
    for (i, c) in chains.iter().enumerate() {
        let done = d
            .driver()
            .submit_raw_and_wait(TX_QUEUE, c, i as u64, TIMEOUT)
            .expect("forged chain not completed");
        assert_eq!((done.token, done.len), (i as u64, 0));
    }
    // None of them reached the host.
    d.send(d.header(400, 10, VSOCK_OP_RW), b"good").unwrap();
    assert_eq!(read_exact(&mut host, 4), b"good");
}

//! vhost-user-net served in-process in peer mode on two real vhost-user sockets, driven by two
//! userspace virtio-net drivers (`vu_testkit::driver::net`): frames flow both ways, MRG_RXBUF
//! spreads big frames over chains, frames wait for buffers, and malformed chains are dropped
//! and counted while the backend keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_devices::net::{Config, LinkConfig, NetDevice, NetStatsSnapshot};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vu_frontend::FrontendSession;
use vu_spec::net::{
    NET_HDR_SIZE, NetHeader, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, rx_queue, tx_queue,
};
use vu_testkit::driver::net::{NetDriver, SMALL_RX_BUFFER};
use vu_testkit::driver::{Driver, DriverOptions, RawDesc, RawNext, Segment};

mod common;
use common::TestDir;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0xab, 0xcd, 0x10];

struct Peers {
    /// Removed with the peers.
    _dir: TestDir,
    a: PathBuf,
    b: PathBuf,
    dev_a: Arc<NetDevice>,
    dev_b: Arc<NetDevice>,
}

/// Two peer devices served in threads, `connections` frontends each.
fn start(tag: &str, queue_pairs: u16, connections: usize) -> Peers {
    let dir = TestDir::new(&format!("vun-sock-{}", tag));
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let config = Config {
        link: LinkConfig::Peer(b.clone()),
        queue_pairs,
        mac: Some(MAC),
        queue_size: 256,
    };
    let (dev_a, dev_b) = NetDevice::peer_pair(&config).unwrap();
    let (dev_a, dev_b) = (Arc::new(dev_a), Arc::new(dev_b));
    for (dev, path) in [(&dev_a, &a), (&dev_b, &b)] {
        let dev = dev.clone();
        let mut listener = Listener::new(path, true).unwrap();
        std::thread::spawn(move || vu_daemon::serve(&*dev, &mut listener, Some(connections)));
    }
    Peers {
        _dir: dir,
        a,
        b,
        dev_a,
        dev_b,
    }
}

fn options(queue_pairs: usize, features: u64) -> DriverOptions {
    DriverOptions {
        num_queues: queue_pairs * 2,
        features,
        queue_size: 64,
        ..DriverOptions::default()
    }
}

fn connect(path: &PathBuf, queue_pairs: usize, features: u64) -> NetDriver {
    NetDriver::connect(path, TIMEOUT, options(queue_pairs, features)).expect("connect")
}

/// Sends `SET_VRING_ENABLE(index, 1)` as raw bytes on `session`'s socket (the vhost crate's
/// frontend refuses to send it before SET_FEATURES) and, with `need_reply`, returns the
/// backend's REPLY_ACK value.
fn raw_enable(session: &FrontendSession, index: u32, need_reply: bool) -> Option<u64> {
    use std::io::{Read, Write};
    use std::os::fd::BorrowedFd;
    // SAFETY: the session owns the fd and outlives this function; the clone is closed on return.
    let fd = unsafe { BorrowedFd::borrow_raw(session.socket_fd()) };
    let mut sock = std::os::unix::net::UnixStream::from(fd.try_clone_to_owned().unwrap());
    const SET_VRING_ENABLE: u32 = 18;
    let flags: u32 = 0x1 | if need_reply { 0x8 } else { 0 };
    let mut msg = Vec::new();
    for word in [SET_VRING_ENABLE, flags, 8, index, 1] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    sock.write_all(&msg).unwrap();
    if !need_reply {
        return None;
    }
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply)
        .expect("REPLY_ACK (the backend hung up?)");
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
    assert_eq!(
        (word(0), word(4) & 0x4, word(8)),
        (SET_VRING_ENABLE, 0x4, 8)
    );
    Some(u64::from_le_bytes(reply[12..20].try_into().unwrap()))
}

/// An Ethernet-looking frame: broadcast destination, a source, a made-up ethertype, pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, seed]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    f
}

fn stats(dev: &NetDevice) -> NetStatsSnapshot {
    dev.stats()
}

#[test]
fn frames_flow_both_ways_and_config_has_the_macs() {
    let p = start("both", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, u64::MAX);
    for (d, mac) in [(&mut a, MAC), (&mut b, [0x52, 0x54, 0, 0xab, 0xcd, 0x11])] {
        let f = d.driver().features();
        for bit in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
        ] {
            assert_ne!(f & (1 << bit), 0, "feature {bit} not negotiated");
        }
        assert_eq!(f & (1 << VIRTIO_NET_F_MQ), 0, "MQ offered with one pair");
        let c = d.read_config().unwrap();
        assert_eq!(c.mac, mac);
        assert_eq!(u16::from_le(c.status), VIRTIO_NET_S_LINK_UP as u16);
        assert_eq!(u16::from_le(c.max_virtqueue_pairs), 1);
    }
    a.post_rx(0, SMALL_RX_BUFFER, 8).unwrap();
    b.post_rx(0, SMALL_RX_BUFFER, 8).unwrap();
    for i in 0..20u8 {
        let f = frame(60 + usize::from(i) * 70, i);
        a.send(0, &f, TIMEOUT).unwrap();
        let got = b.recv(0, TIMEOUT).unwrap();
        assert_eq!(got.frame, f, "frame {i} A -> B");
        assert_eq!(got.buffers, 1);
        assert_eq!(
            got.header,
            NetHeader {
                num_buffers: 1u16.to_le(),
                ..Default::default()
            }
        );
        let f = frame(1514, 100 + i);
        b.send(0, &f, TIMEOUT).unwrap();
        assert_eq!(a.recv(0, TIMEOUT).unwrap().frame, f, "frame {i} B -> A");
    }
    let (sa, sb) = (stats(&p.dev_a), stats(&p.dev_b));
    assert_eq!((sa.tx_frames, sa.rx_frames), (20, 20));
    assert_eq!((sb.tx_frames, sb.rx_frames), (20, 20));
    assert_eq!(sa.tx_malformed + sa.rx_dropped + sb.tx_dropped, 0);
}

/// QEMU's virtio-net enables the rings when the guest negotiates features, before it sends
/// SET_FEATURES to the backend (patches/README.md, PATCH early-enable): the backend accepts
/// those requests (acking the one that asks) and the connection goes on to carry frames.
#[test]
fn rings_enabled_before_set_features_are_accepted() {
    let p = start("early", 1, 1);
    let session = FrontendSession::connect(&p.a, TIMEOUT).unwrap();
    assert_eq!(
        raw_enable(&session, 0, true),
        Some(0),
        "early enable refused"
    );
    raw_enable(&session, 1, false);
    let drv = Driver::new(session, options(1, u64::MAX)).expect("setup after early enables");
    let mut a = NetDriver::new(drv);
    let mut b = connect(&p.b, 1, u64::MAX);
    a.post_rx(0, SMALL_RX_BUFFER, 4).unwrap();
    b.post_rx(0, SMALL_RX_BUFFER, 4).unwrap();
    let f = frame(200, 1);
    a.send(0, &f, TIMEOUT).unwrap();
    assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f);
    let f = frame(300, 2);
    b.send(0, &f, TIMEOUT).unwrap();
    assert_eq!(a.recv(0, TIMEOUT).unwrap().frame, f);
}

#[test]
fn mergeable_buffers_carry_a_big_frame_in_several_chains() {
    let p = start("mrg", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, u64::MAX);
    b.post_rx(0, 512, 40).unwrap();
    // A header split from its frame, as Linux does with scatter-gather.
    let f = frame(9000, 7);
    a.send_with(0, NetHeader::default(), &f, true, TIMEOUT)
        .unwrap();
    let got = b.recv(0, TIMEOUT).unwrap();
    assert_eq!(got.buffers as usize, (9000 + NET_HDR_SIZE).div_ceil(512));
    assert_eq!(got.frame, f);
    // The ring keeps working afterwards.
    let f = frame(64, 8);
    a.send(0, &f, TIMEOUT).unwrap();
    assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f);
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_one_buffer_is_dropped_and_counted() {
    let p = start("nomrg", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, !(1u64 << VIRTIO_NET_F_MRG_RXBUF));
    assert_eq!(
        b.header_len(),
        NET_HDR_SIZE,
        "VERSION_1 keeps the 12-byte header"
    );
    b.post_rx(0, 512, 4).unwrap();
    a.send(0, &frame(2000, 1), TIMEOUT).unwrap();
    let small = frame(200, 2);
    a.send(0, &small, TIMEOUT).unwrap();
    let got = b.recv(0, TIMEOUT).unwrap();
    assert_eq!(got.frame, small, "the big frame must have been dropped");
    assert_eq!(stats(&p.dev_b).rx_dropped, 1);
}

#[test]
fn frames_wait_for_receive_buffers_and_a_full_wire_drops_without_blocking() {
    let p = start("wait", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, u64::MAX);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(300, i)).collect();
    for f in &frames {
        a.send(0, f, TIMEOUT).unwrap();
    }
    assert!(!b.rx_pending(0, Duration::from_millis(200)).unwrap());
    b.post_rx(0, SMALL_RX_BUFFER, 8).unwrap();
    for f in &frames {
        assert_eq!(&b.recv(0, TIMEOUT).unwrap().frame, f, "in order, none lost");
    }
    assert_eq!(stats(&p.dev_b).rx_dropped, 0);

    // B stops posting buffers: the wire (a socket buffer) fills up and A's transmissions
    // are dropped and counted, never blocking A's queue.
    let big = frame(60_000, 9);
    for _ in 0..400 {
        a.send(0, &big, TIMEOUT).unwrap();
    }
    assert!(stats(&p.dev_a).tx_dropped > 0, "{:?}", stats(&p.dev_a));
}

#[test]
fn malformed_transmit_chains_are_dropped_and_counted() {
    let p = start("badtx", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, u64::MAX);
    b.post_rx(0, SMALL_RX_BUFFER, 8).unwrap();
    let tx = usize::from(tx_queue(0));
    let drv = a.driver();
    let buf = drv.alloc(4096, 16).unwrap();
    let d = RawDesc::new;
    let forged = [
        // Header only: no Ethernet frame.
        vec![d(buf.addr.0, 12, 0, RawNext::Zero)],
        // Shorter than the header.
        vec![d(buf.addr.0, 4, 0, RawNext::Zero)],
        // A device-writable descriptor in a transmit chain.
        vec![
            d(buf.addr.0, 12, VRING_DESC_F_NEXT as u16, RawNext::Rel(1)),
            d(
                buf.addr.0 + 64,
                100,
                VRING_DESC_F_WRITE as u16,
                RawNext::Zero,
            ),
        ],
        // Outside guest memory.
        vec![d(0xdead_0000_0000, 200, 0, RawNext::Zero)],
        // Larger than any frame.
        vec![d(buf.addr.0, 1 << 20, 0, RawNext::Zero)],
        // A descriptor loop.
        vec![
            d(buf.addr.0, 12, VRING_DESC_F_NEXT as u16, RawNext::Rel(1)),
            d(
                buf.addr.0 + 64,
                100,
                VRING_DESC_F_NEXT as u16,
                RawNext::Rel(0),
            ),
        ],
        // `next` beyond the descriptor table.
        vec![d(
            buf.addr.0,
            200,
            VRING_DESC_F_NEXT as u16,
            RawNext::Abs(5000),
        )],
    ];
    for (i, chain) in forged.iter().enumerate() {
        let done = drv
            .submit_raw_and_wait(tx, chain, 1000 + i as u64, TIMEOUT)
            .expect("a malformed chain is still completed");
        assert_eq!((done.token, done.len), (1000 + i as u64, 0));
    }
    let s = stats(&p.dev_a);
    assert_eq!(
        (s.tx_malformed, s.tx_frames),
        (forged.len() as u64, 0),
        "{s:?}"
    );
    // Nothing reached B; a good frame still goes through.
    assert!(!b.rx_pending(0, Duration::from_millis(200)).unwrap());
    let f = frame(100, 3);
    a.send(0, &f, TIMEOUT).unwrap();
    assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f);
}

#[test]
fn a_malformed_receive_chain_is_completed_empty_and_the_frame_dropped() {
    let p = start("badrx", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let mut b = connect(&p.b, 1, u64::MAX);
    let rx = usize::from(rx_queue(0));
    {
        let drv = b.driver();
        let buf = drv.alloc(2048, 16).unwrap();
        // Device-readable: a receive buffer the device may not write.
        drv.submit(rx, &[Segment::readable(buf.addr, 2048)], false, 77)
            .unwrap();
        drv.kick(rx).unwrap();
    }
    a.send(0, &frame(100, 1), TIMEOUT).unwrap();
    let done = b.driver().wait(rx, TIMEOUT).unwrap();
    assert_eq!((done.token, done.len), (77, 0));
    {
        // A writable descriptor looping onto itself.
        let drv = b.driver();
        let buf = drv.alloc(64, 16).unwrap();
        let looped = [RawDesc::new(
            buf.addr.0,
            64,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            RawNext::Rel(0),
        )];
        drv.submit_raw(rx, &looped, false, 78).unwrap();
        drv.kick(rx).unwrap();
    }
    a.send(0, &frame(2000, 1), TIMEOUT).unwrap();
    let done = b.driver().wait(rx, TIMEOUT).unwrap();
    assert_eq!((done.token, done.len), (78, 0));
    let s = stats(&p.dev_b);
    assert_eq!(
        (s.rx_bad_chains, s.rx_dropped, s.rx_frames),
        (2, 2, 0),
        "{s:?}"
    );
    b.post_rx(0, SMALL_RX_BUFFER, 2).unwrap();
    let f = frame(100, 2);
    a.send(0, &f, TIMEOUT).unwrap();
    assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f);
}

#[test]
fn two_queue_pairs_are_separate_wires() {
    let p = start("mq", 2, 1);
    let mut a = connect(&p.a, 2, u64::MAX);
    let mut b = connect(&p.b, 2, u64::MAX);
    assert_ne!(a.driver().features() & (1 << VIRTIO_NET_F_MQ), 0);
    assert_eq!(
        u16::from_le(a.read_config().unwrap().max_virtqueue_pairs),
        2
    );
    b.post_rx(0, SMALL_RX_BUFFER, 4).unwrap();
    b.post_rx(1, SMALL_RX_BUFFER, 4).unwrap();
    let (f0, f1) = (frame(100, 0), frame(200, 1));
    a.send(1, &f1, TIMEOUT).unwrap();
    a.send(0, &f0, TIMEOUT).unwrap();
    assert_eq!(b.recv(1, TIMEOUT).unwrap().frame, f1);
    assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f0);
}

#[test]
fn the_backend_serves_again_after_a_frontend_leaves() {
    let p = start("again", 1, 2);
    let mut b = connect(&p.b, 1, u64::MAX);
    b.post_rx(0, SMALL_RX_BUFFER, 8).unwrap();
    for round in 0..2u8 {
        let mut a = connect(&p.a, 1, u64::MAX);
        let f = frame(500, round);
        a.send(0, &f, TIMEOUT).unwrap();
        assert_eq!(b.recv(0, TIMEOUT).unwrap().frame, f, "connection {round}");
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_legacy_driver_uses_the_10_byte_header_both_ways() {
    let p = start("legacy", 1, 1);
    let mut a = connect(&p.a, 1, u64::MAX);
    let opts = DriverOptions {
        num_queues: 2,
        features: !((1u64 << 32) | (1 << VIRTIO_NET_F_MRG_RXBUF)),
        required_features: 0,
        queue_size: 64,
        ..DriverOptions::default()
    };
    let mut b = NetDriver::connect(&p.b, TIMEOUT, opts).expect("connect");
    assert_eq!(b.header_len(), 10);
    a.post_rx(0, SMALL_RX_BUFFER, 4).unwrap();
    b.post_rx(0, SMALL_RX_BUFFER, 4).unwrap();
    let f = frame(700, 1);
    a.send(0, &f, TIMEOUT).unwrap();
    let got = b.recv(0, TIMEOUT).unwrap();
    assert_eq!((got.frame, got.buffers), (f, 1));
    let f = frame(900, 2);
    b.send_with(0, NetHeader::default(), &f, true, TIMEOUT)
        .unwrap();
    assert_eq!(a.recv(0, TIMEOUT).unwrap().frame, f);
}

//! The userspace driver and frontend session against `qemu-storage-daemon`, the C reference
//! vhost-user-blk backend: proves them independently of our own backend.

mod common;

use std::time::Duration;

use common::{Qsd, pattern};
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::Bytes;
use vu_frontend::{FrontendOptions, FrontendSession, VHOST_USER_F_PROTOCOL_FEATURES};
use vu_spec::blk::{
    DiscardWriteZeroesSegment, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vu_testkit::driver::blk::{BlkDriver, BlkRequest};
use vu_testkit::driver::{Driver, DriverOptions, Segment};

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(10);

fn blk(q: &Qsd, num_queues: usize) -> BlkDriver {
    let opts = DriverOptions {
        num_queues,
        ..DriverOptions::default()
    };
    BlkDriver::connect(&q.socket, T, opts).expect("connect driver")
}

fn expected(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(pattern).collect()
}

#[test]
fn negotiates_and_reads_config() {
    let q = Qsd::start(8 * MIB, 1);
    let s = FrontendSession::connect(&q.socket, T).expect("connect");
    let pf = s.protocol_features();
    assert!(pf.contains(VhostUserProtocolFeatures::REPLY_ACK), "{pf:?}");
    assert!(pf.contains(VhostUserProtocolFeatures::CONFIG), "{pf:?}");
    assert!(pf.contains(VhostUserProtocolFeatures::MQ), "{pf:?}");
    assert_eq!(s.num_queues(), 1);
    assert_eq!(s.device_features() & VHOST_USER_F_PROTOCOL_FEATURES, 0);
    assert_ne!(s.device_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    drop(s);

    let mut b = blk(&q, 1);
    assert_eq!(b.capacity_bytes(), 8 * MIB);
    let cfg = b.read_config().expect("config");
    assert_eq!({ cfg.capacity }, 8 * MIB / 512);
    assert_eq!({ cfg.blk_size }, 512);
    assert_ne!(
        b.driver().features() & (1 << VIRTIO_RING_F_EVENT_IDX),
        0,
        "EVENT_IDX negotiated"
    );
}

#[test]
fn read_write_flush_round_trip() {
    let q = Qsd::start(8 * MIB, 1);
    let mut b = blk(&q, 1);

    let got = b.read(0, 8, 4096).expect("read");
    assert_eq!(got, expected(8 * 512, 4096), "read returns the image bytes");

    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8 ^ 0x5a).collect();
    b.write(0, 100, &data).expect("write");
    b.flush(0).expect("flush");
    assert_eq!(
        q.image_bytes(100 * 512, data.len()),
        data,
        "bytes landed in the file"
    );
    assert_eq!(
        q.image_bytes(99 * 512, 512),
        expected(99 * 512, 512),
        "neighbour untouched"
    );
    assert_eq!(b.read(0, 100, 8192).expect("read back"), data);

    // The same through an indirect table, and a read straddling written/unwritten sectors.
    let req = BlkRequest {
        request_type: VIRTIO_BLK_T_IN,
        sector: 98,
        out: &[],
        in_len: 2048,
    };
    let r = b.execute(0, &req, true).expect("indirect read");
    assert_eq!(r.status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(r.used_len, 2048 + 1, "data + status written");
    let mut want = expected(98 * 512, 1024);
    want.extend_from_slice(&data[..1024]);
    assert_eq!(r.data, want);
}

/// The C backend with REPLY_ACK left out of the negotiation (what a backend that does not
/// offer it looks like to the frontend): config, reads, writes and a ring stop/restart work,
/// synchronised by the session's GET_FEATURES barriers alone.
#[test]
fn without_reply_ack() {
    let q = Qsd::start(8 * MIB, 1);
    let opts = FrontendOptions {
        protocol_features: vu_frontend::supported_protocol_features()
            - VhostUserProtocolFeatures::REPLY_ACK,
        ..FrontendOptions::default()
    };
    let s = FrontendSession::connect_with(&q.socket, T, opts).expect("connect");
    assert!(
        !s.protocol_features()
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
    );
    let drv = Driver::new(s, DriverOptions::default()).expect("driver");
    let mut b = BlkDriver::new(drv).expect("blk driver");
    assert_eq!(b.capacity_bytes(), 8 * MIB);
    assert_eq!({ b.read_config().expect("config").blk_size }, 512);

    assert_eq!(b.read(0, 8, 4096).expect("read"), expected(8 * 512, 4096));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 29 % 256) as u8 ^ 0xa5).collect();
    b.write(0, 40, &data).expect("write");
    b.flush(0).expect("flush");
    assert_eq!(q.image_bytes(40 * 512, data.len()), data, "bytes landed");
    assert_eq!(b.read(0, 40, 4096).expect("read back"), data);
}

#[test]
fn write_zeroes_discard_and_get_id() {
    let q = Qsd::start(8 * MIB, 1);
    let mut b = blk(&q, 1);
    let seg = DiscardWriteZeroesSegment {
        sector: 16,
        num_sectors: 8,
        flags: 0,
    };
    b.write_zeroes(0, &[seg]).expect("write zeroes");
    b.flush(0).expect("flush");
    assert_eq!(b.read(0, 16, 4096).expect("read"), vec![0u8; 4096]);
    assert_eq!(q.image_bytes(16 * 512, 4096), vec![0u8; 4096]);
    assert_eq!(q.image_bytes(24 * 512, 512), expected(24 * 512, 512));

    let seg = DiscardWriteZeroesSegment {
        sector: 2048,
        num_sectors: 2048,
        flags: 0,
    };
    b.discard(0, &[seg]).expect("discard");

    let id = b.get_id(0).expect("get id");
    // qemu-storage-daemon 7.2 answers a fixed string.
    assert_eq!(id, b"vhost_user_blk");
}

#[test]
fn two_queues_with_many_requests_in_flight() {
    let q = Qsd::start(16 * MIB, 2);
    let mut b = blk(&q, 2);
    assert_eq!(b.driver().num_queues(), 2);
    assert_ne!(b.driver().features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!({ b.config().num_queues }, 2);

    // 32 writes per queue in flight at once, one kick per queue.
    let mut slots = Vec::new();
    for i in 0..64u64 {
        let qi = (i % 2) as usize;
        let slot = b.alloc_slot(4096).expect("slot");
        let fill = vec![i as u8 + 1; 4096];
        b.driver().write(slot.data_addr(), &fill).expect("fill");
        b.submit_slot(qi, &slot, VIRTIO_BLK_T_OUT, i * 8, 4096, i % 4 == 0, i)
            .expect("submit");
        slots.push(slot);
    }
    for qi in 0..2 {
        b.driver().notify(qi).expect("notify");
    }
    let mut seen = [false; 64];
    for qi in 0..2 {
        for _ in 0..32 {
            let c = b.driver().wait(qi, T).expect("completion");
            assert_eq!(
                c.token % 2,
                qi as u64,
                "completion on the queue it was sent to"
            );
            assert!(!seen[c.token as usize], "token {} completed twice", c.token);
            seen[c.token as usize] = true;
            assert_eq!(b.slot_status(&slots[c.token as usize]).expect("status"), 0);
        }
    }
    b.flush(1).expect("flush");
    for i in 0..64u64 {
        assert_eq!(
            q.image_bytes(i * 4096, 4096),
            vec![i as u8 + 1; 4096],
            "block {i}"
        );
    }
    let stats = b.driver().queue(0).expect("q0").stats();
    assert_eq!(stats.completed, 32);
    assert_eq!(stats.spurious, 0);
    assert!(stats.kicks <= 2, "one kick for a batch: {stats:?}");
}

#[test]
fn stop_resume_and_reset_vrings() {
    let q = Qsd::start(4 * MIB, 1);
    let mut b = blk(&q, 1);
    for i in 0..5 {
        b.read(0, i, 512).expect("read");
    }
    let base = b.driver().session().stop_vring(0).expect("GET_VRING_BASE");
    assert_eq!(base, 5);
    assert_eq!(b.driver().session().saved_vring_base(0), Some(5));

    // Resumed at the saved base, the ring keeps working.
    b.driver().session().resume_vring(0).expect("resume");
    assert_eq!(b.driver().session().saved_vring_base(0), None);
    assert_eq!(b.read(0, 2, 512).expect("read"), expected(2 * 512, 512));
    assert_eq!(b.driver().session().stop_vring(0).expect("stop"), 6);

    // Reset stops everything and forgets the negotiated state.
    b.driver().session().resume_vring(0).expect("resume");
    b.driver().session().reset().expect("reset");
    assert_eq!(b.driver().session().acked_features(), None);
    assert!(
        b.driver().session().resume_vring(0).is_err(),
        "nothing to resume"
    );
}

#[test]
fn backend_death_is_reported_and_reconnect_restores_rings() {
    let mut q = Qsd::start(4 * MIB, 1);
    let mut b = blk(&q, 1);
    b.write(0, 0, &[0xabu8; 512]).expect("write");
    q.kill();

    // A request made while the backend is dead: published, never completed.
    let slot = b.alloc_slot(512).expect("slot");
    b.driver()
        .write(slot.data_addr(), &[0xcdu8; 512])
        .expect("fill");
    b.submit_slot(0, &slot, VIRTIO_BLK_T_OUT, 1, 512, false, 99)
        .expect("submit");
    b.driver().notify(0).expect("kick lands in an eventfd");
    assert!(
        !b.driver().session().check_alive(),
        "hang-up seen without a request"
    );
    let err = b
        .driver()
        .session()
        .get_config(0, 8)
        .expect_err("backend is dead");
    assert!(err.is_backend_gone(), "{err}");
    assert!(!b.driver().session().is_connected());
    let err = b.read_config().expect_err("still dead");
    assert!(err.is_backend_gone(), "{err}");

    q.spawn();
    b.driver().reconnect(T).expect("reconnect");
    assert!(b.driver().session().is_connected());
    let c = b.driver().wait(0, T).expect("pending request completes");
    assert_eq!(c.token, 99);
    assert_eq!(b.slot_status(&slot).expect("status"), 0);
    b.flush(0).expect("flush");
    assert_eq!(q.image_bytes(0, 512), vec![0xab; 512]);
    assert_eq!(q.image_bytes(512, 512), vec![0xcd; 512]);
    assert_eq!(b.read(0, 0, 1024).expect("read").len(), 1024);

    // A forced reconnect while the backend is alive hangs up first, so it does not wait for
    // the backend to drop the old connection.
    assert!(b.driver().session().check_alive());
    b.driver().reconnect(T).expect("forced reconnect");
    assert_eq!(b.read(0, 1, 512).expect("read"), vec![0xcd; 512]);
}

#[test]
fn large_memory_tables_go_region_by_region() {
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
    let q = Qsd::start(1 << 20, 1);
    let mut s = FrontendSession::connect(&q.socket, T).expect("connect");
    assert!(
        s.protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    );
    let features = s.device_features();
    s.set_features(features).expect("features");
    let regions: Vec<_> = (0..10u64)
        .map(|i| {
            let fd = nix::sys::memfd::memfd_create(c"r", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .expect("memfd");
            let f = std::fs::File::from(fd);
            f.set_len(0x10000).expect("len");
            (
                GuestAddress(i * 0x100000),
                0x10000,
                Some(FileOffset::new(f, 0)),
            )
        })
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files(regions).expect("mem");
    s.set_mem_table(&mem).expect("10 regions via ADD_MEM_REG");
    assert_eq!(s.mem_table().len(), 10);
    s.set_mem_table(&mem)
        .expect("replaced: REM_MEM_REG then ADD_MEM_REG");
    let va = s
        .frontend_va(GuestAddress(0x900010), 0x100)
        .expect("last region");
    assert_eq!(va, s.mem_table()[9].frontend_va + 0x10);
    assert!(
        s.frontend_va(GuestAddress(0x90fff0), 0x100).is_err(),
        "crosses the end"
    );
    assert!(s.check_alive());
}

#[test]
fn raw_segments_reach_the_device() {
    // A hand-built chain splitting the data over three descriptors.
    let q = Qsd::start(4 * MIB, 1);
    let mut b = blk(&q, 1);
    let slot = b.alloc_slot(1536).expect("slot");
    let hdr = vu_spec::blk::RequestHeader {
        request_type: VIRTIO_BLK_T_IN,
        reserved: 0,
        sector: 3,
    };
    let d = b.driver();
    d.memory().write_obj(hdr, slot.header_addr()).expect("hdr");
    let data = slot.data_addr();
    let segs = [
        Segment::readable(slot.header_addr(), 16),
        Segment::writable(data, 100),
        Segment::writable(vm_memory::GuestAddress(data.0 + 100), 900),
        Segment::writable(vm_memory::GuestAddress(data.0 + 1000), 536),
        Segment::writable(slot.status_addr(), 1),
    ];
    d.submit(0, &segs, false, 1).expect("submit");
    d.notify(0).expect("notify");
    let c = d.wait(0, T).expect("done");
    assert_eq!(c.len, 1537);
    assert_eq!(d.read(data, 1536).expect("read"), expected(3 * 512, 1536));
    assert_eq!(b.slot_status(&slot).expect("status"), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn connect_waits_for_a_backend_that_starts_late() {
    let dir = vu_testkit::support::TestDir::new("late");
    let sock = dir.join("late.sock");
    let t0 = std::time::Instant::now();
    let err = FrontendSession::connect(&sock, Duration::from_millis(200)).expect_err("nobody");
    assert!(matches!(err, vu_frontend::Error::Connect { .. }), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(200));

    // Start a daemon 300 ms from now on a path that does not exist yet.
    let mut q = Qsd::start(1 << 20, 1);
    q.kill();
    let late = q.socket.clone();
    let _ = std::fs::remove_file(&late);
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        q.spawn();
        q
    });
    let s = FrontendSession::connect(&late, T).expect("connects once the backend is up");
    assert_eq!(s.num_queues(), 1);
    drop(s);
    drop(starter.join().expect("starter"));
}

#[test]
fn forged_chain_with_split_header_is_served() {
    // The header split over two descriptors (legal: devices must not assume framing), built
    // with the raw API; proves forged chains reach the backend as written.
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vu_testkit::driver::{RawDesc, RawNext};
    let q = Qsd::start(1 << 20, 1);
    let mut b = blk(&q, 1);
    let hdr = b.new_header(VIRTIO_BLK_T_IN, 5).expect("header");
    let status = b.new_status().expect("status");
    let data = b.driver().alloc(512, 512).expect("data");
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let chain = [
        RawDesc {
            addr: hdr.addr.0,
            len: 8,
            flags: next,
            next: RawNext::Rel(1),
        },
        RawDesc {
            addr: hdr.addr.0 + 8,
            len: 8,
            flags: next,
            next: RawNext::Rel(2),
        },
        RawDesc {
            addr: data.addr.0,
            len: 512,
            flags: next | write,
            next: RawNext::Rel(3),
        },
        RawDesc {
            addr: status.addr.0,
            len: 1,
            flags: write,
            next: RawNext::Zero,
        },
    ];
    for indirect in [false, true] {
        let d = b.driver();
        d.write(status.addr, &[0xff]).expect("reset status");
        d.write(data.addr, &[0u8; 512]).expect("clear data");
        d.submit_raw(0, &chain, indirect, 1).expect("submit");
        d.notify(0).expect("notify");
        let c = d.wait(0, T).expect("completion");
        assert_eq!(c.len, 513);
        assert_eq!(
            d.read(status.addr, 1).expect("status"),
            vec![VIRTIO_BLK_S_OK as u8]
        );
        assert_eq!(
            d.read(data.addr, 512).expect("data"),
            expected(5 * 512, 512)
        );
    }
}

#[test]
fn silent_backends_time_out_as_gone() {
    use vu_frontend::FrontendOptions;
    let opts = FrontendOptions {
        reply_timeout: Some(Duration::from_millis(300)),
        ..FrontendOptions::default()
    };

    // Accepts, never answers: the handshake is bounded.
    let dir = vu_testkit::support::TestDir::new("mute");
    let path = dir.join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let t0 = std::time::Instant::now();
    let err = FrontendSession::connect_with(&path, T, opts.clone()).expect_err("mute");
    assert!(err.is_backend_gone(), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(holder.join());

    // A backend that stops answering mid-session (SIGSTOP), then recovers.
    let q = Qsd::start(1 << 20, 1);
    let session = FrontendSession::connect_with(&q.socket, T, opts).expect("connect");
    let mut b = BlkDriver::new(
        vu_testkit::driver::Driver::new(session, DriverOptions::default()).expect("driver"),
    )
    .expect("blk");
    q.signal(nix::sys::signal::Signal::SIGSTOP);
    let t0 = std::time::Instant::now();
    let err = b.read_config().expect_err("stopped backend");
    assert!(err.is_backend_gone(), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    q.signal(nix::sys::signal::Signal::SIGCONT);
    b.driver().reconnect(T).expect("reconnect");
    assert_eq!(b.read(0, 1, 512).expect("read"), expected(512, 512));
}

#[test]
fn works_without_event_idx_and_indirect() {
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    let q = Qsd::start(1 << 20, 1);
    let opts = DriverOptions {
        features: !((1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC)),
        queue_size: 64,
        ..DriverOptions::default()
    };
    let mut b = BlkDriver::connect(&q.socket, T, opts).expect("connect");
    assert_eq!(b.driver().features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let mut slots = Vec::new();
    for i in 0..16u64 {
        let slot = b.alloc_slot(512).expect("slot");
        b.driver()
            .write(slot.data_addr(), &[i as u8; 512])
            .expect("fill");
        b.submit_slot(0, &slot, VIRTIO_BLK_T_OUT, i, 512, false, i)
            .expect("submit");
        slots.push(slot);
    }
    b.driver().notify(0).expect("notify");
    for _ in 0..16 {
        let c = b.driver().wait(0, T).expect("completion");
        assert_eq!(b.slot_status(&slots[c.token as usize]).expect("status"), 0);
    }
    b.flush(0).expect("flush");
    for i in 0..16u64 {
        assert_eq!(q.image_bytes(i * 512, 512), vec![i as u8; 512]);
    }
    // Wrap the 64-entry ring several times with 3-descriptor chains.
    for i in 0..100u64 {
        assert_eq!(
            b.read(0, i % 16, 512).expect("read"),
            vec![(i % 16) as u8; 512]
        );
    }
}

#[test]
fn sessions_over_caller_provided_streams() {
    use vu_frontend::FrontendOptions;
    use vu_testkit::driver::Driver;
    let mut q = Qsd::start(1 << 20, 1);
    let stream = common::connect_retry(&q.socket);
    let s =
        FrontendSession::from_stream(stream, "qsd", FrontendOptions::default()).expect("negotiate");
    let mut b =
        BlkDriver::new(Driver::new(s, DriverOptions::default()).expect("driver")).expect("blk");
    b.write(0, 7, &[0x77; 512]).expect("write");
    q.kill();
    q.spawn();
    let stream = common::connect_retry(&q.socket);
    b.driver()
        .session()
        .reconnect_stream(stream)
        .expect("restore over the new stream");
    assert_eq!(b.read(0, 7, 512).expect("read"), vec![0x77; 512]);
}

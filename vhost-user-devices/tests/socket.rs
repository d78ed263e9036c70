//! The backend served in-process on a real vhost-user socket, driven by the userspace virtio
//! driver of `vu_testkit::driver`: every request type, error paths, multi-queue, reconnects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_devices::blk::{BlkDevice, Config};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::ByteValued;
use vu_daemon::serve;
use vu_spec::blk::{
    DiscardWriteZeroesSegment, RequestHeader, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vu_testkit::driver::blk::{BlkDriver, BlkRequest, STATUS_UNWRITTEN};
use vu_testkit::driver::{DriverOptions, RawDesc, RawNext};

mod common;
use common::TestDir;

const SECTORS: u64 = 2048; // 1 MiB
const TIMEOUT: Duration = Duration::from_secs(10);
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

struct Setup {
    /// Removed with the setup.
    _dir: TestDir,
    sock: PathBuf,
    image: PathBuf,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

/// Creates an image, starts the backend serving `connections` frontends in a thread.
fn start(tag: &str, read_only: bool, num_queues: u16, connections: usize) -> Setup {
    start_with(tag, read_only, false, num_queues, connections)
}

fn start_with(
    tag: &str,
    read_only: bool,
    direct_io: bool,
    num_queues: u16,
    connections: usize,
) -> Setup {
    let dir = TestDir::new(&format!("vub-sock-{}", tag));
    let image = dir.join("img");
    std::fs::write(&image, pattern((SECTORS * 512) as usize)).unwrap();
    let sock = dir.join("s");
    let config = Config {
        image: image.clone(),
        read_only,
        num_queues,
        queue_size: 256,
        direct_io,
        serial: "sock-serial".into(),
        poll_us: 50,
    };
    let device = BlkDevice::open(&config).unwrap();
    let mut listener = Listener::new(&sock, true).unwrap();
    std::thread::spawn(move || serve(&device, &mut listener, Some(connections)));
    Setup {
        _dir: dir,
        sock,
        image,
    }
}

fn connect(path: &Path, num_queues: usize, features: u64) -> BlkDriver {
    let opts = DriverOptions {
        num_queues,
        features,
        queue_size: 64,
        ..DriverOptions::default()
    };
    BlkDriver::connect(path, TIMEOUT, opts).expect("connect")
}

fn seg(sector: u64, num_sectors: u32, flags: u32) -> DiscardWriteZeroesSegment {
    DiscardWriteZeroesSegment {
        sector,
        num_sectors,
        flags,
    }
}

#[test]
fn every_request_type_through_the_socket() {
    let s = start("types", false, 2, 1);
    let mut d = connect(&s.sock, 1, u64::MAX);
    let features = d.driver().features();
    for bit in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit} not negotiated");
    }
    assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
    let cfg = d.config();
    assert_eq!({ cfg.capacity }, SECTORS);
    assert_eq!({ cfg.num_queues }, 2);
    assert_eq!({ cfg.blk_size }, 512);
    assert_eq!({ cfg.seg_max }, 254);
    assert_eq!(cfg.writeback, 1);
    assert_eq!(cfg.write_zeroes_may_unmap, 1);

    let img = pattern((SECTORS * 512) as usize);
    assert_eq!(d.read(0, 5, 8192).unwrap(), img[5 * 512..5 * 512 + 8192]);
    // Indirect descriptors.
    let r = d
        .execute(
            0,
            &BlkRequest {
                request_type: VIRTIO_BLK_T_IN,
                sector: 9,
                out: &[],
                in_len: 4096,
            },
            true,
        )
        .unwrap();
    assert_eq!((r.status, r.used_len), (OK, 4097));
    assert_eq!(r.data, img[9 * 512..9 * 512 + 4096]);

    let data: Vec<u8> = (0..12288).map(|i| (i * 13) as u8).collect();
    d.write(0, 100, &data).unwrap();
    d.flush(0).unwrap();
    assert_eq!(d.read(0, 100, 12288).unwrap(), data);
    let file = std::fs::read(&s.image).unwrap();
    assert_eq!(file[100 * 512..100 * 512 + 12288], data[..]);

    assert_eq!(d.get_id(0).unwrap(), b"sock-serial");

    d.discard(0, &[seg(200, 16, 0), seg(300, 1, 0)]).unwrap();
    d.write_zeroes(0, &[seg(400, 8, 0)]).unwrap();
    d.write_zeroes(0, &[seg(500, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)])
        .unwrap();
    let file = std::fs::read(&s.image).unwrap();
    for (start, n) in [(200usize, 16usize), (300, 1), (400, 8), (500, 8)] {
        assert!(
            file[start * 512..(start + n) * 512].iter().all(|&b| b == 0),
            "sector {start}"
        );
        assert_eq!(
            d.read(0, start as u64, (n * 512) as u32).unwrap(),
            vec![0; n * 512]
        );
    }
    assert_eq!(file[216 * 512..300 * 512], img[216 * 512..300 * 512]);
    assert_eq!(file.len(), img.len());

    // Write-through mode (CONFIG_WCE): the driver can switch it, writes still land.
    d.driver().session().set_config(32, &[0]).unwrap();
    assert_eq!(d.read_config().unwrap().writeback, 0);
    d.write(0, 7, &[0x77; 512]).unwrap();
    assert_eq!(
        std::fs::read(&s.image).unwrap()[7 * 512..8 * 512],
        [0x77; 512]
    );
    // Other config fields are read-only.
    let _ = d
        .driver()
        .session()
        .set_config(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!({ d.read_config().unwrap().capacity }, SECTORS);
}

/// Forged chains; the queue keeps working after each of them.
#[test]
fn malformed_requests_get_the_right_status_and_the_queue_keeps_working() {
    let s = start("errors", false, 1, 1);
    let mut d = connect(&s.sock, 1, u64::MAX);
    let drv = d.driver();
    let hdr = drv.alloc(16, 16).unwrap().addr;
    let data = drv.alloc(4096, 4096).unwrap().addr;
    let status = drv.alloc(1, 1).unwrap().addr;
    let (r, w, n) = (0u16, VRING_DESC_F_WRITE as u16, VRING_DESC_F_NEXT as u16);
    let set_header = |d: &mut BlkDriver, t: u32, sector: u64| {
        let h = RequestHeader {
            request_type: t,
            reserved: 0,
            sector,
        };
        d.driver().write(hdr, h.as_slice()).unwrap();
        d.driver().write(status, &[STATUS_UNWRITTEN]).unwrap();
    };
    let run = |d: &mut BlkDriver, descs: &[RawDesc]| -> (u32, u8) {
        let c = d
            .driver()
            .submit_raw_and_wait(0, descs, 1, TIMEOUT)
            .expect("no completion");
        (c.len, d.driver().read(status, 1).unwrap()[0])
    };
    let desc = RawDesc::new;
    let chain3 = |data_addr: u64, data_len: u32, data_flags: u16| {
        [
            desc(hdr.0, 16, r | n, RawNext::Rel(1)),
            desc(data_addr, data_len, data_flags | n, RawNext::Rel(2)),
            desc(status.0, 1, w, RawNext::Zero),
        ]
    };
    let outside = 0x1000u64; // below the driver memory base

    set_header(&mut d, VIRTIO_BLK_T_IN, SECTORS - 1);
    assert_eq!(
        run(&mut d, &chain3(data.0, 1024, w)),
        (1, IOERR),
        "read past the end"
    );
    set_header(&mut d, VIRTIO_BLK_T_OUT, u64::MAX);
    assert_eq!(
        run(&mut d, &chain3(data.0, 512, r)),
        (1, IOERR),
        "sector overflow"
    );
    set_header(&mut d, 0x55, 0);
    assert_eq!(
        run(&mut d, &chain3(data.0, 512, r)),
        (1, UNSUPP),
        "unknown type"
    );
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut d, &chain3(data.0, 512, r)),
        (1, IOERR),
        "read into a readable buffer"
    );
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut d, &chain3(outside, 512, w)),
        (1, IOERR),
        "data outside memory"
    );
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut d, &chain3(data.0, 100, w)),
        (1, IOERR),
        "unaligned length"
    );
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    let too_short = [desc(status.0, 1, w, RawNext::Zero)];
    assert_eq!(run(&mut d, &too_short), (1, IOERR), "status only");
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    let looping = [
        desc(hdr.0, 16, r | n, RawNext::Rel(1)),
        desc(data.0, 512, w | n, RawNext::Rel(2)),
        desc(status.0, 1, w | n, RawNext::Rel(1)),
    ];
    let (used, _) = run(&mut d, &looping);
    assert!(used <= 1, "loop: used {used}");
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    let no_status = [
        desc(hdr.0, 16, r | n, RawNext::Rel(1)),
        desc(data.0, 512, w | n, RawNext::Rel(2)),
        desc(status.0, 1, r, RawNext::Zero),
    ];
    assert_eq!(
        run(&mut d, &no_status),
        (0, STATUS_UNWRITTEN),
        "readable status"
    );
    set_header(&mut d, VIRTIO_BLK_T_IN, 0);
    let header_outside = [
        desc(outside, 16, r | n, RawNext::Rel(1)),
        desc(status.0, 1, w, RawNext::Zero),
    ];
    assert_eq!(
        run(&mut d, &header_outside),
        (1, IOERR),
        "header outside memory"
    );
    let next_outside = [desc(hdr.0, 16, r | n, RawNext::Abs(60000))];
    assert_eq!(
        run(&mut d, &next_outside).0,
        0,
        "next index outside the table"
    );

    // Still serving normally.
    let img = pattern(4096);
    assert_eq!(d.read(0, 0, 4096).unwrap(), img);
    d.write(0, 1, &[1; 512]).unwrap();
    assert_eq!(d.read(0, 1, 512).unwrap(), vec![1; 512]);
}

#[test]
fn read_only_backend_refuses_writes() {
    let s = start("ro", true, 1, 1);
    let mut d = connect(&s.sock, 1, u64::MAX);
    assert_ne!(d.driver().features() & (1 << VIRTIO_BLK_F_RO), 0);
    let before = std::fs::read(&s.image).unwrap();
    let status = |r: vu_testkit::driver::Result<()>| match r {
        Err(vu_testkit::driver::Error::DeviceStatus { status }) => status,
        other => panic!("expected a device status, got {other:?}"),
    };
    assert_eq!(status(d.write(0, 0, &[9; 512])), IOERR);
    assert_eq!(status(d.discard(0, &[seg(0, 8, 0)])), IOERR);
    assert_eq!(status(d.write_zeroes(0, &[seg(0, 8, 0)])), IOERR);
    assert_eq!(d.read(0, 0, 512).unwrap(), before[..512]);
    d.flush(0).unwrap();
    assert_eq!(std::fs::read(&s.image).unwrap(), before);
}

#[test]
fn four_queues_in_parallel_with_many_requests_in_flight() {
    let s = start("mq", false, 4, 1);
    let mut d = connect(&s.sock, 4, u64::MAX);
    assert_eq!(d.driver().num_queues(), 4);
    // 8 writes in flight on each of the 4 queues, then kick them all.
    let mut slots = Vec::new();
    for q in 0..4usize {
        for i in 0..8u64 {
            let slot = d.alloc_slot(4096).unwrap();
            let sector = (q as u64 * 8 + i) * 8;
            d.driver()
                .write(slot.data_addr(), &[(q * 8 + i as usize) as u8 + 1; 4096])
                .unwrap();
            d.submit_slot(q, &slot, VIRTIO_BLK_T_OUT, sector, 4096, false, sector)
                .unwrap();
            slots.push((q, slot));
        }
    }
    for q in 0..4 {
        d.driver().kick(q).unwrap();
    }
    let mut done = 0;
    while done < 32 {
        assert!(
            d.driver().wait_any(TIMEOUT).unwrap(),
            "timed out after {done}"
        );
        for q in 0..4 {
            while let Some(c) = d.driver().poll_used(q).unwrap() {
                assert_eq!(c.len, 1);
                done += 1;
            }
        }
    }
    for (_, slot) in &slots {
        assert_eq!(d.slot_status(slot).unwrap(), OK);
    }
    let file = std::fs::read(&s.image).unwrap();
    for n in 0..32usize {
        let at = n * 8 * 512;
        assert!(
            file[at..at + 4096].iter().all(|&b| b == n as u8 + 1),
            "request {n}"
        );
    }
    for q in 0..4 {
        assert_eq!(
            d.read(q, q as u64 * 64, 4096).unwrap(),
            vec![(q * 8) as u8 + 1; 4096]
        );
    }
}

#[test]
fn a_second_frontend_gets_fresh_state_and_sees_the_first_ones_writes() {
    let s = start("reconnect", false, 2, 3);
    {
        let mut d = connect(&s.sock, 2, u64::MAX);
        d.write(1, 10, &[0xab; 1024]).unwrap();
        d.driver().session().set_config(32, &[0]).unwrap();
        assert_eq!(d.read_config().unwrap().writeback, 0);
    }
    {
        // Without EVENT_IDX this time: negotiation starts over.
        let mut d = connect(&s.sock, 1, !(1 << VIRTIO_RING_F_EVENT_IDX));
        assert_eq!(d.driver().features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
        assert_eq!(
            d.config().writeback,
            1,
            "cache mode leaked across connections"
        );
        assert_eq!(d.read(0, 10, 1024).unwrap(), vec![0xab; 1024]);
        for i in 0..50u64 {
            d.write(0, 20 + i, &[i as u8; 512]).unwrap();
        }
    }
    let mut d = connect(&s.sock, 2, u64::MAX);
    for i in 0..50u64 {
        assert_eq!(d.read(1, 20 + i, 512).unwrap(), vec![i as u8; 512]);
    }
}

/// Large requests run on the I/O threads and complete out of order: each completion must
/// still match its request and carry its data.
#[test]
fn large_requests_in_one_batch_complete_with_the_right_data() {
    let s = start("large", false, 1, 1);
    let mut d = connect(&s.sock, 1, u64::MAX);
    let chunk = 128 * 1024u32;
    let n = (SECTORS * 512 / u64::from(chunk)) as usize;
    let img = pattern((SECTORS * 512) as usize);
    for round in 0..3u8 {
        let mut slots = Vec::new();
        for i in 0..n {
            let slot = d.alloc_slot(chunk).unwrap();
            let sector = (i as u64) * u64::from(chunk) / 512;
            let t = if round == 1 {
                VIRTIO_BLK_T_OUT
            } else {
                VIRTIO_BLK_T_IN
            };
            if round == 1 {
                d.driver()
                    .write(slot.data_addr(), &vec![i as u8 ^ 0x5a; chunk as usize])
                    .unwrap();
            }
            d.submit_slot(0, &slot, t, sector, chunk, i % 2 == 0, i as u64)
                .unwrap();
            slots.push(slot);
        }
        d.driver().kick(0).unwrap();
        let mut seen = vec![false; n];
        for _ in 0..n {
            let c = d.driver().wait(0, TIMEOUT).unwrap();
            let i = c.token as usize;
            assert!(!seen[i], "request {i} completed twice");
            seen[i] = true;
            assert_eq!(c.len, if round == 1 { 1 } else { chunk + 1 });
            assert_eq!(d.slot_status(&slots[i]).unwrap(), OK);
            if round != 1 {
                let got = d
                    .driver()
                    .read(slots[i].data_addr(), chunk as usize)
                    .unwrap();
                let at = i * chunk as usize;
                if round == 0 {
                    assert_eq!(got, img[at..at + chunk as usize], "read {i}");
                } else {
                    assert!(got.iter().all(|&b| b == i as u8 ^ 0x5a), "read-back {i}");
                }
            }
        }
        for slot in slots {
            d.free_slot(slot);
        }
    }
}

/// O_DIRECT: every data request runs on the I/O threads; bytes still land where they should.
#[test]
fn direct_io_reads_and_writes() {
    let s = start_with("direct", false, true, 1, 1);
    let mut d = connect(&s.sock, 1, u64::MAX);
    let img = pattern((SECTORS * 512) as usize);
    assert_eq!(d.read(0, 8, 8192).unwrap(), img[8 * 512..8 * 512 + 8192]);
    let data: Vec<u8> = (0..16384).map(|i| (i % 241) as u8).collect();
    // Several in flight at once.
    let mut slots = Vec::new();
    for i in 0..4u64 {
        let slot = d.alloc_slot(16384).unwrap();
        d.driver().write(slot.data_addr(), &data).unwrap();
        d.submit_slot(0, &slot, VIRTIO_BLK_T_OUT, 64 + i * 32, 16384, false, i)
            .unwrap();
        slots.push(slot);
    }
    d.driver().kick(0).unwrap();
    for _ in 0..4 {
        let c = d.driver().wait(0, TIMEOUT).unwrap();
        assert_eq!(d.slot_status(&slots[c.token as usize]).unwrap(), OK);
    }
    d.flush(0).unwrap();
    let file = std::fs::read(&s.image).unwrap();
    for i in 0..4usize {
        let at = (64 + i * 32) * 512;
        assert_eq!(file[at..at + 16384], data[..], "write {i}");
    }
}

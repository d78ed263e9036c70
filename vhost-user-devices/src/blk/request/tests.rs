//! Request handling on a mock split queue in plain guest memory: every request type and every
//! error path, checked by status byte, used length and the bytes in the image / guest buffers.

use std::io::Write;
use std::path::PathBuf;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vu_spec::blk::{
    DiscardWriteZeroesSegment, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::*;

const MEM_SIZE: u64 = 0x10_0000;
const HDR: u64 = 0x2_0000;
const DATA: u64 = 0x3_0000;
const DATA2: u64 = 0x4_0000;
const STATUS: u64 = 0x5_0000;
const SEGS: u64 = 0x6_0000;
const IMAGE_SECTORS: u64 = 64;
const W: u16 = VRING_DESC_F_WRITE as u16;
const R: u16 = 0;

struct Fixture {
    mem: Mem,
    path: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
}

fn fixture(tag: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("blk-req-{tag}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&pattern((IMAGE_SECTORS * SECTOR_SIZE) as usize))
        .unwrap();
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    Fixture {
        mem,
        path,
        _dir: TempDir(dir),
    }
}

impl Fixture {
    fn disk(&self, read_only: bool) -> Disk {
        Disk::open(&self.path, read_only, false, "serial-1234").unwrap()
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn header(&self, request_type: u32, sector: u64) {
        let h = RequestHeader {
            request_type: request_type.to_le(),
            reserved: 0,
            sector: sector.to_le(),
        };
        self.mem.write_obj(h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs the chain `descs` (addr, len, flags; NEXT added) and returns (used len, status).
    fn run(&self, disk: &Disk, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let q = MockSplitQueue::new(&self.mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)))
            .collect();
        let chain = q.build_desc_chain(&raw).unwrap();
        let used = handle_chain(
            chain,
            &self.mem,
            disk,
            RequestOptions {
                writethrough: false,
            },
        );
        (used, self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn segments(&self, segs: &[(u64, u32, u32)]) -> u32 {
        for (i, &(sector, num, flags)) in segs.iter().enumerate() {
            let s = DiscardWriteZeroesSegment {
                sector: sector.to_le(),
                num_sectors: num.to_le(),
                flags: flags.to_le(),
            };
            self.mem
                .write_obj(s, GuestAddress(SEGS + 16 * i as u64))
                .unwrap();
        }
        (segs.len() * 16) as u32
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn read_scatters_image_bytes_into_guest_buffers() {
    let f = fixture("read");
    let disk = f.disk(false);
    f.header(VIRTIO_BLK_T_IN, 3);
    let r = f.run(
        &disk,
        &[
            (HDR, 16, R),
            (DATA, 1024, W),
            (DATA2, 512, W),
            (STATUS, 1, W),
        ],
    );
    assert_eq!(r, (1536 + 1, OK));
    let img = f.image();
    let mut got = vec![0u8; 1024];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, img[3 * 512..5 * 512]);
    let mut got = vec![0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(DATA2)).unwrap();
    assert_eq!(got, img[5 * 512..6 * 512]);
}

#[test]
fn write_gathers_guest_buffers_into_the_image_and_flush_completes() {
    let f = fixture("write");
    let disk = f.disk(false);
    let a = vec![0xa5u8; 512];
    let b: Vec<u8> = (0..1024).map(|i| i as u8).collect();
    f.mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    f.mem.write_slice(&b, GuestAddress(DATA2)).unwrap();
    f.header(VIRTIO_BLK_T_OUT, 10);
    let r = f.run(
        &disk,
        &[
            (HDR, 16, R),
            (DATA, 512, R),
            (DATA2, 1024, R),
            (STATUS, 1, W),
        ],
    );
    assert_eq!(r, (1, OK));
    let img = f.image();
    assert_eq!(img[10 * 512..11 * 512], a[..]);
    assert_eq!(img[11 * 512..13 * 512], b[..]);
    assert_eq!(
        img[..10 * 512],
        pattern(10 * 512)[..],
        "bytes before the write changed"
    );
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.run(&disk, &[(HDR, 16, R), (STATUS, 1, W)]), (1, OK));
}

#[test]
fn get_id_returns_the_serial() {
    let f = fixture("getid");
    let disk = f.disk(false);
    f.mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    f.header(VIRTIO_BLK_T_GET_ID, 0);
    let r = f.run(&disk, &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
    assert_eq!(r, (21, OK));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"serial-1234");
    assert!(id[11..].iter().all(|&b| b == 0));
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeros() {
    let f = fixture("zero");
    let disk = f.disk(false);
    let len = f.segments(&[(4, 8, 0), (20, 1, 0)]);
    f.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (SEGS, len, R), (STATUS, 1, W)]),
        (1, OK)
    );
    let img = f.image();
    assert!(img[4 * 512..12 * 512].iter().all(|&b| b == 0));
    assert!(img[20 * 512..21 * 512].iter().all(|&b| b == 0));
    assert_eq!(
        img[12 * 512..20 * 512],
        pattern(21 * 512)[12 * 512..20 * 512]
    );

    for (flags, start) in [(0u32, 30u64), (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, 40)] {
        let len = f.segments(&[(start, 3, flags)]);
        f.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        assert_eq!(
            f.run(&disk, &[(HDR, 16, R), (SEGS, len, R), (STATUS, 1, W)]),
            (1, OK)
        );
        let img = f.image();
        assert!(
            img[start as usize * 512..(start as usize + 3) * 512]
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(img.len() as u64, IMAGE_SECTORS * 512, "image size changed");
    }
}

#[test]
fn bad_segments_are_rejected_before_touching_the_disk() {
    let f = fixture("segs");
    let disk = f.disk(false);
    let before = f.image();
    type Case = (u32, Vec<(u64, u32, u32)>, u8);
    let cases: [Case; 5] = [
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0), (2, 1, 1)], UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(0, 1, 2)], UNSUPP),
        (
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 1, 0), (IMAGE_SECTORS, 1, 0)],
            IOERR,
        ),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(u64::MAX, 2, 0)], IOERR),
        (
            VIRTIO_BLK_T_DISCARD,
            vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
            IOERR,
        ),
    ];
    for (t, segs, want) in cases {
        let len = f.segments(&segs);
        f.header(t, 0);
        let r = f.run(&disk, &[(HDR, 16, R), (SEGS, len, R), (STATUS, 1, W)]);
        assert_eq!(r, (1, want), "type {t} segments {segs:?}");
    }
    // Too many segments, a partial segment, none at all.
    f.header(VIRTIO_BLK_T_DISCARD, 0);
    let too_many = (MAX_SEGMENTS + 1) * 16;
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (SEGS, too_many, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (SEGS, 15, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    assert_eq!(f.run(&disk, &[(HDR, 16, R), (STATUS, 1, W)]), (1, IOERR));
    assert_eq!(f.image(), before);
}

#[test]
fn unknown_type_is_unsupported() {
    let f = fixture("unsupp");
    let disk = f.disk(false);
    f.header(0x1234, 0);
    assert_eq!(f.run(&disk, &[(HDR, 16, R), (STATUS, 1, W)]), (1, UNSUPP));
}

#[test]
fn out_of_range_and_unaligned_requests_fail() {
    let f = fixture("range");
    let disk = f.disk(false);
    for (t, sector, len, flag) in [
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS - 1, 1024, W),
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS, 512, W),
        (VIRTIO_BLK_T_IN, u64::MAX, 512, W),
        (VIRTIO_BLK_T_OUT, IMAGE_SECTORS - 1, 1024, R),
        (VIRTIO_BLK_T_IN, 0, 100, W),
        (VIRTIO_BLK_T_OUT, 0, 513, R),
    ] {
        f.header(t, sector);
        let r = f.run(&disk, &[(HDR, 16, R), (DATA, len, flag), (STATUS, 1, W)]);
        assert_eq!(r, (1, IOERR), "type {t} sector {sector} len {len}");
    }
    assert_eq!(f.image(), pattern((IMAGE_SECTORS * 512) as usize));
}

#[test]
fn wrong_direction_buffers_fail_and_stay_untouched() {
    let f = fixture("dir");
    let disk = f.disk(false);
    f.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    // IN into a device-readable buffer.
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    let mut got = [0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    // OUT from a device-writable buffer; GET_ID into a readable one.
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    f.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 20, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    assert_eq!(f.image(), pattern((IMAGE_SECTORS * 512) as usize));
}

#[test]
fn read_only_device_refuses_every_write() {
    let f = fixture("ro");
    let disk = f.disk(true);
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    let len = f.segments(&[(0, 8, 0)]);
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        f.header(t, 0);
        assert_eq!(
            f.run(&disk, &[(HDR, 16, R), (SEGS, len, R), (STATUS, 1, W)]),
            (1, IOERR)
        );
    }
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        (513, OK)
    );
    assert_eq!(f.image(), pattern((IMAGE_SECTORS * 512) as usize));
}

#[test]
fn short_or_malformed_chains() {
    let f = fixture("short");
    let disk = f.disk(false);
    // Only a status descriptor.
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(f.run(&disk, &[(STATUS, 1, W)]), (1, IOERR));
    // No writable last descriptor: nowhere to put a status.
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)])
            .0,
        0
    );
    // Header too short, or device-writable.
    assert_eq!(
        f.run(&disk, &[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    assert_eq!(
        f.run(&disk, &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)]),
        (1, IOERR)
    );
    // Zero-length status descriptor.
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)])
            .0,
        0
    );
}

#[test]
fn buffers_outside_guest_memory_fail() {
    let f = fixture("oob");
    let disk = f.disk(false);
    f.header(VIRTIO_BLK_T_IN, 0);
    for (addr, len) in [
        (MEM_SIZE, 512),
        (MEM_SIZE - 256, 512),
        (u64::MAX - 100, 512),
    ] {
        let r = f.run(&disk, &[(HDR, 16, R), (addr, len, W), (STATUS, 1, W)]);
        assert_eq!(r, (1, IOERR), "data at {addr:#x}");
    }
    // Header outside memory.
    assert_eq!(
        f.run(&disk, &[(MEM_SIZE + 4096, 16, R), (STATUS, 1, W)]),
        (1, IOERR)
    );
    // Status outside memory: no status, no crash.
    assert_eq!(
        f.run(&disk, &[(HDR, 16, R), (DATA, 512, W), (MEM_SIZE, 1, W)])
            .0,
        0
    );
}

#[test]
fn looping_chain_fails_with_ioerr() {
    let f = fixture("loop");
    let disk = f.disk(false);
    f.header(VIRTIO_BLK_T_IN, 0);
    let q = MockSplitQueue::new(&f.mem, 16);
    let n = VRING_DESC_F_NEXT as u16;
    // 0 -> 1 -> 2 -> 1 -> 2 ...
    let descs = [
        RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 512, n | W, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, n | W, 1)),
    ];
    let chain = q.build_multiple_desc_chains(&descs).unwrap();
    let used = handle_chain(
        chain,
        &f.mem,
        &disk,
        RequestOptions {
            writethrough: false,
        },
    );
    assert_eq!(used, 1);
    // The walk stops after 16 descriptors (the queue size) on descriptor 1, which still has
    // NEXT set: the chain is broken, IOERR goes to the last descriptor visited, nothing is read.
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), IOERR);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
}

#[test]
fn indirect_descriptor_table_is_followed() {
    let f = fixture("indirect");
    let disk = f.disk(false);
    f.header(VIRTIO_BLK_T_IN, 7);
    let table = GuestAddress(0x7_0000);
    let n = VRING_DESC_F_NEXT as u16;
    let inner = [
        RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 512, n | W, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, W, 0)),
    ];
    for (i, d) in inner.iter().enumerate() {
        f.mem
            .write_obj(*d, table.unchecked_add(16 * i as u64))
            .unwrap();
    }
    let q = MockSplitQueue::new(&f.mem, 16);
    let head = [RawDescriptor::from(Descriptor::new(
        table.0,
        48,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ))];
    let chain = q.build_desc_chain(&head).unwrap();
    let used = handle_chain(chain, &f.mem, &disk, RequestOptions { writethrough: true });
    assert_eq!(used, 513);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    let mut got = vec![0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, f.image()[7 * 512..8 * 512]);
}

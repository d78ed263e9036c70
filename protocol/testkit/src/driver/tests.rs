//! The driver's split queues checked against rust-vmm's device-side `virtio_queue::Queue`
//! over the same memory: layout, chains (direct, indirect, forged), EVENT_IDX both ways.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::{Allocator, memfd_memory};
use super::virtqueue::{RawDesc, RawNext, Segment, SplitQueue};

const BASE: u64 = 0x4000_0000;

fn setup(size: u16, event_idx: bool) -> (GuestMemoryMmap, Allocator, SplitQueue, Queue) {
    let mem = memfd_memory(GuestAddress(BASE), 1 << 20).expect("mem");
    let mut alloc = Allocator::new(GuestAddress(BASE), 1 << 20);
    let q = SplitQueue::new(0, size, event_idx, &mem, &mut alloc).expect("queue");
    let g = q.geometry();
    let mut dev = Queue::new(size).expect("device queue");
    dev.set_size(size);
    let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
    let (l, h) = split(g.desc);
    dev.set_desc_table_address(l, h);
    let (l, h) = split(g.avail);
    dev.set_avail_ring_address(l, h);
    let (l, h) = split(g.used);
    dev.set_used_ring_address(l, h);
    dev.set_event_idx(event_idx);
    dev.set_ready(true);
    assert!(
        dev.is_valid(&mem),
        "device accepts the driver's ring layout"
    );
    (mem, alloc, q, dev)
}

#[test]
fn device_sees_direct_and_indirect_chains_and_completions_recycle() {
    let (mem, mut alloc, mut q, mut dev) = setup(16, true);
    let free_at_start = alloc.free_bytes();
    let segs = [
        Segment::readable(GuestAddress(BASE + 0x8_0000), 16),
        Segment::writable(GuestAddress(BASE + 0x8_1000), 4096),
        Segment::writable(GuestAddress(BASE + 0x8_2000), 1),
    ];
    let h1 = q
        .add_chain(&mem, &mut alloc, &segs, false, 11)
        .expect("direct");
    let h2 = q
        .add_chain(&mem, &mut alloc, &segs, true, 22)
        .expect("indirect");
    assert_eq!(q.free_descriptors(), 16 - 4);

    let mut heads = Vec::new();
    for chain in dev.iter(&mem).expect("iter") {
        heads.push(chain.head_index());
        let got: Vec<(u64, u32, bool)> = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        let want: Vec<(u64, u32, bool)> = segs
            .iter()
            .map(|s| (s.addr.0, s.len, s.device_writes))
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(heads, vec![h1, h2]);

    dev.add_used(&mem, h2, 7).expect("used");
    dev.add_used(&mem, h1, 4097).expect("used");
    let c = q.pop_used(&mem, &mut alloc).expect("pop").expect("c");
    assert_eq!((c.head, c.len, c.token), (h2, 7, 22));
    let c = q.pop_used(&mem, &mut alloc).expect("pop").expect("c");
    assert_eq!((c.head, c.len, c.token), (h1, 4097, 11));
    assert!(q.pop_used(&mem, &mut alloc).expect("pop").is_none());
    assert_eq!(q.free_descriptors(), 16);
    assert_eq!(q.in_flight(), 0);
    assert_eq!(alloc.free_bytes(), free_at_start, "indirect table freed");
}

#[test]
fn event_idx_suppresses_kicks_and_interrupts() {
    let (mem, mut alloc, mut q, mut dev) = setup(8, true);
    let seg = [Segment::readable(GuestAddress(BASE + 0x8_0000), 8)];
    q.add_chain(&mem, &mut alloc, &seg, false, 1).expect("add");
    assert!(
        q.notify(&mem).expect("notify"),
        "avail_event 0: first chain kicks"
    );
    q.add_chain(&mem, &mut alloc, &seg, false, 2).expect("add");
    assert!(!q.notify(&mem).expect("notify"), "device did not re-arm");
    assert_eq!(q.stats().kicks_suppressed, 1);

    let heads: Vec<u16> = dev
        .iter(&mem)
        .expect("iter")
        .map(|c| c.head_index())
        .collect();
    assert_eq!(heads.len(), 2);
    assert!(!dev.enable_notification(&mem).expect("arm"), "nothing new");
    q.add_chain(&mem, &mut alloc, &seg, false, 3).expect("add");
    assert!(
        q.notify(&mem).expect("notify"),
        "device re-armed at avail_event 2"
    );

    // Interrupts: armed by enable_interrupts, suppressed by disable_interrupts.
    assert!(!q.enable_interrupts(&mem).expect("enable"));
    dev.add_used(&mem, heads[0], 0).expect("used");
    assert!(
        dev.needs_notification(&mem).expect("needs"),
        "driver asked for it"
    );
    assert!(q.pop_used(&mem, &mut alloc).expect("pop").is_some());
    q.disable_interrupts(&mem).expect("disable");
    dev.add_used(&mem, heads[1], 0).expect("used");
    assert!(
        !dev.needs_notification(&mem).expect("needs"),
        "driver is polling"
    );
    assert!(
        q.enable_interrupts(&mem).expect("enable"),
        "a completion is pending"
    );
}

#[test]
fn without_event_idx_no_notify_flag_is_honoured() {
    let (mem, mut alloc, mut q, mut dev) = setup(8, false);
    let seg = [Segment::readable(GuestAddress(BASE + 0x8_0000), 8)];
    dev.disable_notification(&mem).expect("no notify");
    q.add_chain(&mem, &mut alloc, &seg, false, 1).expect("add");
    assert!(!q.notify(&mem).expect("notify"));
    dev.enable_notification(&mem).expect("notify again");
    q.add_chain(&mem, &mut alloc, &seg, false, 2).expect("add");
    assert!(q.notify(&mem).expect("notify"));
}

#[test]
fn forged_chains_are_written_verbatim() {
    let (mem, mut alloc, mut q, _dev) = setup(8, false);
    let next = VRING_DESC_F_NEXT as u16;
    let looped = [
        RawDesc {
            addr: BASE + 0x8_0000,
            len: 16,
            flags: next,
            next: RawNext::Rel(1),
        },
        RawDesc {
            addr: u64::MAX - 4095,
            len: 4096,
            flags: next | VRING_DESC_F_WRITE as u16,
            next: RawNext::Rel(0),
        },
    ];
    let head = q.add_raw(&mem, &mut alloc, &looped, false, 5).expect("raw");
    let table = q.geometry().desc;
    let read = |i: u16| -> Descriptor {
        mem.read_obj(GuestAddress(table.0 + 16 * u64::from(i)))
            .expect("desc")
    };
    let d0 = read(head);
    let d1 = read(d0.next());
    assert_eq!(d1.next(), head, "the loop closes on the head");
    assert_eq!(d1.addr().0, u64::MAX - 4095);
    assert!(d1.is_write_only() && d1.has_next());

    let out_of_table = [RawDesc {
        addr: BASE,
        len: 1,
        flags: next,
        next: RawNext::Abs(500),
    }];
    let h = q
        .add_raw(&mem, &mut alloc, &out_of_table, false, 6)
        .expect("raw");
    assert_eq!(read(h).next(), 500);

    let bad = [RawDesc {
        addr: BASE,
        len: 1,
        flags: 0,
        next: RawNext::Rel(3),
    }];
    assert!(q.add_raw(&mem, &mut alloc, &bad, false, 7).is_err());
    assert_eq!(
        q.free_descriptors(),
        8 - 3,
        "a refused chain gives its slots back"
    );
}

#[test]
fn full_queue_is_an_error_not_a_hang() {
    let (mem, mut alloc, mut q, _dev) = setup(4, false);
    let segs = [Segment::readable(GuestAddress(BASE + 0x8_0000), 8); 3];
    q.add_chain(&mem, &mut alloc, &segs, false, 1)
        .expect("fits");
    let err = q
        .add_chain(&mem, &mut alloc, &segs, false, 2)
        .expect_err("full");
    assert!(err.to_string().contains("full"), "{err}");
    q.add_chain(&mem, &mut alloc, &segs, true, 3)
        .expect("indirect needs one slot");
}

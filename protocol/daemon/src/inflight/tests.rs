use super::*;

fn msg(num_queues: u16, queue_size: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size,
    }
}

fn tracker(num_queues: u16, queue_size: u16) -> (Tracker, File) {
    let (desc, file) = allocate(&msg(num_queues, queue_size), 8, 1024).expect("allocate");
    let copy = file.try_clone().expect("dup");
    (Tracker::map(&desc, file, 8, 1024).expect("map"), copy)
}

#[test]
fn region_size_matches_libvhost_user() {
    assert_eq!(queue_region_size(128), 2112);
    assert_eq!(queue_region_size(1), 64);
    assert_eq!(queue_region_size(4), 128);
    for q in 1..300u16 {
        assert!(queue_region_size(q) >= HEADER_SIZE + DESC_STATE_SIZE * u64::from(q));
    }
}

#[test]
fn fresh_buffer_then_normal_completions() {
    let (t, _f) = tracker(2, 8);
    assert_eq!(t.start(1, 8, 100, 108).expect("start"), None);
    for head in [3, 5, 6] {
        t.get(1, head);
    }
    assert_eq!(t.in_flight(1), 3);
    t.pre_put(1, 5);
    t.post_put(1, 5, 101);
    assert_eq!(t.in_flight(1), 2);
    assert_eq!(t.in_flight(0), 0);
}

#[test]
fn restart_resubmits_in_counter_order() {
    let (t, f) = tracker(1, 8);
    t.start(0, 8, 0, 8).expect("start");
    for head in [7, 2, 4, 0] {
        t.get(0, head);
    }
    // 2 completes; the process dies while 7, 4 and 0 are in flight.
    t.pre_put(0, 2);
    t.post_put(0, 2, 1);
    drop(t);
    let t = Tracker::map(
        &VhostUserInflight {
            mmap_size: queue_region_size(8),
            ..msg(1, 8)
        },
        f,
        8,
        1024,
    )
    .expect("map again");
    let r = t.start(0, 8, 1, 9).expect("start").expect("recovery");
    assert_eq!(r.resubmit, vec![7, 4, 0]);
    assert_eq!(r.next_avail, 4);
    // New heads get counters after the resubmitted ones.
    t.get(0, 1);
    assert_eq!(t.load64(t.desc(0, 1) + OFF_COUNTER), 4);
}

#[test]
fn death_between_used_index_and_clear() {
    let (t, _f) = tracker(1, 8);
    t.start(0, 8, 10, 18).expect("start");
    t.get(0, 1);
    t.get(0, 2);
    // Used entry for 2 published (ring used index 11), in-flight flag not cleared yet.
    t.pre_put(0, 2);
    let r = t.start(0, 8, 11, 19).expect("start").expect("recovery");
    assert_eq!(r.resubmit, vec![1]);
    assert_eq!(r.next_avail, 12);
}

#[test]
fn hostile_buffers_are_refused_or_contained() {
    let (d, f) = allocate(&msg(1, 8), 8, 1024).expect("allocate");
    let bad = VhostUserInflight {
        mmap_size: d.mmap_size + 64,
        ..d
    };
    assert!(matches!(
        Tracker::map(&bad, f.try_clone().expect("dup"), 8, 1024),
        Err(InflightError::MmapSize { .. })
    ));
    let off = VhostUserInflight {
        mmap_offset: 4096,
        ..d
    };
    assert!(matches!(
        Tracker::map(&off, f.try_clone().expect("dup"), 8, 1024),
        Err(InflightError::FileTooSmall(_))
    ));
    assert!(Tracker::map(&msg(0, 8), f.try_clone().expect("dup"), 8, 1024).is_err());
    assert!(Tracker::map(&msg(9, 8), f.try_clone().expect("dup"), 8, 1024).is_err());
    assert!(Tracker::map(&msg(1, 2048), f.try_clone().expect("dup"), 8, 1024).is_err());
    // An unsealed file could shrink under the mapping (SIGBUS): refused.
    let plain = File::from(memfd_create(c"x", MFdFlags::MFD_CLOEXEC).expect("memfd"));
    plain.set_len(d.mmap_size).expect("size");
    assert!(matches!(
        Tracker::map(&d, plain, 8, 1024),
        Err(InflightError::NotSealed)
    ));

    let t = Tracker::map(&d, f, 8, 1024).expect("map");
    // Ring larger than the buffer: untracked, no out-of-bounds access.
    assert!(t.start(0, 16, 0, 8).is_err());
    t.get(0, 12);
    assert_eq!(t.in_flight(0), 0);
    // Garbage: bogus flags, last_batch_head and version.
    t.start(0, 4, 0, 8).expect("start");
    for head in 0..8 {
        t.store8(t.desc(0, head), 0xff);
    }
    t.store8(t.desc(0, 2), 1);
    t.store16(t.base(0) + OFF_LAST_BATCH_HEAD, 0xffff);
    let r = t.start(0, 4, 3, 11).expect("start").expect("recovery");
    assert_eq!(r.resubmit, vec![2]);
    assert_eq!(r.next_avail, 4);
    t.store16(t.base(0) + OFF_VERSION, 7);
    assert!(matches!(
        t.start(0, 4, 3, 11),
        Err(InflightError::Version { .. })
    ));
    assert!(t.start(3, 4, 0, 8).is_err());
    // More in flight (1, 2 and 3) than the ring has outstanding: refused, not resumed.
    t.store16(t.base(0) + OFF_VERSION, INFLIGHT_VERSION);
    t.store8(t.desc(0, 1), 1);
    t.store8(t.desc(0, 3), 1);
    assert!(matches!(
        t.start(0, 4, 3, 4),
        Err(InflightError::Inconsistent {
            in_flight: 3,
            outstanding: 1,
            ..
        })
    ));
}

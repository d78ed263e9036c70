//! Receive path against rings forged in guest memory.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{NetBackend, Shared};
use crate::net::link::{Link, send_frame};
use crate::net::rxtx::NetStats;
use vu_daemon::BackendVring;

const SIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// `avail_event` (EVENT_IDX): after the used ring's `SIZE` elements.
const AVAIL_EVENT: u64 = USED + 4 + 8 * SIZE as u64;
const WRITE: u16 = 2;

struct Rig {
    backend: Arc<NetBackend>,
    peer: Link,
    mem: GuestMemoryMmap,
    vrings: Vec<BackendVring>,
}

fn rig(event_idx: bool) -> Rig {
    let (ours, peer) = Link::peer_pair(1).unwrap();
    let backend = Arc::new(NetBackend::new(Arc::new(Shared {
        link: ours,
        mac: None,
        queue_size: 256,
        mtu: 1500,
        stats: NetStats::default(),
    })));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    // Every offered feature: VERSION_1 (12-byte header) and MRG_RXBUF among them.
    backend.acked_features(backend.features());
    backend.set_event_idx(event_idx);
    backend.update_memory(atomic.clone()).unwrap();
    let vrings = (0..2u64)
        .map(|k| {
            let v = VringRwLock::new(atomic.clone(), 256).unwrap();
            v.set_queue_size(SIZE);
            v.set_queue_info(DESC + k * 0x400, AVAIL + k * 0x400, USED + k * 0x400)
                .unwrap();
            v.set_queue_event_idx(event_idx);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    Rig {
        backend,
        peer,
        mem,
        vrings,
    }
}

impl Rig {
    /// Offers receive buffer `index` (device-writable, `len` bytes at `addr`).
    fn offer(&self, index: u16, addr: u64, len: u32) {
        let d = DESC + 16 * u64::from(index);
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(WRITE, GuestAddress(d + 12)).unwrap();
        let slot = AVAIL + 4 + 2 * u64::from(index % SIZE);
        self.mem.write_obj(index, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(index.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// A receive-queue kick, as the worker delivers it; fails if it does not return.
    fn kick_rx(&self) {
        let (backend, vrings) = (self.backend.clone(), self.vrings.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the receive path did not return (spinning on a frame that does not fit)");
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    fn used(&self, i: u64) -> (u32, u32) {
        let at = USED + 4 + 8 * i;
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Regression (found by fuzz target chain_net): with MRG_RXBUF, a frame larger than all the
/// receive buffers offered made the receive loop spin forever holding the vring lock: the
/// chains it gave back counted as "more buffers arrived".
fn frame_larger_than_the_offered_buffers_waits_for_more(event_idx: bool) {
    let r = rig(event_idx);
    r.offer(0, 0x1000, 32);
    // Link format: 12-byte header, then 100 bytes of frame.
    let mut frame = vec![0u8; 12];
    frame.extend((0..100u8).collect::<Vec<_>>());
    assert!(send_frame(r.peer.fd(0).unwrap(), &frame).unwrap());

    r.kick_rx();
    assert_eq!(
        r.used_idx(),
        0,
        "a frame was delivered into too little room"
    );
    if event_idx {
        // The guest must kick once it adds a buffer past the one already there.
        let avail_event: u16 = r.mem.read_obj(GuestAddress(AVAIL_EVENT)).unwrap();
        assert_eq!(avail_event, 1);
    }

    r.offer(1, 0x2000, 200);
    r.kick_rx();
    assert_eq!(r.used_idx(), 2);
    assert_eq!(r.used(0), (0, 32));
    assert_eq!(r.used(1), (1, 112 - 32));
    let num_buffers: u16 = r.mem.read_obj(GuestAddress(0x1000 + 10)).unwrap();
    assert_eq!(num_buffers, 2);
    let mut tail = [0u8; 80];
    r.mem.read_slice(&mut tail, GuestAddress(0x2000)).unwrap();
    assert_eq!(tail.to_vec(), (20..100u8).collect::<Vec<_>>());
}

#[test]
fn frame_larger_than_the_offered_buffers_waits_for_more_buffers() {
    frame_larger_than_the_offered_buffers_waits_for_more(false);
}

#[test]
fn frame_larger_than_the_offered_buffers_waits_for_more_buffers_event_idx() {
    frame_larger_than_the_offered_buffers_waits_for_more(true);
}

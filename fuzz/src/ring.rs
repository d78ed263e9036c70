//! Descriptor-chain fuzzing through a backend's own `handle_event`: the guest-memory image and
//! the ring contents come from the input, the rings are those of one worker thread, laid out
//! at fixed guest addresses, and the event is one of that thread's queues.
//!
//! Input: `thread u8, event u8, flags u8, host_len u16, host[host_len], memory...`
//! - `thread`, `event`: which worker thread (modulo `queues_per_thread().len()`) and which of
//!   its vrings is kicked (modulo their number);
//! - `flags`: bit 0 EVENT_IDX; bits 1-2: queue size 16 >> n;
//! - `host`: bytes arriving from the host side before the kick (a frame for net, console
//!   input), ignored by the other devices;
//! - `memory`: guest RAM from address 0 ([`MEM_SIZE`] bytes, zero-filled past the input).
//!
//! The thread's vring `k` has its descriptor table at `k * 0x400`, its avail ring 0x100 and its
//! used ring 0x200 further ([`ring_addrs`]); buffers can be anywhere, also outside memory.

use std::sync::OnceLock;

use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vu_daemon::BackendVring;

use crate::Reader;

/// Guest RAM size.
pub const MEM_SIZE: usize = 0x10000;
/// Largest queue size used (a 256-byte descriptor table).
pub const MAX_QUEUE_SIZE: u16 = 16;

/// One decoded input.
pub struct RingInput<'a> {
    pub thread: u8,
    pub event: u8,
    pub flags: u8,
    pub host: &'a [u8],
    pub memory: &'a [u8],
}

impl<'a> RingInput<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut r = Reader::new(data);
        let (thread, event, flags) = (r.u8(), r.u8(), r.u8());
        let host_len = usize::from(r.u16());
        let host = r.bytes(host_len);
        RingInput {
            thread,
            event,
            flags,
            host,
            memory: r.rest(),
        }
    }

    pub fn event_idx(&self) -> bool {
        self.flags & 1 != 0
    }

    pub fn queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE >> ((self.flags >> 1) & 3)
    }
}

/// Descriptor table, avail ring, used ring of the thread's `k`-th vring.
pub fn ring_addrs(k: usize) -> (u64, u64, u64) {
    let base = k as u64 * 0x400;
    (base, base + 0x100, base + 0x200)
}

/// The worker thread and its queue indices an input selects.
pub fn thread_queues<B: VhostUserBackend>(
    backend: &B,
    input: &RingInput<'_>,
) -> (usize, Vec<usize>) {
    let per_thread = backend.queues_per_thread();
    let thread = usize::from(input.thread) % per_thread.len().max(1);
    let mask = per_thread.get(thread).copied().unwrap_or(0);
    let queues = (0..backend.num_queues().min(64))
        .filter(|q| mask & (1u64 << q) != 0)
        .collect();
    (thread, queues)
}

/// Sets up guest memory and the selected thread's rings from `input`, then delivers the
/// event to `backend.handle_event` as its worker thread would.
pub fn run<B>(backend: &B, input: &RingInput<'_>)
where
    B: VhostUserBackend<Bitmap = (), Vring = BackendVring>,
{
    // One mapping per process, rewritten whole for each input: the image, zeros after it
    // (the previous input's backend may have written anywhere).
    static MEM: OnceLock<GuestMemoryAtomic<GuestMemoryMmap<()>>> = OnceLock::new();
    static ZEROS: [u8; MEM_SIZE] = [0; MEM_SIZE];
    let mem = MEM.get_or_init(|| {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]);
        GuestMemoryAtomic::new(mem.expect("memory"))
    });
    let image = &input.memory[..input.memory.len().min(MEM_SIZE)];
    let guest = mem.memory();
    guest
        .write_slice(image, GuestAddress(0))
        .expect("memory image");
    guest
        .write_slice(&ZEROS[image.len()..], GuestAddress(image.len() as u64))
        .expect("memory image");
    drop(guest);

    let event_idx = input.event_idx();
    backend.acked_features(backend.features());
    backend.set_event_idx(event_idx);
    backend.update_memory(mem.clone()).expect("update_memory");

    let (thread, queues) = thread_queues(backend, input);
    if queues.is_empty() {
        return;
    }
    let max = u16::try_from(backend.max_queue_size()).unwrap_or(u16::MAX);
    let vrings: Vec<BackendVring> = (0..queues.len())
        .map(|k| {
            let v = VringRwLock::new(mem.clone(), max).expect("vring");
            let (desc, avail, used) = ring_addrs(k);
            v.set_queue_size(input.queue_size());
            v.set_queue_info(desc, avail, used).expect("ring addresses");
            v.set_queue_event_idx(event_idx);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    let event = usize::from(input.event) % vrings.len();
    // Errors are the backend's to report; a panic, hang or bad access is what is looked for.
    let _ = backend.handle_event(event as u16, EventSet::IN, &vrings, thread);
}

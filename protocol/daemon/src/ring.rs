//! Taking requests off a split virtqueue without letting a broken ring wedge the worker.
//!
//! virtio-queue's `pop_descriptor_chain` answers `None` both for "nothing available" and for
//! a ring it cannot read (the avail index more than a queue size ahead of the device's
//! position, a ring at guest address 0, an avail ring outside guest memory), logging an error
//! each time. With EVENT_IDX, `enable_notification` keeps reporting "more available" for such
//! a ring, so a backend's process loop used to spin forever holding the vring lock, logging
//! hundreds of thousands of lines a second, deaf to GET_VRING_BASE and to its exit event.
//!
//! [`pop_chain`] tells the two apart. A broken ring puts the queue in a broken state: it is
//! marked not ready (one log line), every later processing round returns at once, and
//! [`reenable_notifications`](super::backend_util::reenable_notifications) reports nothing
//! more to do. This is the device-side half of virtio's NEEDS_RESET; a backend without
//! BACKEND_REQ cannot tell the frontend, so the queue stays stopped until the frontend sets it
//! up again (SET_VRING_ADDR/BASE/KICK re-initialise it) or the next connection starts afresh.

use std::num::Wrapping;
use std::ops::Deref;
use std::sync::atomic::Ordering;

use vhost_user_backend::VringState;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};

use crate::BackendMemory;
use crate::backend_util::reenable_notifications;

/// The next available descriptor chain of `queue`, or `None` when there is none or the
/// queue is not (or no longer) running. A broken ring stops the queue (see the module
/// documentation); it is reported by one warning per queue.
pub fn pop_chain<M>(queue: &mut Queue, mem: M) -> Option<DescriptorChain<M>>
where
    M: Clone + Deref,
    M::Target: GuestMemory,
{
    if !queue.ready() {
        return None;
    }
    let next_avail = queue.next_avail();
    let size = queue.size();
    let avail_ring = queue.avail_ring();
    let avail_idx = queue.avail_idx(mem.deref(), Ordering::Acquire);
    let err = match queue.iter(mem) {
        Ok(mut iter) => match iter.next() {
            Some(chain) => return Some(chain),
            // The iterator also ends when it cannot read the avail ring entry.
            None => match avail_idx {
                Ok(idx) if idx == Wrapping(next_avail) => return None,
                _ => "avail ring entry unreadable".to_string(),
            },
        },
        Err(e) => e.to_string(),
    };
    let idx = avail_idx.map_or("unreadable".to_string(), |i| i.0.to_string());
    // One line per break; rate-limited all the same, since a frontend can restart the queue
    // (SET_VRING_KICK/CALL) and the guest break it again.
    crate::log_limited!(
        log::Level::Warn,
        "virtqueue (avail ring {avail_ring:#x}, size {size}): broken ring ({err}; avail index \
         {idx}, device at {next_avail}): queue stopped until the frontend sets it up again"
    );
    queue.set_ready(false);
    None
}

/// Chains a worker takes off one queue in one processing round, before it lets its event loop
/// run again.
pub const ROUND_CHAINS: u32 = 512;

/// The allowance of one processing round of one queue ([`ROUND_CHAINS`] chains).
///
/// A queue that always has another chain (a guest that keeps it full, or a ring whose used
/// entries or status bytes land on its own avail index, as a fuzzer found for
/// vhost-user-blk) kept a worker inside one `handle_event` for ever: holding the vring lock,
/// so `GET_VRING_BASE` waited for ever, and deaf to its exit event, so the end of the
/// connection (which joins the workers) never completed and no later frontend was served.
/// A round takes at most its allowance; then [`again`](Self::again) makes the worker come
/// back to the queue after its event loop has looked at the events pending meanwhile, by
/// signalling the queue's kick eventfd.
pub struct Round {
    left: u32,
}

impl Round {
    pub fn new() -> Self {
        Round { left: ROUND_CHAINS }
    }

    /// [`pop_chain`], or `None` once this round has taken its allowance.
    pub fn pop<M>(&mut self, queue: &mut Queue, mem: M) -> Option<DescriptorChain<M>>
    where
        M: Clone + Deref,
        M::Target: GuestMemory,
    {
        if !self.take() {
            return None;
        }
        pop_chain(queue, mem)
    }

    /// Counts one unit of work that is not a [`pop`](Self::pop) (a frame from the host side,
    /// whose chains are taken elsewhere); false once the allowance is spent.
    pub fn take(&mut self) -> bool {
        self.left.checked_sub(1).map(|l| self.left = l).is_some()
    }

    /// Whether this round has taken its allowance.
    pub fn spent(&self) -> bool {
        self.left == 0
    }

    /// The end of a pass over the queue: true if the worker must go over it again now (with
    /// EVENT_IDX, chains arrived while notifications were re-enabled). Once the allowance is
    /// spent it answers false and signals the queue's kick, so the rest is served on the
    /// event loop's next round.
    pub fn again(
        &self,
        state: &mut VringState<BackendMemory>,
        mem: &GuestMemoryMmap<()>,
        event_idx: bool,
    ) -> bool {
        if self.spent() {
            self.finish(state);
            return false;
        }
        event_idx && reenable_notifications(state, mem)
    }

    /// For a worker that stops taking chains by itself (no more data to deliver, a full
    /// output): if the allowance is what stopped it, signals the queue's kick so that it
    /// comes back.
    pub fn finish(&self, state: &VringState<BackendMemory>) {
        if self.spent()
            && let Err(e) = state.kick_again()
        {
            crate::log_limited!(log::Level::Error, "cannot signal the queue again: {e}");
        }
    }
}

impl Default for Round {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn setup(avail: u64) -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        (mem, q)
    }

    #[test]
    fn empty_ring_is_not_broken() {
        let (mem, mut q) = setup(AVAIL);
        assert!(pop_chain(&mut q, &mem).is_none());
        assert!(q.ready());
    }

    #[test]
    fn one_request_then_empty() {
        let (mem, mut q) = setup(AVAIL);
        // Descriptor 0: 16 bytes at 0x4000, no flags; avail ring [0], idx 1.
        mem.write_obj(0x4000u64, GuestAddress(DESC)).unwrap();
        mem.write_obj(16u32, GuestAddress(DESC + 8)).unwrap();
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(pop_chain(&mut q, &mem).map(|c| c.head_index()), Some(0));
        assert!(pop_chain(&mut q, &mem).is_none());
        assert!(q.ready());
    }

    #[test]
    fn avail_index_too_far_ahead_stops_the_queue() {
        let (mem, mut q) = setup(AVAIL);
        mem.write_obj(17u16, GuestAddress(AVAIL + 2)).unwrap();
        assert!(pop_chain(&mut q, &mem).is_none());
        assert!(!q.ready());
        // Stays stopped, silently.
        assert!(pop_chain(&mut q, &mem).is_none());
    }

    #[test]
    fn a_round_takes_at_most_its_allowance() {
        let (mem, mut q) = setup(AVAIL);
        // One descriptor, offered again and again: the avail index always one ahead.
        mem.write_obj(0x4000u64, GuestAddress(DESC)).unwrap();
        mem.write_obj(16u32, GuestAddress(DESC + 8)).unwrap();
        let mut round = Round::new();
        let mut taken = 0;
        loop {
            let next = q.next_avail();
            mem.write_obj(next.wrapping_add(1), GuestAddress(AVAIL + 2))
                .unwrap();
            if round.pop(&mut q, &mem).is_none() {
                break;
            }
            q.add_used(&mem, 0, 0).unwrap();
            taken += 1;
        }
        assert_eq!(taken, ROUND_CHAINS);
        assert!(round.spent());
        assert!(q.ready());
    }

    #[test]
    fn ring_at_address_zero_stops_the_queue() {
        let (mem, mut q) = setup(0);
        mem.write_obj(1u16, GuestAddress(2)).unwrap();
        assert!(pop_chain(&mut q, &mem).is_none());
        assert!(!q.ready());
    }
}

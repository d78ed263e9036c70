//! Pieces every [`VhostUserBackend`](vhost_user_backend::VhostUserBackend) implementation needs
//! the same way: the guest memory slot, the EVENT_IDX flag, config-space reads and ignored
//! writes, the per-worker exit event, used-ring notification and the common feature bits.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VringState;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::BackendMemory;

/// VERSION_1, INDIRECT_DESC, EVENT_IDX and vhost-user PROTOCOL_FEATURES: what every backend
/// that processes its rings with [`EventIdx`] offers besides its device bits.
pub const RING_FEATURES: u64 = (1u64 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Largest virtqueue size (virtio split ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Whether `--queue-size` is acceptable: a power of two from 2 to [`MAX_QUEUE_SIZE`].
pub fn valid_queue_size(n: u16) -> bool {
    (2..=MAX_QUEUE_SIZE).contains(&n) && n.is_power_of_two()
}

/// The vhost-user protocol features vhost-user-backend really handles: MQ, REPLY_ACK,
/// CONFIGURE_MEM_SLOTS, and CONFIG when the device has a config space (`with_config`).
pub fn protocol_features(with_config: bool) -> VhostUserProtocolFeatures {
    let f = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
    if with_config {
        f | VhostUserProtocolFeatures::CONFIG
    } else {
        f
    }
}

/// The guest memory of one connection: replaced by `update_memory`, read by the workers.
pub struct MemorySlot(RwLock<BackendMemory>);

impl MemorySlot {
    /// No memory yet (an empty map until the frontend sends its table).
    pub fn new() -> Self {
        MemorySlot(RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())))
    }

    /// Replaces the memory (the body of `VhostUserBackend::update_memory`).
    pub fn update(&self, mem: BackendMemory) -> io::Result<()> {
        match self.0.write() {
            Ok(mut m) => {
                *m = mem;
                Ok(())
            }
            Err(_) => Err(io::Error::other("memory lock poisoned")),
        }
    }

    /// The memory as it is now; `None` if the lock is poisoned.
    pub fn get(&self) -> Option<Arc<GuestMemoryMmap<()>>> {
        let atomic = self.0.read().ok()?.clone();
        Some(atomic.memory().into_inner())
    }
}

impl Default for MemorySlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the driver negotiated VIRTIO_RING_F_EVENT_IDX (set by `set_event_idx`).
#[derive(Debug, Default)]
pub struct EventIdx(AtomicBool);

impl EventIdx {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, enabled: bool) {
        self.0.store(enabled, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `size` bytes of the config space `bytes` from `offset`; what lies past the layout reads as
/// zero (QEMU may ask for more than a layout holds). `None` (logged) if `offset` is beyond
/// the end of the config space.
pub fn read_config(bytes: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let start = offset as usize;
    if start > bytes.len() {
        log::debug!("config read at {offset} beyond the config space");
        return None;
    }
    let end = start.saturating_add(size as usize).min(bytes.len());
    let mut out = bytes[start..end].to_vec();
    out.resize(size as usize, 0);
    Some(out)
}

/// The body of `set_config` for read-only config space: logs at `level` and succeeds (an error
/// would make vhost-user-backend drop the whole connection).
pub fn ignore_config_write(offset: u32, buf: &[u8], level: log::Level) -> io::Result<()> {
    log::log!(
        level,
        "config write at {offset} ({} bytes) ignored: read-only field",
        buf.len()
    );
    Ok(())
}

/// The body of `exit_event`: a fresh non-blocking consumer/notifier pair (`None`, logged, if
/// it cannot be made).
pub fn new_exit_event() -> Option<(EventConsumer, EventNotifier)> {
    match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::error!("cannot create an exit event: {e}");
            None
        }
    }
}

/// Signals the driver if it wants to hear about the used entries added so far (`mem`: the
/// guest memory the entries were added with).
pub fn notify_used(state: &mut VringState<BackendMemory>, mem: &GuestMemoryMmap<()>) {
    let notify = state
        .get_queue_mut()
        .needs_notification(mem)
        .unwrap_or(true);
    if notify && let Err(e) = state.signal_used_queue() {
        crate::log_limited!(log::Level::Error, "cannot signal the used queue: {e}");
    }
}

/// Re-enables driver notifications (the end of an EVENT_IDX processing round); true if more
/// entries arrived meanwhile and the queue must be processed again. An error is logged and
/// ends the round.
pub fn reenable_notifications(
    state: &mut VringState<BackendMemory>,
    mem: &GuestMemoryMmap<()>,
) -> bool {
    // A queue that is not running (or that `ring::pop_chain` stopped as broken) has nothing
    // more to do, whatever its avail index says: looping on it would spin.
    if !state.get_queue().ready() {
        return false;
    }
    match state.get_queue_mut().enable_notification(mem) {
        Ok(more) => more,
        Err(e) => {
            crate::log_limited!(log::Level::Warn, "cannot enable notifications: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_config_pads_and_rejects_beyond_end() {
        let bytes = [1u8, 2, 3, 4];
        assert_eq!(read_config(&bytes, 1, 2), Some(vec![2, 3]));
        assert_eq!(read_config(&bytes, 2, 4), Some(vec![3, 4, 0, 0]));
        assert_eq!(read_config(&bytes, 4, 2), Some(vec![0, 0]));
        assert_eq!(read_config(&bytes, 5, 2), None);
        assert_eq!(read_config(&bytes, u32::MAX, u32::MAX), None);
    }

    #[test]
    fn memory_slot_starts_empty_and_updates() {
        use vm_memory::{GuestAddress, GuestMemoryBackend};
        let slot = MemorySlot::new();
        assert_eq!(slot.get().map(|m| m.num_regions()), Some(0));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)])
            .expect("anonymous guest memory");
        slot.update(GuestMemoryAtomic::new(mem)).expect("update");
        assert_eq!(slot.get().map(|m| m.num_regions()), Some(1));
    }

    #[test]
    fn event_idx_and_exit_event() {
        let e = EventIdx::new();
        assert!(!e.get());
        e.set(true);
        assert!(e.get());
        assert!(new_exit_event().is_some());
    }

    #[test]
    fn queue_sizes() {
        for ok in [2, 4, 256, MAX_QUEUE_SIZE] {
            assert!(valid_queue_size(ok), "{ok}");
        }
        for bad in [0, 1, 3, 100, u16::MAX] {
            assert!(!valid_queue_size(bad), "{bad}");
        }
    }

    #[test]
    fn protocol_features_config_bit() {
        assert!(protocol_features(true).contains(VhostUserProtocolFeatures::CONFIG));
        assert!(!protocol_features(false).contains(VhostUserProtocolFeatures::CONFIG));
        assert!(protocol_features(false).contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    }
}

//! Ring geometry and the per-ring state a session replays.

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::MAX_QUEUE_SIZE;
use super::error::{Error, Result};

/// Where a split virtqueue lives, in guest-physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringGeometry {
    /// Number of descriptors (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// Descriptor table (16-byte aligned, `16 * size` bytes).
    pub desc: GuestAddress,
    /// Available (driver) ring (2-byte aligned, `6 + 2 * size` bytes).
    pub avail: GuestAddress,
    /// Used (device) ring (4-byte aligned, `6 + 8 * size` bytes).
    pub used: GuestAddress,
}

impl VringGeometry {
    /// Byte sizes of (descriptor table, avail ring, used ring), event-index fields included.
    pub fn part_sizes(size: u16) -> (u64, u64, u64) {
        let n = u64::from(size);
        (16 * n, 6 + 2 * n, 6 + 8 * n)
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > MAX_QUEUE_SIZE {
            return Err(Error::State("queue size must be a power of two <= 32768"));
        }
        if !self.desc.0.is_multiple_of(16)
            || !self.avail.0.is_multiple_of(2)
            || !self.used.0.is_multiple_of(4)
        {
            return Err(Error::State("misaligned vring part"));
        }
        Ok(())
    }
}

#[derive(Default)]
pub(super) struct VringState {
    pub(super) geometry: Option<VringGeometry>,
    pub(super) call: Option<EventFd>,
    pub(super) kick: Option<EventFd>,
    /// Set up and not stopped: the backend is (or was, before it died) processing it.
    pub(super) running: bool,
    pub(super) enabled: bool,
    /// The last avail index reported by GET_VRING_BASE when the ring was stopped.
    pub(super) saved_base: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_validation() {
        let ok = VringGeometry {
            size: 256,
            desc: GuestAddress(0x1000),
            avail: GuestAddress(0x2002),
            used: GuestAddress(0x3004),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            VringGeometry { size: 0, ..ok },
            VringGeometry { size: 100, ..ok },
            VringGeometry {
                desc: GuestAddress(0x1008),
                ..ok
            },
            VringGeometry {
                used: GuestAddress(0x3002),
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(VringGeometry::part_sizes(256), (4096, 518, 2054));
    }
}

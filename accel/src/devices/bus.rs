//! Address-range dispatch for port I/O and MMIO exits.
//!
//! One [`Bus`] for port I/O and one for MMIO. A device is inserted over `[base, base+len)` and is
//! called with the offset inside its range. Accesses nobody claims are reported back to the
//! caller (`false`), which logs them at debug level and carries on (reads return all-ones).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. `offset` is relative to the base of the range it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range [{base:#x}, +{len:#x}) is empty or overflows")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range [{base:#x}, +{len:#x}) overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
    #[error("no device at bus address {0:#x}")]
    NotFound(u64),
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `[base, base+len)` for `device`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap();
        // The closest range starting below `end` is the only one that can overlap.
        if let Some((&other, entry)) = ranges.range(..end).next_back()
            && other + entry.len > base
        {
            return Err(BusError::Overlap { base, len, other });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Releases the range that starts at `base` (e.g. a PCI BAR the guest moves).
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        self.ranges
            .write()
            .unwrap()
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    fn resolve(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap();
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (addr - base, entry.device.clone()))
    }

    /// Dispatches a read; returns `false` (and fills `data` with 0xff) if nobody owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap().read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns `false` if nobody owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlaps() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9,
                other: 0x3f8
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x3ff, 1),
            Err(BusError::Overlap {
                base: 0x3ff,
                len: 1,
                other: 0x3f8
            })
        );
        bus.insert(dev.clone(), 0x400, 1).unwrap();
        bus.insert(dev.clone(), 0x3f0, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert!(!bus.write(0x401, &[1]));
        assert!(!bus.read(0x3e0, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![0x41])]);
        bus.remove(0x3f8).unwrap();
        assert!(!bus.write(0x3f8, &[0x41]));
        assert_eq!(
            bus.insert(dev, 0, 0),
            Err(BusError::InvalidRange { base: 0, len: 0 })
        );
    }
}

//! The virtio-pci common configuration structure (virtio 1.2 §4.1.4.3): feature windows,
//! device status, and per-queue setup registers selected by `queue_select`.

/// `msix_config` / `queue_msix_vector` value meaning "no vector".
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// Size of the structure accel exposes (up to and including `queue_device`).
pub const COMMON_CFG_SIZE: u64 = 0x38;

pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
pub const STATUS_DRIVER: u8 = 0x02;
pub const STATUS_DRIVER_OK: u8 = 0x04;
pub const STATUS_FEATURES_OK: u8 = 0x08;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// Guest-programmed state of one virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (defaults to `max_size`).
    pub size: u16,
    pub msix_vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueState {
    fn new(max_size: u16) -> Self {
        QueueState {
            max_size,
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What a guest write to the common configuration asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonCfgEvent {
    None,
    /// `device_status` was written with this value (0 = reset). The transport validates and
    /// commits it with [`CommonConfig::set_status`].
    Status(u8),
    /// A queue's MSI-X vector changed.
    QueueVector(u16),
    /// `msix_config` changed.
    ConfigVector,
}

/// The common configuration registers of one virtio-pci function.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    pub device_features: u64,
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub msix_config: u16,
    pub status: u8,
    pub config_generation: u8,
    queue_select: u16,
    pub queues: Vec<QueueState>,
}

impl CommonConfig {
    /// `queue_sizes`: the maximum size of each queue.
    pub fn new(device_features: u64, queue_sizes: &[u16]) -> Self {
        CommonConfig {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            msix_config: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_sizes.iter().map(|&s| QueueState::new(s)).collect(),
        }
    }

    /// Device reset: everything the driver programmed goes back to its initial value.
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = CommonConfig::new(self.device_features, &sizes);
    }

    /// Commits a new status value.
    pub fn set_status(&mut self, status: u8) {
        self.status = status;
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Guest read at `offset` (1, 2, 4 or 8 bytes). Undefined offsets read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.selected();
        let value: u64 = match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.msix_config),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            // A non-existent queue reads size 0: that is how drivers count queues.
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => q.map_or(u64::from(VIRTIO_MSI_NO_VECTOR), |q| {
                u64::from(q.msix_vector)
            }),
            0x1c => q.map_or(0, |q| u64::from(q.enabled)),
            // queue_notify_off: queue index (notify_off_multiplier spaces them).
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            0x28 => q.map_or(0, |q| q.driver),
            0x2c => q.map_or(0, |q| q.driver >> 32),
            0x30 => q.map_or(0, |q| q.device),
            0x34 => q.map_or(0, |q| q.device >> 32),
            _ => {
                log::debug!("virtio-pci: common cfg read at unknown offset {offset:#x}");
                0
            }
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// Guest write at `offset`. Returns what the transport must act on.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonCfgEvent {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(bytes);
        // Queue registers are read-only once the queue is enabled (virtio 1.2 §4.1.4.3.2:
        // the driver must not change them; ignore if it does).
        let qsel = usize::from(self.queue_select);
        let queue_locked = self.queues.get(qsel).is_none_or(|q| q.enabled);
        let set_lo = |field: &mut u64, v: u64| *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |field: &mut u64, v: u64| *field = (*field & 0xffff_ffff) | (v << 32);
        match offset {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0c => {
                // Only while the driver negotiates: not after FEATURES_OK.
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_feature_select {
                        0 => set_lo(&mut self.driver_features, v),
                        1 => set_hi(&mut self.driver_features, v & 0xffff_ffff),
                        _ => {}
                    }
                }
            }
            0x10 => {
                self.msix_config = v as u16;
                return CommonCfgEvent::ConfigVector;
            }
            0x14 => return CommonCfgEvent::Status(v as u8),
            0x16 => self.queue_select = v as u16,
            0x18 if !queue_locked => {
                let q = &mut self.queues[qsel];
                let size = v as u16;
                // Split rings: a power of two no larger than the maximum.
                if size.is_power_of_two() && size <= q.max_size {
                    q.size = size;
                } else {
                    log::debug!("virtio-pci: queue {qsel}: invalid size {size}");
                }
            }
            0x1a => {
                if let Some(q) = self.queues.get_mut(qsel) {
                    q.msix_vector = v as u16;
                    return CommonCfgEvent::QueueVector(qsel as u16);
                }
            }
            0x1c if !queue_locked => {
                // Writing 0 is not allowed (queue_reset does that); only enable.
                if v & 1 == 1 {
                    self.queues[qsel].enabled = true;
                }
            }
            0x20 if !queue_locked => {
                if n == 8 {
                    self.queues[qsel].desc = v;
                } else {
                    set_lo(&mut self.queues[qsel].desc, v);
                }
            }
            0x24 if !queue_locked => set_hi(&mut self.queues[qsel].desc, v & 0xffff_ffff),
            0x28 if !queue_locked => {
                if n == 8 {
                    self.queues[qsel].driver = v;
                } else {
                    set_lo(&mut self.queues[qsel].driver, v);
                }
            }
            0x2c if !queue_locked => set_hi(&mut self.queues[qsel].driver, v & 0xffff_ffff),
            0x30 if !queue_locked => {
                if n == 8 {
                    self.queues[qsel].device = v;
                } else {
                    set_lo(&mut self.queues[qsel].device, v);
                }
            }
            0x34 if !queue_locked => set_hi(&mut self.queues[qsel].device, v & 0xffff_ffff),
            _ => log::debug!("virtio-pci: ignored common cfg write at {offset:#x} ({n} bytes)"),
        }
        CommonCfgEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r32(c: &CommonConfig, off: u64) -> u32 {
        let mut d = [0u8; 4];
        c.read(off, &mut d);
        u32::from_le_bytes(d)
    }
    fn r16(c: &CommonConfig, off: u64) -> u16 {
        let mut d = [0u8; 2];
        c.read(off, &mut d);
        u16::from_le_bytes(d)
    }
    fn w32(c: &mut CommonConfig, off: u64, v: u32) -> CommonCfgEvent {
        c.write(off, &v.to_le_bytes())
    }
    fn w16(c: &mut CommonConfig, off: u64, v: u16) -> CommonCfgEvent {
        c.write(off, &v.to_le_bytes())
    }

    #[test]
    fn feature_windows() {
        let mut c = CommonConfig::new(0x1_0000_0246, &[128]);
        assert_eq!(r32(&c, 0x04), 0x0246);
        w32(&mut c, 0x00, 1);
        assert_eq!(r32(&c, 0x04), 1);
        w32(&mut c, 0x00, 2);
        assert_eq!(r32(&c, 0x04), 0);
        w32(&mut c, 0x08, 0);
        w32(&mut c, 0x0c, 0x46);
        w32(&mut c, 0x08, 1);
        w32(&mut c, 0x0c, 1);
        assert_eq!(c.driver_features, 0x1_0000_0046);
        assert_eq!(r32(&c, 0x0c), 1);
        assert_eq!(w16(&mut c, 0x14, 0x0b), CommonCfgEvent::Status(0x0b));
        c.set_status(0x0b);
        w32(&mut c, 0x0c, 0);
        assert_eq!(c.driver_features, 0x1_0000_0046, "frozen after FEATURES_OK");
        assert_eq!(c.status, 0x0b);
        let mut b = [0u8; 1];
        c.read(0x14, &mut b);
        assert_eq!(b, [0x0b]);
    }

    #[test]
    fn queue_select_and_enable() {
        let mut c = CommonConfig::new(0, &[256, 64]);
        assert_eq!(r16(&c, 0x12), 2);
        assert_eq!(r16(&c, 0x18), 256);
        w16(&mut c, 0x16, 1);
        assert_eq!(r16(&c, 0x18), 64);
        assert_eq!(r16(&c, 0x1e), 1);
        w16(&mut c, 0x18, 32);
        w16(&mut c, 0x18, 100);
        w16(&mut c, 0x18, 128);
        assert_eq!(r16(&c, 0x18), 32, "invalid sizes ignored");
        assert_eq!(w16(&mut c, 0x1a, 3), CommonCfgEvent::QueueVector(1));
        assert_eq!(r16(&c, 0x1a), 3);
        w32(&mut c, 0x20, 0x1000);
        w32(&mut c, 0x24, 0x1);
        c.write(0x28, &0x2_0000_2000u64.to_le_bytes());
        w32(&mut c, 0x30, 0x3000);
        w32(&mut c, 0x34, 0);
        assert_eq!(r32(&c, 0x24), 1);
        assert_eq!(r32(&c, 0x2c), 2);
        w16(&mut c, 0x1c, 1);
        assert_eq!(r16(&c, 0x1c), 1);
        // Locked once enabled.
        w32(&mut c, 0x20, 0x5000);
        w16(&mut c, 0x18, 16);
        assert_eq!(
            c.queues[1],
            QueueState {
                max_size: 64,
                size: 32,
                msix_vector: 3,
                enabled: true,
                desc: 0x1_0000_1000,
                driver: 0x2_0000_2000,
                device: 0x3000,
            }
        );
        assert!(!c.queues[0].enabled);
        // Out-of-range queue: size 0, writes ignored.
        w16(&mut c, 0x16, 5);
        assert_eq!(r16(&c, 0x18), 0);
        assert_eq!(r16(&c, 0x1a), VIRTIO_MSI_NO_VECTOR);
        w16(&mut c, 0x1c, 1);
        assert_eq!(w16(&mut c, 0x1a, 1), CommonCfgEvent::None);
        assert_eq!(w16(&mut c, 0x10, 0), CommonCfgEvent::ConfigVector);
        c.reset();
        assert_eq!(c.queues[1].size, 64);
        assert!(!c.queues[1].enabled);
        assert_eq!(c.msix_config, VIRTIO_MSI_NO_VECTOR);
        assert_eq!(c.queues.len(), 2);
    }
}

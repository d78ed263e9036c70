//! accel's virtio-pci function driven through its `PciDevice` interface, as the PCI root and
//! the MMIO bus drive it for a guest: configuration-space reads/writes (including the MSI-X
//! capability's control word and the `pci_cfg` window) and BAR 0 reads/writes (common config,
//! notify, ISR, device config, MSI-X table and PBA). The device model behind it and the
//! interrupt router only record; the device's control thread runs what the accesses queue.
//!
//! One device per process, as `chain_*` keep one guest mapping: each input starts with a
//! platform reset (`PciDevice::reset`, what `system_reset` does: virtio state, MSI-X, command
//! register) and BAR 0 back at [`BAR0`]. Creating a device per input (its control thread
//! included) held the target to about 1,200 inputs/s. What a reset leaves (other config
//! registers the input wrote) carries over, as across a guest's reboots; a crash that needs
//! it reproduces by running the corpus in order.
//!
//! Input: a sequence of operations, each `op u8, a u16, b u8, data...`:
//! - `op % 6`: 0 config write, 1 config read, 2 BAR write, 3 BAR read, 4 reset, 5 BAR 0 moved;
//! - config: register `a % 80` (some past the 64 that exist), byte offset `b >> 2 & 3`;
//! - BAR: BAR `b >> 4 & 7` (0 is the real one) at offset `a`;
//! - access size `1 << (b & 3)` (1, 2, 4, 8; more than the register holds on purpose), and
//!   for writes that many data bytes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use accel::pci::PciDevice;
use accel::pci::config::ClassCode;
use accel::pci::interrupts::{InterruptError, InterruptRouter};
use accel::pci::msix::MsiMessage;
use accel::virtio::backend::{ActiveQueue, BackendError, VirtioBackend};
use accel::virtio::device::{VirtioPciDevice, VirtioPciParams};
use vmm_sys_util::eventfd::EventFd;

use crate::Reader;

/// Where BAR 0 decodes.
pub const BAR0: u64 = 0xc000_0000;
/// Operations per input at most (bounds the run time of one input).
const MAX_OPS: usize = 512;

/// Hands out GSIs; accepts every route and registration.
#[derive(Default)]
struct NullRouter(AtomicU32);

impl InterruptRouter for NullRouter {
    fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let gsi = self.0.fetch_add(1, Ordering::Relaxed);
        if gsi >= 1024 {
            return Err(InterruptError::NoGsi);
        }
        Ok(gsi + 24)
    }
    fn set_msi_route(&self, _gsi: u32, _msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), InterruptError> {
        Ok(())
    }
    fn register_ioevent(&self, _fd: &EventFd, _addr: u64) -> Result<(), InterruptError> {
        Ok(())
    }
    fn unregister_ioevent(&self, _fd: &EventFd, _addr: u64) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// A virtio-blk-like device model with a 16-byte config space that accepts everything.
struct NullBackend {
    config: Vec<u8>,
}

impl VirtioBackend for NullBackend {
    fn device_features(&self) -> u64 {
        // VERSION_1, EVENT_IDX, INDIRECT_DESC, a few device bits.
        (1 << 32) | (1 << 29) | (1 << 28) | 0x46
    }
    fn fetch_config(&mut self, size: u32) -> Result<Vec<u8>, BackendError> {
        Ok(self.config.iter().copied().take(size as usize).collect())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        let o = offset as usize;
        if let Some(dst) = self.config.get_mut(o..o + data.len()) {
            dst.copy_from_slice(data);
        }
        Ok(())
    }
    fn activate(
        &mut self,
        _features: u64,
        _queues: &[ActiveQueue<'_>],
        _resume: bool,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn set_queue_call(&mut self, _index: u16, _call: &EventFd) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The process's device and its control handle.
struct Fixture {
    dev: Arc<Mutex<VirtioPciDevice>>,
    control: accel::virtio::control::ControlHandle,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let backend = Arc::new(Mutex::new(NullBackend {
            config: (0..16).collect(),
        }));
        let params = VirtioPciParams {
            virtio_id: 2,
            class: ClassCode {
                class: 1,
                subclass: 0,
                prog_if: 0,
            },
            num_queues: 2,
            queue_size: 128,
            config_size: 16,
            control_queue_pairs: None,
            odd_queue_size: None,
            msix_vectors: None,
            packed: false,
        };
        let dev = VirtioPciDevice::new(
            "fuzz".into(),
            params,
            BAR0,
            Arc::new(NullRouter::default()),
            backend,
        )
        .expect("virtio-pci device");
        let control = dev.lock().unwrap().control();
        Fixture { dev, control }
    })
}

/// Runs the accesses `data` describes against the process's device, reset first.
pub fn run(data: &[u8]) {
    let Fixture { dev, control } = fixture();
    {
        let mut d = dev.lock().unwrap();
        d.reset();
        d.bar_mapped(0, Some(BAR0));
    }
    let mut r = Reader::new(data);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let (op, a, b) = (r.u8(), r.u16(), r.u8());
        let len = 1usize << (b & 3);
        let mut d = dev.lock().unwrap();
        match op % 6 {
            0 => {
                let bytes = r.bytes(len);
                d.write_config(usize::from(a) % 80, u64::from(b >> 2 & 3), bytes);
            }
            1 => {
                let _ = d.read_config(usize::from(a) % 80);
            }
            2 => {
                let bytes = r.bytes(len);
                d.write_bar(usize::from(b >> 4 & 7), u64::from(a), bytes);
            }
            3 => {
                let mut buf = [0u8; 8];
                d.read_bar(usize::from(b >> 4 & 7), u64::from(a), &mut buf[..len]);
            }
            4 => d.reset(),
            _ => d.bar_mapped(0, (b & 1 == 0).then_some(BAR0)),
        }
    }
    // Let the control thread run what was queued (activation, resets) before the next input.
    assert!(
        control.flush(Duration::from_secs(10)),
        "control thread stuck"
    );
}

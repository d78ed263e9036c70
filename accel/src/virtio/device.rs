//! A virtio-pci (modern) function: configuration space with the virtio capabilities and
//! MSI-X, and BAR 0 holding the common, ISR, device-config and notify structures plus the
//! MSI-X table and PBA. The device model is a [`VirtioBackend`].
//!
//! Data path: each queue's notify address is a KVM ioeventfd (the backend's kick fd) and each
//! MSI-X vector is a KVM irqfd on its own GSI (the backend's call fd); this process only
//! handles configuration accesses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vu_spec::transport::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bit,
};

use super::backend::VirtioBackend;
use super::common_cfg::{
    COMMON_CFG_SIZE, CommonCfgEvent, CommonConfig, STATUS_ACKNOWLEDGE, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_MSI_NO_VECTOR,
};
use super::control::{BackendControl, Command, ControlHandle, OwnedQueue};
use super::frontend_queue::FrontendQueueWatch;
use crate::pci::config::{BarInfo, BarKind, ClassCode, PCI_VENDOR_ID_REDHAT, PciConfig, PciHeader};
use crate::pci::interrupts::{InterruptError, InterruptRouter};
use crate::pci::msix::{Msix, MsixChange};
use crate::pci::{PciDevice, PciError};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x1_0000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_MAX: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses: each queue has its own ioeventfd address.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x8000;
const MSIX_PBA_OFFSET: u64 = 0xc000;
/// Most queues one function supports (notify area and MSI-X table must fit their windows).
pub const MAX_QUEUES: u16 = 1023;

const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
const PCI_CAP_ID_VNDR: u8 = 0x09;

/// Masks of the device-independent feature bits this transport deals in.
pub const F_RING_INDIRECT_DESC: u64 = bit(VIRTIO_RING_F_INDIRECT_DESC);
pub const F_RING_EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);
pub const F_VERSION_1: u64 = bit(VIRTIO_F_VERSION_1);
pub const F_RING_PACKED: u64 = bit(vu_spec::transport::VIRTIO_F_RING_PACKED);
/// Feature bits this transport can offer a guest: device-specific bits (0-23, 50-63),
/// indirect descriptors, event index, VERSION_1. Packed rings only with `packed=on`
/// ([`VirtioPciParams::packed`]); not ACCESS_PLATFORM, not NOTIFICATION_DATA (the backend
/// would need them and the notify path would change).
pub const TRANSPORT_FEATURES: u64 =
    0x00ff_ffff | (0x3fff << 50) | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | F_VERSION_1;

/// Offset of device_status in the common configuration.
const DEVICE_STATUS: u64 = 0x14;
/// ISR bit: the configuration changed.
const ISR_CONFIG: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("{0} queues: a virtio-pci function supports 1..={MAX_QUEUES}")]
    QueueCount(u16),
    #[error("device config size {0:#x} exceeds {DEVICE_CFG_MAX:#x}")]
    ConfigSize(u32),
    #[error("device offers no VIRTIO_F_VERSION_1 (modern virtio-pci needs it)")]
    NoVersion1,
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    #[error("interrupts: {0}")]
    Interrupt(#[from] InterruptError),
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("starting the control thread: {0}")]
    Control(#[source] std::io::Error),
    #[error("starting the control queue's thread: {0}")]
    FrontendQueue(#[source] std::io::Error),
}

/// Configuration-path counters of one device (the data path bypasses this process: a
/// running device should only see these move while the guest (re)configures it).
#[derive(Debug, Default)]
pub struct VirtioStats {
    /// Guest reads/writes of BAR 0 that reached this process.
    pub bar_accesses: AtomicU64,
    /// Of those, notify writes (no ioeventfd caught them).
    pub notify_exits: AtomicU64,
    /// Interrupts this process injected (config changes, re-delivery on unmask).
    pub injected: AtomicU64,
}

/// Identity and shape of a virtio-pci function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciParams {
    pub virtio_id: u32,
    pub class: ClassCode,
    pub num_queues: u16,
    pub queue_size: u16,
    pub config_size: u32,
    /// virtio-net's control queue, served by accel, on a device with this many queue pairs
    /// (`None`: every queue is the backend's).
    pub control_queue_pairs: Option<u16>,
    /// Size of the odd-numbered queues (virtio-net's transmit queues) when it differs from
    /// `queue_size` (`tx_queue_size=`).
    pub odd_queue_size: Option<u16>,
    /// MSI-X table size (`vectors=`); `None`: one vector per queue plus one for config changes.
    pub msix_vectors: Option<u16>,
    /// `packed=on`: VIRTIO_F_RING_PACKED is offered when the backend offers it (QEMU's rule).
    pub packed: bool,
}

/// A virtio capability (virtio 1.2 §4.1.4): vendor cap header, cfg_type, BAR 0, offset,
/// length, then `extra`.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![
        PCI_CAP_ID_VNDR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        0,
        0,
        0,
        0,
    ];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// The function's PCI configuration space: header, BAR 0, the virtio capabilities, MSI-X.
struct ConfigLayout {
    config: PciConfig,
    pci_cfg_cap: usize,
    msix: Msix,
    msix_cap: usize,
}

impl ConfigLayout {
    fn new(params: &VirtioPciParams, bar0_addr: u64) -> Result<Self, VirtioPciError> {
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: PCI_VENDOR_ID_REDHAT,
            device_id: 0x1040 + params.virtio_id as u16,
            revision: 1,
            class: params.class,
            subsystem_vendor_id: PCI_VENDOR_ID_REDHAT,
            subsystem_id: 0x1100,
        });
        config.add_bar(
            0,
            BarInfo {
                kind: BarKind::Mem32,
                size: BAR0_SIZE,
                prefetchable: false,
            },
            bar0_addr,
        )?;
        let nq = u64::from(params.num_queues);
        let caps = [
            virtio_cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_OFFSET,
                COMMON_CFG_SIZE,
                &[],
            ),
            virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 4, &[]),
            virtio_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                nq * u64::from(NOTIFY_OFF_MULTIPLIER),
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
        ];
        for c in &caps {
            config.add_capability(c, &vec![0; c.len()])?;
        }
        if params.config_size > 0 {
            let c = virtio_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                u64::from(params.config_size),
                &[],
            );
            config.add_capability(&c, &vec![0; c.len()])?;
        }
        // The config-space window into BAR 0: bar (byte 4), offset, length, data writable.
        let body = virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut wmask = vec![0u8; body.len()];
        wmask[4] = 0xff;
        wmask[8..].fill(0xff);
        let pci_cfg_cap = config.add_capability(&body, &wmask)?;
        // One vector per queue plus one for configuration changes, unless `vectors=` says
        // otherwise (the guest then shares vectors between queues).
        let msix = Msix::new(
            params
                .msix_vectors
                .unwrap_or(params.num_queues + 1)
                .clamp(1, MAX_QUEUES + 1),
        );
        let (body, wmask) = msix.capability(0, MSIX_TABLE_OFFSET as u32, 0, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&body, &wmask)?;
        Ok(ConfigLayout {
            config,
            pci_cfg_cap,
            msix,
            msix_cap,
        })
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

impl Vector {
    /// An MSI-X vector: its own GSI, raised by signalling its irqfd.
    fn new(router: &dyn InterruptRouter) -> Result<Self, VirtioPciError> {
        let gsi = router.allocate_gsi()?;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?;
        router.register_irqfd(&irqfd, gsi)?;
        Ok(Vector { gsi, irqfd })
    }
}

/// One virtio-pci function.
pub struct VirtioPciDevice {
    name: String,
    config: PciConfig,
    common: CommonConfig,
    msix: Msix,
    msix_cap: usize,
    /// The VIRTIO_PCI_CAP_PCI_CFG capability: a window into BAR 0 through config space.
    pci_cfg_cap: usize,
    isr: u8,
    /// What device_status reads while a reset is being carried out (non-zero).
    resetting_status: u8,
    config_size: u32,
    kicks: Vec<EventFd>,
    vectors: Vec<Vector>,
    /// Call fd for queues without a vector (interrupts go nowhere).
    no_vector: EventFd,
    router: Arc<dyn InterruptRouter>,
    /// Every request for the device model goes through here, off the vCPU thread.
    control: BackendControl,
    /// The queue accel serves itself (net's control queue): its pair count and watcher.
    control_queue: Option<(u16, FrontendQueueWatch)>,
    /// Where the notify ioeventfds are registered (BAR 0's last decoded address).
    bar0: Option<u64>,
    active: bool,
    stats: Arc<VirtioStats>,
}

impl VirtioPciDevice {
    /// A function whose BAR 0 starts at `bar0_addr` (allocated by the caller from the PCI
    /// MMIO window; [`BAR0_SIZE`] bytes, naturally aligned). Reads the backend's features
    /// and config space now (call before the VM runs) and starts the device's control
    /// thread.
    pub fn new(
        name: String,
        params: VirtioPciParams,
        bar0_addr: u64,
        router: Arc<dyn InterruptRouter>,
        backend: Arc<Mutex<dyn VirtioBackend>>,
    ) -> Result<Arc<Mutex<Self>>, VirtioPciError> {
        if params.num_queues == 0 || params.num_queues > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(params.num_queues));
        }
        if u64::from(params.config_size) > DEVICE_CFG_MAX {
            return Err(VirtioPciError::ConfigSize(params.config_size));
        }
        let offered = backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .device_features()
            & (TRANSPORT_FEATURES | if params.packed { F_RING_PACKED } else { 0 });
        if offered & F_VERSION_1 == 0 {
            return Err(VirtioPciError::NoVersion1);
        }
        let layout = ConfigLayout::new(&params, bar0_addr)?;
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd);
        let kicks = (0..params.num_queues)
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let vectors = (0..layout.msix.num_vectors())
            .map(|_| Vector::new(&*router))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<u16> = (0..params.num_queues)
            .map(|q| match params.odd_queue_size {
                Some(odd) if q % 2 == 1 => odd,
                _ => params.queue_size,
            })
            .collect();
        let control = BackendControl::spawn(&name, backend, params.config_size)
            .map_err(VirtioPciError::Control)?;
        let control_queue = match params.control_queue_pairs {
            Some(pairs) => {
                // Where the control queue can be: without MQ and with it.
                let mut at = vec![
                    vu_spec::net::control_queue_index(pairs, 0),
                    vu_spec::net::control_queue_index(pairs, u64::MAX),
                ];
                at.dedup();
                let kicks = at
                    .into_iter()
                    .filter_map(|i| kicks.get(usize::from(i)).map(|k| (i, k)))
                    .map(|(i, k)| Ok((i, k.try_clone().map_err(VirtioPciError::EventFd)?)))
                    .collect::<Result<Vec<_>, VirtioPciError>>()?;
                let watch = FrontendQueueWatch::spawn(&name, kicks, control.handle())
                    .map_err(VirtioPciError::FrontendQueue)?;
                Some((pairs, watch))
            }
            None => None,
        };
        let dev = VirtioPciDevice {
            name,
            config: layout.config,
            common: CommonConfig::new(offered, &sizes),
            msix: layout.msix,
            msix_cap: layout.msix_cap,
            pci_cfg_cap: layout.pci_cfg_cap,
            isr: 0,
            resetting_status: STATUS_ACKNOWLEDGE,
            config_size: params.config_size,
            kicks,
            vectors,
            no_vector: eventfd()?,
            router,
            control,
            control_queue,
            bar0: Some(bar0_addr),
            active: false,
            stats: Arc::new(VirtioStats::default()),
        };
        // Registered now, before any vCPU runs, and left in place while decoding is off:
        // KVM_IOEVENTFD waits for every vCPU to leave KVM's SRCU read side, which on an
        // emulating host (kvm_pvm) a vCPU spinning in guest kernel code for the caller's vCPU
        // (an IPI) never does: registering from a vCPU thread can deadlock the guest.
        dev.register_ioevents(bar0_addr);
        let dev = Arc::new(Mutex::new(dev));
        dev.lock().unwrap().control.bind(Arc::downgrade(&dev));
        Ok(dev)
    }

    /// The control thread's handle (wait for queued backend requests).
    pub fn control(&self) -> ControlHandle {
        self.control.handle()
    }

    /// The monitor reconnected the backend: the control thread refreshes the config, replays
    /// what the old connection could not take, then calls
    /// [`rewire_after_reconnect`](Self::rewire_after_reconnect).
    pub fn backend_reconnected(&self) {
        self.control.push(Command::Reconnected);
    }

    /// After a reconnect: kick every queue (requests the guest queued while the backend was
    /// away) and raise every active queue's vector once (a completion the old backend wrote
    /// to the used ring just before it died may never have been signalled; an extra
    /// interrupt is harmless). The call fds themselves need no re-wiring: the backend got
    /// the same irqfd eventfds, whose KVM GSI and MSI route did not change.
    pub fn rewire_after_reconnect(&mut self) {
        self.kick_all();
        if !self.active {
            return;
        }
        let vectors: Vec<u16> = self
            .common
            .queues
            .iter()
            .filter(|q| q.enabled)
            .map(|q| q.msix_vector)
            .collect();
        for v in vectors {
            self.inject(v);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> Arc<VirtioStats> {
        self.stats.clone()
    }

    /// Current device status byte.
    pub fn status(&self) -> u8 {
        self.common.status
    }

    /// The queues' kick event fds (tests, and re-kicking after a backend reconnect).
    pub fn kick_all(&self) {
        for k in &self.kicks {
            if let Err(e) = k.write(1) {
                log::warn!("{}: kick: {e}", self.name);
            }
        }
    }

    fn call_fd(&self, vector: u16) -> &EventFd {
        self.vectors
            .get(usize::from(vector))
            .map_or(&self.no_vector, |v| &v.irqfd)
    }

    /// Raises `vector` from this process (config change, re-delivery).
    fn inject(&self, vector: u16) {
        if vector == VIRTIO_MSI_NO_VECTOR {
            return;
        }
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            self.stats.injected.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = v.irqfd.write(1) {
                log::warn!("{}: injecting vector {vector}: {e}", self.name);
            }
        }
    }

    /// The device model failed or vanished: tell the driver (status NEEDS_RESET and a
    /// configuration-change interrupt), as virtio 1.2 §2.1.2 describes.
    pub fn mark_needs_reset(&mut self) {
        if self.common.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        log::error!("{}: device needs reset", self.name);
        self.common.status |= STATUS_NEEDS_RESET;
        self.config_changed();
    }

    /// Device configuration changed: bump the generation and interrupt the driver.
    pub fn config_changed(&mut self) {
        self.common.config_generation = self.common.config_generation.wrapping_add(1);
        self.isr |= ISR_CONFIG;
        self.inject(self.common.msix_config);
    }

    fn update_vector(&mut self, vector: u16) {
        let Some(v) = self.vectors.get(usize::from(vector)) else {
            return;
        };
        let msg = self.msix.message(vector);
        if let Err(e) = self.router.set_msi_route(v.gsi, msg) {
            log::error!("{}: MSI route for vector {vector}: {e}", self.name);
            return;
        }
        // While a vector is masked its irqfd goes nowhere; re-deliver once on unmask so an
        // event that arrived meanwhile is not lost (an extra interrupt is harmless).
        if msg.is_some() && self.active {
            self.inject(vector);
        }
    }

    fn apply_msix_change(&mut self, change: MsixChange) {
        match change {
            MsixChange::None => {}
            MsixChange::Vector(v) => self.update_vector(v),
            MsixChange::All => {
                for v in 0..self.msix.num_vectors() {
                    self.update_vector(v);
                }
            }
        }
    }

    /// DRIVER_OK: queues the activation for the control thread (the guest does not wait).
    fn activate(&mut self) -> Result<(), std::io::Error> {
        let features = self.common.driver_features;
        let mut queues = Vec::new();
        for (i, q) in self
            .common
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
        {
            queues.push(OwnedQueue {
                index: i as u16,
                size: q.size,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
                kick: self.kicks[i].try_clone()?,
                call: self.call_fd(q.msix_vector).try_clone()?,
            });
        }
        log::debug!(
            "{}: DRIVER_OK, features {features:#x}, {} queue(s)",
            self.name,
            queues.len()
        );
        self.control.push(Command::Activate {
            features,
            queues,
            resume: false,
        });
        if let Some((pairs, watch)) = &self.control_queue {
            watch.watch(Some(vu_spec::net::control_queue_index(*pairs, features)));
        }
        Ok(())
    }

    /// Virtio reset (status 0): stop the backend's rings and forget the driver's setup.
    fn reset_virtio(&mut self) {
        if self.active || self.common.status != 0 {
            self.resetting_status = self.common.status.max(STATUS_ACKNOWLEDGE);
            self.control.push(Command::Reset);
        }
        self.active = false;
        if let Some((_, watch)) = &self.control_queue {
            watch.watch(None);
        }
        self.common.reset();
        self.isr = 0;
        // The kick fds are not drained here: they are the backend's (its ring thread reads
        // them), and a read on this side can take a kick the backend's epoll has already
        // reported, so the backend's read fails with EAGAIN (vhost-user-backend ended the
        // queue's worker thread on that). A stale kick is harmless: it makes the backend look
        // at a ring with nothing new on it.
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            log::debug!("{}: reset by driver", self.name);
            self.reset_virtio();
            return;
        }
        let old = self.common.status;
        let mut new = value & !STATUS_NEEDS_RESET;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let drv = self.common.driver_features;
            if drv & !self.common.device_features != 0 || drv & F_VERSION_1 == 0 {
                log::warn!("{}: driver features {drv:#x} refused", self.name);
                new &= !STATUS_FEATURES_OK;
            }
        }
        let needs_reset = old & STATUS_NEEDS_RESET != 0;
        self.common.set_status(new | (old & STATUS_NEEDS_RESET));
        if new & STATUS_DRIVER_OK != 0
            && old & STATUS_DRIVER_OK == 0
            && !needs_reset
            && !self.active
        {
            match self.activate() {
                Ok(()) => self.active = true,
                Err(e) => {
                    log::error!("{}: starting the device failed: {e}", self.name);
                    self.mark_needs_reset();
                }
            }
        }
    }

    /// A vector the function does not have reads back as NO_VECTOR (how the driver learns
    /// the mapping failed, virtio 1.2 §4.1.4.3).
    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix.num_vectors() {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn queue_vector_changed(&mut self, index: u16) {
        if let Some(q) = self.common.queues.get_mut(usize::from(index)) {
            let v = q.msix_vector;
            q.msix_vector = if v < self.msix.num_vectors() {
                v
            } else {
                VIRTIO_MSI_NO_VECTOR
            };
        }
        if !self.active {
            return;
        }
        let Some(q) = self.common.queues.get(usize::from(index)) else {
            return;
        };
        if !q.enabled {
            return;
        }
        match self.call_fd(q.msix_vector).try_clone() {
            Ok(call) => self.control.push(Command::SetQueueCall { index, call }),
            Err(e) => log::warn!("{}: queue {index} call fd: {e}", self.name),
        }
    }

    fn read_bar0(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_SIZE => {
                self.common.read(o, data);
                // Until the backend has stopped the rings the reset is not done: the driver
                // waits for device_status to read 0 (only while it has not written anything
                // since, so a driver that does not wait is not confused).
                if o == COMMON_OFFSET + DEVICE_STATUS
                    && self.common.status == 0
                    && self.control.reset_pending()
                    && let Some(b) = data.first_mut()
                {
                    *b = self.resetting_status;
                }
            }
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                // Reading the ISR clears it.
                if let Some(b) = data.first_mut() {
                    *b = if o == ISR_OFFSET { self.isr } else { 0 };
                }
                if o == ISR_OFFSET {
                    self.isr = 0;
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                let off = o - DEVICE_CFG_OFFSET;
                if off + data.len() as u64 <= u64::from(self.config_size) {
                    self.control.read_config(off as u32, data);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + self.msix.table_size()).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + self.msix.pba_size()).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => log::debug!("{}: BAR0 read at unused offset {offset:#x}", self.name),
        }
    }

    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        let notify_end = NOTIFY_OFFSET + self.kicks.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_SIZE => match self.common.write(o, data) {
                CommonCfgEvent::Status(v) => self.write_status(v),
                CommonCfgEvent::QueueVector(q) => self.queue_vector_changed(q),
                CommonCfgEvent::ConfigVector => {
                    self.common.msix_config = self.valid_vector(self.common.msix_config);
                }
                CommonCfgEvent::None => {}
            },
            o if (NOTIFY_OFFSET..notify_end).contains(&o) => {
                // Only reached when no ioeventfd is registered for this address.
                self.stats.notify_exits.fetch_add(1, Ordering::Relaxed);
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Err(e) = self.kicks[q].write(1) {
                    log::warn!("{}: kick queue {q}: {e}", self.name);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                let off = o - DEVICE_CFG_OFFSET;
                if off + data.len() as u64 <= u64::from(self.config_size) {
                    self.control.write_config(off as u32, data);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + self.msix.table_size()).contains(&o) => {
                let change = self.msix.write_table(o - MSIX_TABLE_OFFSET, data);
                self.apply_msix_change(change);
            }
            _ => log::debug!(
                "{}: BAR0 write at read-only/unused offset {offset:#x}",
                self.name
            ),
        }
    }

    /// `(BAR 0 offset, length)` the PCI_CFG capability selects, if it is a valid access
    /// (BAR 0, 1/2/4 bytes, naturally aligned).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_byte(cap + 4);
        let offset = u64::from(self.config.read_reg((cap + 8) / 4));
        let len = self.config.read_reg((cap + 12) / 4) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64))
            .then_some((offset, len))
    }

    fn register_ioevents(&self, base: u64) {
        for (i, k) in self.kicks.iter().enumerate() {
            let addr = base + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
            if let Err(e) = self.router.register_ioevent(k, addr) {
                log::warn!("{}: queue {i} notify falls back to exits: {e}", self.name);
            }
        }
    }

    /// Hot-unplug (the function is off the bus): every KVM registration the device holds is
    /// undone (notify ioeventfds, irqfds, MSI routes) and its GSIs go back to the allocator.
    /// The backend connection closes when the device is dropped.
    pub fn unplug(&mut self) {
        if let Some(base) = self.bar0.take() {
            self.unregister_ioevents(base);
        }
        for v in self.vectors.drain(..) {
            if let Err(e) = self.router.unregister_irqfd(&v.irqfd, v.gsi) {
                log::debug!("{}: {e}", self.name);
            }
            if let Err(e) = self.router.set_msi_route(v.gsi, None) {
                log::warn!(
                    "{}: removing the MSI route of GSI {}: {e}",
                    self.name,
                    v.gsi
                );
            }
            self.router.release_gsi(v.gsi);
        }
    }

    fn unregister_ioevents(&self, base: u64) {
        for (i, k) in self.kicks.iter().enumerate() {
            let addr = base + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
            if let Err(e) = self.router.unregister_ioevent(k, addr) {
                log::debug!("{}: queue {i} unregister notify: {e}", self.name);
            }
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == (self.pci_cfg_cap + 16) / 4 {
            let mut d = [0u8; 4];
            if let Some((offset, len)) = self.pci_cfg_window() {
                self.stats.bar_accesses.fetch_add(1, Ordering::Relaxed);
                self.read_bar0(offset, &mut d[..len]);
            }
            return u32::from_le_bytes(d);
        }
        self.config.read_reg(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
        if reg == (self.pci_cfg_cap + 16) / 4 {
            if let Some((bar_offset, len)) = self.pci_cfg_window() {
                let value = self.config.read_reg(reg).to_le_bytes();
                self.stats.bar_accesses.fetch_add(1, Ordering::Relaxed);
                self.write_bar0(bar_offset, &value[..len]);
            }
            return;
        }
        // The MSI-X message control word sits in the upper half of the capability's first
        // dword.
        if reg == self.msix_cap / 4 && offset + data.len() as u64 > 2 {
            let control = (self.config.read_reg(reg) >> 16) as u16;
            let change = self.msix.set_control(control);
            self.apply_msix_change(change);
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.stats.bar_accesses.fetch_add(1, Ordering::Relaxed);
        if bar == 0 {
            self.read_bar0(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.stats.bar_accesses.fetch_add(1, Ordering::Relaxed);
        if bar == 0 {
            self.write_bar0(offset, data);
        }
    }

    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
        // The notify ioeventfds follow BAR 0 only when the guest really moves it; turning
        // decoding off (sizing, reset) leaves them where they are (see `new`).
        let Some(new) = addr.filter(|&a| bar == 0 && Some(a) != self.bar0) else {
            return;
        };
        if let Some(old) = self.bar0.take() {
            self.unregister_ioevents(old);
        }
        self.register_ioevents(new);
        self.bar0 = Some(new);
    }

    fn reset(&mut self) {
        self.reset_virtio();
        self.msix.reset();
        self.apply_msix_change(MsixChange::All);
        self.config.reset_command();
    }
}

//! Builds the PCI bus and the vhost-user virtio-pci devices a [`VmConfig`] asks for.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_allocator::IdAllocator;

use super::backend::VirtioBackend;
use super::device::{
    BAR0_SIZE, F_RING_PACKED, F_VERSION_1, VirtioPciDevice, VirtioPciError, VirtioPciParams,
};
use super::monitor::{self, BackendMonitor, Reconnect};
use super::vhost_user::{GuestRam, VhostUserBackend};
use crate::config::{ChardevConfig, VhostUserDeviceConfig, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::pci::config::ClassCode;
use crate::pci::ecam::{PCIE_ECAM_SIZE, PCIE_ECAM_START, PciEcam};
use crate::pci::interrupts::{InterruptRouter, KvmInterruptRouter};
use crate::pci::pcie_slot::SlotEvents;
use crate::pci::topology::Bridges;
use crate::pci::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo, PciError, PciRoot};
use vu_spec::devices::{ConfigSource, DEFAULT_QUEUE_SIZE, FrontendInput};
use vu_spec::transport::bit;
use vu_spec::unix::remove_stale_socket;

/// How long to wait at VM start for a backend socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("-device {device}: no -chardev with id '{chardev}'")]
    NoChardev { device: String, chardev: String },
    #[error(
        "vhost-user devices need shared guest memory: use -object memory-backend-memfd,share=on"
    )]
    MemoryNotShared,
    #[error("-device {device}: vhost-user backend at {path}: {source}")]
    Connect {
        device: String,
        path: String,
        #[source]
        source: vu_frontend::Error,
    },
    #[error("-device {device}: cannot listen for the vhost-user backend on {path}: {source}")]
    Listen {
        device: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("-device {device}: waiting for the vhost-user backend to connect to {path}: {source}")]
    Accept {
        device: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("-device {device}: {queues} queues requested, the backend supports {max}")]
    TooManyQueues {
        device: String,
        queues: u16,
        max: usize,
    },
    #[error("-device {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: VirtioPciError,
    },
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    #[error("PCI config ports: {0}")]
    Bus(#[from] BusError),
    #[error("starting the backend monitor: {0}")]
    Monitor(std::io::Error),
    #[error("creating the PCIe hot-plug slot eventfd: {0}")]
    SlotEvents(std::io::Error),
}

/// One virtio-pci function on the bus, with what it holds.
pub struct Plugged {
    /// `id=` or the generated name.
    pub name: String,
    /// `id=` as given (QMP's qdev id).
    pub id: Option<String>,
    /// The chardev whose socket the backend listens on.
    pub chardev: String,
    /// Bus index (0: the root bus; others are behind bridges), slot and function.
    pub bus: usize,
    pub slot: u8,
    pub function: u8,
    pub device: Arc<Mutex<VirtioPciDevice>>,
    /// The BAR's range in the root window, while the device holds it (`None` once the BAR
    /// moved into a bridge window, which gave the range back).
    bar0: Option<u64>,
    monitor: BackendMonitor,
}

/// The PCI bus, its devices and their backend monitors. Keep it alive as long as the VM.
pub struct PciSetup {
    pub root: Arc<PciRoot>,
    /// The bridges by id, with their bus index (and root ports' slot registers, for hotplug).
    pub bridges: Bridges,
    pub plugged: Vec<Plugged>,
    /// Root-port slots the guest powered off (q35 native hot-plug), for the main thread.
    pub slot_events: Arc<SlotEvents>,
    router: Arc<dyn InterruptRouter>,
    report_stats: bool,
}

impl PciSetup {
    /// Guest reboot: every function back to power-on state.
    pub fn reset(&self) {
        self.root.reset();
    }

    /// One line per device: configuration-path accesses that reached accel.
    pub fn stats_report(&self) -> String {
        let mut out = format!("accel: vcpu exits: {}\n", crate::vmm::vcpu::EXITS.summary());
        for p in &self.plugged {
            let d = p.device.lock().unwrap();
            let s = d.stats();
            out.push_str(&format!(
                "accel: {}: bar_accesses={} notify_exits={} injected={}\n",
                d.name(),
                s.bar_accesses.load(Ordering::Relaxed),
                s.notify_exits.load(Ordering::Relaxed),
                s.injected.load(Ordering::Relaxed),
            ));
        }
        out
    }

    /// Builds `dcfg`'s function, connected to `chardev`'s backend (the session negotiated,
    /// the memory table sent), allocates its BAR and puts it in its slot (`addr=` or the
    /// first free one): the same path at startup and for `device_add`. Returns the slot.
    pub fn plug<M: GuestRam>(
        &mut self,
        name: String,
        dcfg: &VhostUserDeviceConfig,
        chardev: &ChardevConfig,
        listening: Option<Listening>,
        vcpus: u8,
        memory: M,
    ) -> Result<u8, SetupError> {
        let root = &self.root;
        let bus = match &dcfg.pci_bus {
            None => 0,
            Some(id) => self
                .bridges
                .bus(id)
                .ok_or_else(|| PciError::UnknownBus(id.clone()))?,
        };
        // Checked first: nothing to undo when the slot is taken or the bus is full.
        let slot = match dcfg.pci_slot {
            Some(s) if bus == 0 && dcfg.pci_function == 0 && root.slot_taken(s) => {
                return Err(PciError::SlotUnavailable(s).into());
            }
            Some(s) => Some(s),
            None if bus == 0 => Some(root.free_slot()?),
            None => None,
        };
        let (backend, plan) = connect(&name, dcfg, chardev, listening.as_ref(), vcpus, memory)?;
        // Behind a bridge, the BAR moves into the bridge's window (`assign_resources`).
        let bar0 = root.allocate_mmio(BAR0_SIZE)?;
        let backend = Arc::new(Mutex::new(backend));
        let dyn_backend: Arc<Mutex<dyn VirtioBackend>> = backend.clone();
        let device = match VirtioPciDevice::new(
            name.clone(),
            plan.params,
            bar0,
            self.router.clone(),
            dyn_backend,
        ) {
            Ok(d) => d,
            Err(source) => {
                root.free_mmio(bar0, BAR0_SIZE);
                return Err(SetupError::Device {
                    device: name,
                    source,
                });
            }
        };
        let reconnect = match listening {
            Some(l) => Some(Reconnect::Accept(l.listener)),
            None => (chardev.reconnect_secs > 0)
                .then(|| Reconnect::Dial(Duration::from_secs(chardev.reconnect_secs))),
        };
        let monitor =
            match monitor::spawn(name.clone(), backend, Arc::downgrade(&device), reconnect) {
                Ok(m) => m,
                Err(e) => {
                    device.lock().unwrap().unplug();
                    root.free_mmio(bar0, BAR0_SIZE);
                    return Err(SetupError::Monitor(e));
                }
            };
        let slot = match root.add_function(bus, slot, dcfg.pci_function, device.clone()) {
            Ok(s) => s,
            Err(e) => {
                drop(monitor);
                device.lock().unwrap().unplug();
                root.free_mmio(bar0, BAR0_SIZE);
                return Err(e.into());
            }
        };
        log::info!(
            "{name}: virtio-pci on {} {slot:02x}.{}, virtio id {}, {} queue(s), backend {}",
            dcfg.pci_bus.as_deref().unwrap_or("pci.0"),
            dcfg.pci_function,
            plan.params.virtio_id,
            plan.params.num_queues,
            chardev.path.display()
        );
        self.plugged.push(Plugged {
            name,
            id: dcfg.id.clone(),
            chardev: chardev.id.clone(),
            bus,
            slot,
            function: dcfg.pci_function,
            device,
            bar0: Some(bar0),
            monitor,
        });
        Ok(slot)
    }

    /// After a hot-plug behind a bridge: the new function's BAR goes into the bridge's
    /// window (see [`PciRoot::place_in_window`]).
    pub fn place_hotplugged(&mut self, bus: usize) {
        if self.root.place_in_window(bus) {
            for p in self.plugged.iter_mut().filter(|p| p.bus == bus) {
                p.bar0 = None;
            }
        }
    }

    /// Takes the function in `slot` off the bus and undoes everything [`Self::plug`] did:
    /// BAR unmapped and freed, KVM registrations removed, monitor stopped, and the
    /// vhost-user connection closed (the backend sees the frontend leave). Returns it
    /// (already dead) for the caller's bookkeeping.
    pub fn unplug(&mut self, slot: u8) -> Option<Plugged> {
        self.unplug_at(0, slot)
    }

    /// [`Self::unplug`] of function 0 of `slot` on bus index `bus`.
    pub fn unplug_at(&mut self, bus: usize, slot: u8) -> Option<Plugged> {
        let i = self
            .plugged
            .iter()
            .position(|p| p.bus == bus && p.slot == slot && p.function == 0)?;
        let p = self.plugged.remove(i);
        self.root.remove_function(bus, slot);
        p.device.lock().unwrap().unplug();
        if let Some(bar0) = p.bar0 {
            self.root.free_mmio(bar0, BAR0_SIZE);
        }
        log::info!("{}: unplugged from bus index {bus} {slot:02x}.0", p.name);
        Some(p)
    }
}

impl Plugged {
    /// Stops the monitor and drops the device: its control thread ends and the backend
    /// connection closes.
    pub fn close(self) {
        drop(self.monitor);
        drop(self.device);
    }
}

impl Drop for PciSetup {
    fn drop(&mut self) {
        let report = self.stats_report();
        for p in self.plugged.drain(..) {
            drop(p.monitor);
        }
        if self.report_stats {
            eprint!("{report}");
        } else {
            for line in report.lines() {
                log::debug!("{line}");
            }
        }
    }
}

/// What one `-device` is to the guest, and what the frontend changes in its backend's offer:
/// everything follows from the device's row in the table and the backend's features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DevicePlan {
    pub params: VirtioPciParams,
    /// The guest is offered `(backend features & mask) | add`.
    pub feature_mask: u64,
    pub feature_add: u64,
    /// Config space the frontend serves instead of the backend's.
    pub local_config: Option<Vec<u8>>,
    /// Bytes written over the backend's config space at an offset.
    pub config_patch: Option<(u32, Vec<u8>)>,
    /// Queues the backend serves (all but the control queue).
    pub backend_queues: u16,
}

impl DevicePlan {
    /// The plan for `cfg` with `vcpus` vCPUs, whose backend offers `offered`.
    pub(super) fn new(cfg: &VhostUserDeviceConfig, vcpus: u8, offered: u64) -> Self {
        let spec = cfg.spec;
        let asked = spec.num_queues(cfg.num_queues, u16::from(vcpus));
        let mut num_queues = spec.num_queues_for(asked, offered);
        let mut feature_add = spec.features.added;
        let mut control_queue_pairs = None;
        let backend_queues;
        if let Some(cq) = spec.control_queue {
            // virtio-net: N pairs and the control queue; more than one pair needs the
            // backend's MQ (QEMU clears MQ from what the guest sees without it).
            let mq = bit(cq.multiqueue);
            let pairs = match num_queues / 2 {
                n if n > 1 && offered & mq != 0 => {
                    feature_add |= mq;
                    n
                }
                _ => 1,
            };
            feature_add |= cq.features;
            backend_queues = pairs * 2;
            num_queues = backend_queues + 1;
            control_queue_pairs = Some(pairs);
        } else {
            backend_queues = num_queues;
        }
        let class = spec.pci_class(cfg.virtio_id);
        let mut plan = DevicePlan {
            params: VirtioPciParams {
                virtio_id: cfg.virtio_id,
                class: ClassCode {
                    class: class.class,
                    subclass: class.subclass,
                    prog_if: 0,
                },
                num_queues,
                queue_size: cfg.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE),
                config_size: cfg.config_size,
                control_queue_pairs,
                odd_queue_size: cfg.tx_queue_size,
                msix_vectors: cfg.msix_vectors,
                packed: cfg.packed,
            },
            feature_mask: !spec.features.masked & !cfg.hidden_features,
            feature_add,
            local_config: None,
            config_patch: None,
            backend_queues,
        };
        match spec.config {
            ConfigSource::Backend => {}
            ConfigSource::BackendWithQueueCount { offset } => {
                plan.config_patch = Some((offset, num_queues.to_le_bytes().to_vec()));
            }
            ConfigSource::Frontend(build) => {
                let local = build(&FrontendInput {
                    num_queues: backend_queues,
                    mac: cfg.mac,
                    tag: cfg.tag.as_deref(),
                });
                plan.feature_add |= local.features;
                plan.local_config = Some(local.bytes);
            }
        }
        plan
    }

    fn apply<M: GuestRam>(&self, backend: &mut VhostUserBackend<M>) {
        backend.set_feature_policy(self.feature_mask, self.feature_add);
        if let Some(pairs) = self.params.control_queue_pairs {
            backend.serve_control_queue(pairs);
        }
        if let Some(bytes) = &self.local_config {
            backend.set_local_config(bytes.clone());
        }
        if let Some((offset, bytes)) = &self.config_patch {
            backend.patch_config(*offset, bytes.clone());
        }
    }
}

/// Creates the host bridge (config ports 0xCF8-0xCFF on `pio_bus`) and one virtio-pci
/// function per `config.devices` entry, connected to its vhost-user backend now: a missing
/// backend is an error naming its socket.
pub fn setup_pci_devices<M: GuestRam>(
    config: &VmConfig,
    vm_fd: Arc<VmFd>,
    memory: M,
    pio_bus: &Arc<Bus>,
    mmio_bus: &Arc<Bus>,
    gsis: Arc<Mutex<IdAllocator>>,
) -> Result<PciSetup, SetupError> {
    let router: Arc<dyn InterruptRouter> = Arc::new(KvmInterruptRouter::new(vm_fd, gsis));
    setup_with_router(config, router, memory, pio_bus, mmio_bus)
}

/// [`setup_pci_devices`] with any interrupt router.
pub fn setup_with_router<M: GuestRam>(
    config: &VmConfig,
    router: Arc<dyn InterruptRouter>,
    memory: M,
    pio_bus: &Arc<Bus>,
    mmio_bus: &Arc<Bus>,
) -> Result<PciSetup, SetupError> {
    let root = Arc::new(PciRoot::new(mmio_bus.clone(), pio_bus.clone())?);
    pio_bus.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_BASE,
        PCI_CONFIG_IO_LEN,
    )?;
    if config.machine == crate::config::MachineType::Q35 {
        mmio_bus.insert(
            Arc::new(Mutex::new(PciEcam::new(root.clone()))),
            PCIE_ECAM_START,
            PCIE_ECAM_SIZE,
        )?;
    }
    let bridges = Bridges::create(&root, &config.pci_bridges)?;
    let slot_events = SlotEvents::new().map_err(SetupError::SlotEvents)?;
    if config.machine == crate::config::MachineType::Q35 {
        bridges.wire_slots(&router, &slot_events);
    }
    if !config.devices.is_empty() && config.memory.backends.iter().any(|b| !b.share) {
        return Err(SetupError::MemoryNotShared);
    }
    let mut setup = PciSetup {
        root: root.clone(),
        bridges,
        plugged: Vec::new(),
        slot_events,
        router,
        report_stats: config.timing,
    };
    for (n, dcfg) in config.devices.iter().enumerate() {
        let name = dcfg
            .id
            .clone()
            .unwrap_or_else(|| format!("{}{n}", dcfg.spec.name));
        let chardev = config
            .chardevs
            .iter()
            .find(|c| c.id == dcfg.chardev)
            .ok_or_else(|| SetupError::NoChardev {
                device: name.clone(),
                chardev: dcfg.chardev.clone(),
            })?;
        let listening = chardev
            .server
            .then(|| listen(&name, &chardev.path))
            .transpose()?
            .map(|listener| Listening {
                listener,
                wait: None,
            });
        setup.plug(
            name,
            dcfg,
            chardev,
            listening,
            config.smp.cpus,
            memory.clone(),
        )?;
    }
    // As firmware: bus numbers, bridge windows, BARs behind bridges.
    root.assign_resources()?;
    for p in setup.plugged.iter_mut().filter(|p| p.bus != 0) {
        // Moved into their bridge's window, which gave the creation-time range back.
        p.bar0 = None;
    }
    setup.bridges.update_presence(&root);
    Ok(setup)
}

/// A `server=on` chardev's listening socket, and how long plugging a device on it waits for
/// the backend to connect.
pub struct Listening {
    pub listener: UnixListener,
    /// `None`: as long as it takes, as QEMU does (at startup, before the guest runs). QMP's
    /// `device_add` waits a bounded time: the main thread must not hang on an absent peer.
    pub wait: Option<Duration>,
}

impl Listening {
    /// The next connection, within `wait`.
    fn accept(&self) -> std::io::Result<UnixStream> {
        let Some(wait) = self.wait else {
            return self.listener.accept().map(|(s, _)| s);
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no backend connected within {} s", wait.as_secs()),
                    ));
                }
                Ok(_) => return self.listener.accept().map(|(s, _)| s),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `server=on`: listens on `path` (replacing a stale socket file), as QEMU does.
pub fn listen(name: &str, path: &Path) -> Result<UnixListener, SetupError> {
    let err = |source| SetupError::Listen {
        device: name.to_string(),
        path: path.display().to_string(),
        source,
    };
    remove_stale_socket(path).map_err(|e| err(std::io::Error::other(e.to_string())))?;
    UnixListener::bind(path).map_err(err)
}

/// Connects `name`'s backend (or, on a `server=on` chardev, waits for it to connect to
/// `listener`, as long as it takes, as QEMU does), checks what it offers and applies the
/// device's plan to it.
fn connect<M: GuestRam>(
    name: &str,
    dcfg: &VhostUserDeviceConfig,
    chardev: &ChardevConfig,
    listener: Option<&Listening>,
    vcpus: u8,
    memory: M,
) -> Result<(VhostUserBackend<M>, DevicePlan), SetupError> {
    let asked = dcfg.spec.num_queues(dcfg.num_queues, u16::from(vcpus));
    let path = &chardev.path;
    let connect_err = |source| SetupError::Connect {
        device: name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let mut backend = match listener {
        None => VhostUserBackend::connect(path, usize::from(asked), CONNECT_TIMEOUT, memory)
            .map_err(connect_err)?,
        Some(listener) => {
            log::info!(
                "{name}: waiting for the vhost-user backend to connect to {} (server=on)",
                path.display()
            );
            let stream = listener.accept().map_err(|source| SetupError::Accept {
                device: name.to_string(),
                path: path.display().to_string(),
                source,
            })?;
            VhostUserBackend::from_stream(stream, path, usize::from(asked), memory)
                .map_err(connect_err)?
        }
    };
    let offered = backend.backend_features();
    if offered & F_VERSION_1 == 0 {
        return Err(SetupError::Device {
            device: name.to_string(),
            source: VirtioPciError::NoVersion1,
        });
    }
    if dcfg.packed && offered & F_RING_PACKED == 0 {
        // QEMU offers VIRTIO_F_RING_PACKED with packed=on only when the backend does.
        log::info!(
            "{name}: packed=on: the backend has no packed rings; the guest gets split rings"
        );
    }
    let plan = DevicePlan::new(dcfg, vcpus, offered);
    if plan.backend_queues < asked {
        log::warn!(
            "{name}: backend lacks the multi-queue feature: using {} queue(s)",
            plan.params.num_queues
        );
    }
    if backend.num_queues() < usize::from(plan.backend_queues) {
        return Err(SetupError::TooManyQueues {
            device: name.to_string(),
            queues: plan.backend_queues,
            max: backend.num_queues(),
        });
    }
    plan.apply(&mut backend);
    Ok((backend, plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vu_spec::devices::find_driver;

    fn cfg(driver: &str, num_queues: Option<u16>) -> VhostUserDeviceConfig {
        let spec = find_driver(driver).unwrap();
        VhostUserDeviceConfig {
            spec,
            id: None,
            chardev: "c".into(),
            virtio_id: spec.virtio_id(Some(26)),
            config_size: spec.config_size(Some(8)),
            num_queues,
            queue_size: None,
            pci_slot: None,
            pci_function: 0,
            pci_bus: None,
            mac: None,
            tag: None,
            bootindex: None,
            tx_queue_size: None,
            hidden_features: 0,
            msix_vectors: None,
            packed: false,
        }
    }

    /// (virtio id, class, subclass, queues, queue size, config size).
    fn shape(p: &DevicePlan) -> (u32, u8, u8, u16, u16, u32) {
        let v = &p.params;
        let c = v.class;
        (
            v.virtio_id,
            c.class,
            c.subclass,
            v.num_queues,
            v.queue_size,
            v.config_size,
        )
    }

    const VERSION_1: u64 = 1 << 32;
    const BLK_F_MQ: u64 = 1 << 12;

    /// What each kind was before the device table, written as the literals accel had:
    /// `shape()`, `class_for()` and the per-kind match in `setup_with_router`.
    #[test]
    fn plans_match_the_hard_coded_setup() {
        let blk = DevicePlan::new(&cfg("vhost-user-blk-pci", None), 2, VERSION_1 | BLK_F_MQ);
        assert_eq!(shape(&blk), (2, 0x01, 0x80, 2, 128, 60));
        assert_eq!((blk.feature_mask, blk.feature_add), (u64::MAX, 0));
        assert_eq!(blk.local_config, None);
        assert_eq!(blk.config_patch, Some((34, vec![2, 0])));
        // No VIRTIO_BLK_F_MQ: one queue, and config says so.
        let blk = DevicePlan::new(&cfg("vhost-user-blk-pci", Some(4)), 2, VERSION_1);
        assert_eq!(shape(&blk), (2, 0x01, 0x80, 1, 128, 60));
        assert_eq!(blk.config_patch, Some((34, vec![1, 0])));

        // net: the pairs, then the control queue accel serves (QEMU's layout); the backend
        // gets the data queues only.
        let ctrl_bits = vu_spec::net::CONTROL_QUEUE_FEATURES;
        assert_eq!(
            ctrl_bits,
            (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20) | (1 << 23)
        );
        let mut net_cfg = cfg("virtio-net-pci", Some(4));
        net_cfg.mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        // A backend without MQ: one pair whatever was asked.
        let net = DevicePlan::new(&net_cfg, 2, VERSION_1);
        assert_eq!(shape(&net), (1, 0x02, 0x00, 3, 128, 10));
        assert_eq!(net.backend_queues, 2);
        assert_eq!(net.params.control_queue_pairs, Some(1));
        let old_mask = !(0x00fe_0000u64 | (1 << 3) | (1 << 63) | (1 << 5));
        assert_eq!(net.feature_mask, old_mask);
        assert_eq!(net.feature_add, (1 << 16) | (1 << 5) | ctrl_bits);
        assert_eq!(
            net.local_config,
            Some(vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0])
        );
        assert_eq!(net.config_patch, None);
        // With MQ: 2 pairs, MQ offered, max_virtqueue_pairs 2.
        const NET_F_MQ: u64 = 1 << 22;
        let net = DevicePlan::new(&net_cfg, 2, VERSION_1 | NET_F_MQ);
        assert_eq!(shape(&net), (1, 0x02, 0x00, 5, 128, 10));
        assert_eq!(net.backend_queues, 4);
        assert_eq!(net.params.control_queue_pairs, Some(2));
        assert_eq!(net.feature_add, (1 << 16) | (1 << 5) | ctrl_bits | NET_F_MQ);
        assert_eq!(
            net.local_config,
            Some(vec![0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 2, 0])
        );
        let net = DevicePlan::new(&cfg("virtio-net-pci", None), 2, VERSION_1 | NET_F_MQ);
        assert_eq!(shape(&net), (1, 0x02, 0x00, 3, 128, 10));
        assert_eq!(net.feature_add, (1 << 16) | ctrl_bits);
        assert_eq!(net.local_config, Some(vec![0, 0, 0, 0, 0, 0, 1, 0, 1, 0]));

        for (driver, expect, mask) in [
            (
                "vhost-user-vsock-pci",
                (19, 0x07, 0x80, 3, 128, 8),
                u64::MAX,
            ),
            ("vhost-user-rng-pci", (4, 0xff, 0x00, 1, 128, 0), u64::MAX),
            (
                "vhost-user-console-pci",
                (3, 0x07, 0x80, 2, 128, 12),
                !(1u64 << 1),
            ),
        ] {
            let p = DevicePlan::new(&cfg(driver, None), 2, VERSION_1);
            assert_eq!(shape(&p), expect, "{driver}");
            assert_eq!((p.feature_mask, p.feature_add), (mask, 0), "{driver}");
            assert_eq!((p.local_config, p.config_patch), (None, None), "{driver}");
        }

        let mut generic = cfg("vhost-user-device-pci", Some(2));
        generic.queue_size = Some(64);
        let p = DevicePlan::new(&generic, 2, VERSION_1);
        // Virtio id 26 (virtio-fs) carries the vhost-user-fs-pci row's class.
        assert_eq!(shape(&p), (26, 0x01, 0x80, 2, 64, 8));
        assert_eq!((p.feature_mask, p.feature_add), (u64::MAX, 0));
        let p = DevicePlan::new(&cfg("vhost-user-device-pci", None), 2, VERSION_1);
        assert_eq!(p.params.num_queues, 1);
    }

    /// `mrg_rxbuf=off` (any `FEATURE=off` switch) takes the bit out of what the guest is
    /// offered; `vectors=` and `tx_queue_size=` reach the transport parameters.
    #[test]
    fn device_property_switches_shape_the_plan() {
        const MRG_RXBUF: u64 = 1 << 15;
        let mut c = cfg("virtio-net-pci", None);
        c.hidden_features = MRG_RXBUF;
        c.msix_vectors = Some(2);
        c.tx_queue_size = Some(512);
        let p = DevicePlan::new(&c, 2, VERSION_1 | MRG_RXBUF);
        assert_eq!(p.feature_mask & MRG_RXBUF, 0);
        assert_eq!(p.params.msix_vectors, Some(2));
        assert_eq!(p.params.odd_queue_size, Some(512));
        let p = DevicePlan::new(&cfg("virtio-net-pci", None), 2, VERSION_1 | MRG_RXBUF);
        assert_eq!(p.feature_mask & MRG_RXBUF, MRG_RXBUF);
    }

    /// `device_add` on a `server=on` chardev: a bounded wait fails with a timeout when no
    /// backend comes, and takes a connection that waited in the backlog at once.
    #[test]
    fn a_bounded_accept_times_out_and_takes_a_queued_connection() {
        let path = std::env::temp_dir().join(format!("accel-listen-{}.sock", std::process::id()));
        let listener = listen("t", &path).unwrap();
        let l = Listening {
            listener,
            wait: Some(Duration::from_millis(50)),
        };
        let e = l.accept().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        let _client = UnixStream::connect(&path).unwrap();
        assert!(l.accept().is_ok());
        std::fs::remove_file(&path).unwrap();
    }
}

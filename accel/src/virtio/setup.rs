//! Builds the PCI bus and the vhost-user virtio-pci devices a [`VmConfig`] asks for.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use vu_frontend::SharedMemory;
use vm_allocator::IdAllocator;

use super::backend::VirtioBackend;
use super::device::{
    BAR0_SIZE, VIRTIO_F_VERSION_1, VirtioPciDevice, VirtioPciError, VirtioPciParams, class_for,
};
use super::monitor::{self, BackendMonitor};
use super::vhost_user::VhostUserBackend;
use crate::config::{VhostUserDeviceConfig, VhostUserKind, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::pci::interrupts::{InterruptRouter, KvmInterruptRouter};
use crate::pci::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo, PciError, PciRoot};

/// How long to wait at VM start for a backend socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// virtio-net feature bits (virtio 1.2 §5.1.3) the frontend adjusts.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// CTRL_VQ and everything that depends on it (CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ,
/// CTRL_MAC_ADDR): accel has no control queue.
const VIRTIO_NET_CTRL_FEATURES: u64 = 0x00fe_0000;
/// MTU and SPEED_DUPLEX: their config fields lie beyond the part accel serves.
const VIRTIO_NET_CONFIG_FEATURES: u64 = (1 << 3) | (1 << 63);
/// virtio-console MULTIPORT needs more queues than accel creates.
const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// virtio-blk MQ.
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
/// Offset of `num_queues` in virtio-blk config space.
const BLK_NUM_QUEUES_OFFSET: u32 = 34;

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
}

/// The PCI bus, its devices and their backend monitors. Keep it alive as long as the VM.
pub struct PciSetup {
    pub root: Arc<PciRoot>,
    pub devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
    monitors: Vec<BackendMonitor>,
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
        for d in &self.devices {
            let d = d.lock().unwrap();
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
}

impl Drop for PciSetup {
    fn drop(&mut self) {
        self.monitors.clear();
        let report = self.stats_report();
        if self.report_stats {
            eprint!("{report}");
        } else {
            for line in report.lines() {
                log::debug!("{line}");
            }
        }
    }
}

/// What the guest sees of one `-device`: virtio id, queue count, config size.
fn shape(cfg: &VhostUserDeviceConfig, vcpus: u8) -> (u32, u16, u32) {
    match cfg.kind {
        VhostUserKind::Blk => (
            2,
            cfg.num_queues.unwrap_or(u16::from(vcpus.max(1))),
            vu_spec::blk::BLK_CONFIG_SIZE as u32,
        ),
        VhostUserKind::Net => (1, cfg.num_queues.unwrap_or(2), 10),
        VhostUserKind::Vsock => (19, 3, 8),
        VhostUserKind::Rng => (4, 1, 0),
        VhostUserKind::Console => (3, 2, 12),
        VhostUserKind::Generic {
            virtio_id,
            num_queues,
            config_size,
        } => (virtio_id, num_queues, config_size),
    }
}

fn kind_name(kind: VhostUserKind) -> &'static str {
    match kind {
        VhostUserKind::Blk => "vhost-user-blk",
        VhostUserKind::Net => "vhost-user-net",
        VhostUserKind::Vsock => "vhost-user-vsock",
        VhostUserKind::Rng => "vhost-user-rng",
        VhostUserKind::Console => "vhost-user-console",
        VhostUserKind::Generic { .. } => "vhost-user-device",
    }
}

/// Creates the host bridge (config ports 0xCF8-0xCFF on `pio_bus`) and one virtio-pci
/// function per `config.devices` entry, connected to its vhost-user backend now: a missing
/// backend is an error naming its socket.
pub fn setup_pci_devices<M: SharedMemory + Clone + 'static>(
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
pub fn setup_with_router<M: SharedMemory + Clone + 'static>(
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
    if !config.devices.is_empty() && config.memory.backends.iter().any(|b| !b.share) {
        return Err(SetupError::MemoryNotShared);
    }
    let mut setup = PciSetup {
        root: root.clone(),
        devices: Vec::new(),
        monitors: Vec::new(),
        report_stats: config.timing,
    };
    for (n, dcfg) in config.devices.iter().enumerate() {
        let name = dcfg
            .id
            .clone()
            .unwrap_or_else(|| format!("{}{n}", kind_name(dcfg.kind)));
        let chardev = config
            .chardevs
            .iter()
            .find(|c| c.id == dcfg.chardev)
            .ok_or_else(|| SetupError::NoChardev {
                device: name.clone(),
                chardev: dcfg.chardev.clone(),
            })?;
        let (virtio_id, mut num_queues, config_size) = shape(dcfg, config.smp.cpus);
        let mut backend = VhostUserBackend::connect(
            &chardev.path,
            usize::from(num_queues),
            CONNECT_TIMEOUT,
            memory.clone(),
        )
        .map_err(|source| SetupError::Connect {
            device: name.clone(),
            path: chardev.path.display().to_string(),
            source,
        })?;
        let offered = backend.backend_features();
        let device_err = |source| SetupError::Device {
            device: name.clone(),
            source,
        };
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(device_err(VirtioPciError::NoVersion1));
        }
        match dcfg.kind {
            VhostUserKind::Blk => {
                if offered & VIRTIO_BLK_F_MQ == 0 && num_queues > 1 {
                    log::warn!("{name}: backend lacks VIRTIO_BLK_F_MQ: using 1 queue");
                    num_queues = 1;
                }
                backend.patch_config(BLK_NUM_QUEUES_OFFSET, num_queues.to_le_bytes().to_vec());
            }
            VhostUserKind::Net => {
                let mut local = vec![0u8; 10];
                let mut add = VIRTIO_NET_F_STATUS;
                if let Some(mac) = dcfg.mac {
                    local[..6].copy_from_slice(&mac);
                    add |= VIRTIO_NET_F_MAC;
                }
                local[6] = 1; // VIRTIO_NET_S_LINK_UP
                local[8..10].copy_from_slice(&(num_queues / 2).max(1).to_le_bytes());
                backend.set_local_config(local);
                backend.set_feature_policy(
                    !(VIRTIO_NET_CTRL_FEATURES | VIRTIO_NET_CONFIG_FEATURES | VIRTIO_NET_F_MAC),
                    add,
                );
            }
            VhostUserKind::Console => {
                backend.set_feature_policy(!VIRTIO_CONSOLE_F_MULTIPORT, 0);
            }
            _ => {}
        }
        if backend.num_queues() < usize::from(num_queues) {
            return Err(SetupError::TooManyQueues {
                device: name,
                queues: num_queues,
                max: backend.num_queues(),
            });
        }
        let bar0 = root.allocate_mmio(BAR0_SIZE)?;
        let backend = Arc::new(Mutex::new(backend));
        let dyn_backend: Arc<Mutex<dyn VirtioBackend>> = backend.clone();
        let params = VirtioPciParams {
            virtio_id,
            class: class_for(virtio_id),
            num_queues,
            queue_size: dcfg.queue_size.unwrap_or(128),
            config_size,
        };
        let device = VirtioPciDevice::new(name.clone(), params, bar0, router.clone(), dyn_backend)
            .map_err(device_err)?;
        let slot = root.add_device(dcfg.pci_slot, device.clone())?;
        log::info!(
            "{name}: virtio-pci 00:{slot:02x}.0, virtio id {virtio_id}, {num_queues} queue(s), backend {}",
            chardev.path.display()
        );
        let reconnect =
            (chardev.reconnect_secs > 0).then(|| Duration::from_secs(chardev.reconnect_secs));
        let mon = monitor::spawn(name, backend, Arc::downgrade(&device), reconnect)
            .map_err(SetupError::Monitor)?;
        setup.monitors.push(mon);
        setup.devices.push(device);
    }
    Ok(setup)
}

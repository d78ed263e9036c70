//! MSI delivery and doorbells through KVM: GSI routes for MSI-X vectors, irqfds, ioeventfds.
//!
//! Devices talk to an [`InterruptRouter`]; [`KvmInterruptRouter`] implements it on a VM fd.
//! KVM_SET_GSI_ROUTING replaces the whole table, so the router keeps every route (the
//! PIC/IOAPIC pin defaults plus all MSI routes) and sends them all on each change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

use super::msix::MsiMessage;

/// Number of IOAPIC pins; GSIs below this are the legacy interrupt lines.
pub const IOAPIC_PINS: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("out of GSIs for MSI routes")]
    NoGsi,
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    SetRouting(kvm_ioctls::Error),
    #[error("building the GSI routing table: {0:?}")]
    RoutingTable(vmm_sys_util::fam::Error),
    #[error("KVM_IRQFD on GSI {gsi}: {err}")]
    Irqfd { gsi: u32, err: kvm_ioctls::Error },
    #[error("KVM_IOEVENTFD at {addr:#x}: {err}")]
    Ioevent { addr: u64, err: kvm_ioctls::Error },
    #[error("KVM_SIGNAL_MSI: {0}")]
    SignalMsi(kvm_ioctls::Error),
    #[error("this interrupt router cannot inject MSIs")]
    NoMsiInjection,
}

/// What a device needs from the interrupt controller and the doorbell machinery.
pub trait InterruptRouter: Send + Sync {
    /// A GSI of its own for an MSI route.
    fn allocate_gsi(&self) -> Result<u32, InterruptError>;
    /// Points `gsi` at `msg`, or removes its route (`None`: masked / disabled).
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError>;
    /// Signalling `fd` raises `gsi` without a trip through this process.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError>;
    /// Guest writes of any size to MMIO address `addr` signal `fd` instead of exiting.
    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError>;
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError>;
    /// Undoes [`Self::register_irqfd`] (device unplug).
    fn unregister_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), InterruptError> {
        Ok(())
    }
    /// Returns a GSI from [`Self::allocate_gsi`] (its route already removed).
    fn release_gsi(&self, _gsi: u32) {}
    /// Delivers one MSI now (a function with a plain MSI capability, such as a root port's
    /// hot-plug interrupt, which has no irqfd of its own).
    fn signal_msi(&self, _msg: MsiMessage) -> Result<(), InterruptError> {
        Err(InterruptError::NoMsiInjection)
    }
}

/// [`InterruptRouter`] on a KVM VM with an in-kernel irqchip (PIC + IOAPIC).
pub struct KvmInterruptRouter {
    vm: Arc<VmFd>,
    gsis: Arc<Mutex<IdAllocator>>,
    msi_routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmInterruptRouter {
    /// MSI GSIs come from `gsis` (the VMM's allocator, above the IOAPIC pins).
    pub fn new(vm: Arc<VmFd>, gsis: Arc<Mutex<IdAllocator>>) -> Self {
        KvmInterruptRouter {
            vm,
            gsis,
            msi_routes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The full routing table: the irqchip pins KVM sets up by default, then every MSI route.
    fn table(msi_routes: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::new();
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        for gsi in 0..IOAPIC_PINS {
            if gsi < 8 {
                entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            // KVM's default table routes IRQ2 (the PIC cascade) to IOAPIC pin 2 as well.
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, msg) in msi_routes {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address as u32;
            e.u.msi.address_hi = (msg.address >> 32) as u32;
            e.u.msi.data = msg.data;
            entries.push(e);
        }
        entries
    }
}

impl InterruptRouter for KvmInterruptRouter {
    fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        self.gsis
            .lock()
            .unwrap()
            .allocate_id()
            .map_err(|_| InterruptError::NoGsi)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut routes = self.msi_routes.lock().unwrap();
        let changed = match msg {
            Some(m) => routes.insert(gsi, m) != Some(m),
            None => routes.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let routing = KvmIrqRouting::from_entries(&Self::table(&routes))
            .map_err(InterruptError::RoutingTable)?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(InterruptError::SetRouting)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|err| InterruptError::Irqfd { gsi, err })
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|err| InterruptError::Irqfd { gsi, err })
    }

    fn release_gsi(&self, gsi: u32) {
        if let Err(e) = self.gsis.lock().unwrap().free_id(gsi) {
            log::warn!("freeing GSI {gsi}: {e}");
        }
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(InterruptError::SignalMsi)
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|err| InterruptError::Ioevent { addr, err })
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|err| InterruptError::Ioevent { addr, err })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table_keeps_irqchip_defaults() {
        let mut routes = BTreeMap::new();
        routes.insert(
            30,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x41,
            },
        );
        let t = KvmInterruptRouter::table(&routes);
        // 8 + 8 PIC pins, 24 IOAPIC pins, 1 MSI.
        assert_eq!(t.len(), 16 + 24 + 1);
        let msi = t.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built as an MSI entry just above.
        let (lo, hi, data) =
            unsafe { (msi.u.msi.address_lo, msi.u.msi.address_hi, msi.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_0000, 1, 0x41));
        let pin23 = t.iter().filter(|e| e.gsi == 23).count();
        assert_eq!(pin23, 1);
        let irq4 = t.iter().filter(|e| e.gsi == 4).count();
        assert_eq!(irq4, 2);
    }
}

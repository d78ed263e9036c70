//! The VM object: KVM VM fd, guest RAM, irqchip/PIT, the I/O buses and the devices on them,
//! the vCPUs, and what it takes to (re)boot them.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_allocator::IdAllocator;
use vm_memory::GuestAddressSpace;

use super::VmmError;
use super::control::VmControl;
use super::memory::GuestRam;
use super::vcpu::Vcpu;
use crate::arch::boot::{BootEntry, load_boot};
use crate::arch::cpuid::{apply_cpu_config, apply_vcpu_topology};
use crate::arch::layout::{
    FIRST_ALLOCATABLE_GSI, GSI_END, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS,
};
use crate::config::VmConfig;
use crate::devices::bus::Bus;

vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// `-global kvm-pit.lost_tick_policy=discard`: KVM stops reinjecting PIT interrupts the guest
/// missed (QEMU's kvm-pit does the same ioctl for `discard`).
fn pit_discard_lost_ticks(vm_fd: &VmFd) -> Result<(), VmmError> {
    let ctl = kvm_bindings::kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads one `kvm_reinject_control` from the pointer, which
    // refers to a live, initialised value for the duration of the call.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm_fd, KVM_REINJECT_CONTROL(), &ctl) };
    if ret < 0 {
        return Err(VmmError::Kvm(
            "KVM_REINJECT_CONTROL (kvm-pit.lost_tick_policy=discard)",
            kvm_ioctls::Error::last(),
        ));
    }
    log::info!("kvm-pit: lost ticks are discarded (KVM_REINJECT_CONTROL pit_reinject=0)");
    Ok(())
}

/// Called on guest reset (reboot), before the vCPUs run again, so devices return to their
/// power-on state.
pub type ResetHook = Box<dyn Fn() + Send + Sync>;

/// Presses the machine's power button (QMP `system_powerdown`), e.g. the ACPI power button
/// event; run on the main thread.
pub type PowerButton = Box<dyn Fn() + Send>;

/// In-kernel irqchip and PIT state right after creation: restored on reboot.
struct PlatformSnapshot {
    irqchips: Vec<kvm_irqchip>,
    pit: Option<kvm_pit_state2>,
}

pub struct Vm {
    pub config: VmConfig,
    /// The vCPUs; each thread holds its vCPU's lock while it runs it, so the main thread
    /// locks them only while they are paused.
    pub(super) vcpus: Vec<Arc<Mutex<Vcpu>>>,
    /// The PCI bus, for monitor queries.
    pub pci_root: Option<Arc<crate::pci::PciRoot>>,
    /// The bridges by id, for monitor queries.
    pub pci_bridges: crate::pci::topology::Bridges,
    /// The virtio-pci functions and their backends (hotplug adds and removes here).
    pub pci: Option<crate::virtio::PciSetup>,
    /// The ACPI PM device (SCI, GPE0), without `acpi=off`.
    pub acpi_pm: Option<Arc<Mutex<crate::devices::acpi_pm::AcpiPm>>>,
    /// The ACPI PCI hotplug registers, without `acpi=off`.
    pub pci_hotplug: Option<Arc<crate::devices::acpi_pcihp::PciHotplug>>,
    /// QMP hotplug bookkeeping (chardevs, netdevs, pending removals).
    pub(super) hotplug: super::hotplug::HotplugState,
    /// What QMP `system_powerdown` presses (`None`: the machine has no power button, e.g.
    /// `acpi=off`); the ACPI PM device registers it with [`Vm::set_power_button`].
    pub power_button: Option<PowerButton>,
    /// Port-I/O bus (vCPU IoIn/IoOut exits).
    pub pio_bus: Arc<Bus>,
    /// MMIO bus (vCPU MmioRead/MmioWrite exits).
    pub mmio_bus: Arc<Bus>,
    /// GSIs for devices (MSI routes, irqfds), after the 24 IOAPIC pins.
    pub gsi_allocator: Arc<Mutex<IdAllocator>>,
    /// Reset/exit requests from devices and vCPUs.
    pub control: Arc<VmControl>,
    reset_hooks: Vec<ResetHook>,
    snapshot: PlatformSnapshot,
    pub(super) boot: BootEntry,
    pub kvm: Kvm,
    pub vm_fd: Arc<VmFd>,
    /// Guest RAM (dropped after the VM fd: KVM slots point into it).
    pub ram: GuestRam,
}

impl Vm {
    /// Builds the whole VM, ready to run: RAM, irqchip, devices, boot data, vCPU state.
    pub fn new(config: VmConfig) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm_fd = Arc::new(
            kvm.create_vm()
                .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?,
        );
        super::teardown::defer_release(vm_fd.as_ref());
        let ram = GuestRam::new(&config.memory)?;
        ram.register(&vm_fd)?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        if let Err(e) = vm_fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e}");
        }
        vm_fd
            .create_irq_chip()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;
        if config.platform.pit_discard_lost_ticks {
            pit_discard_lost_ticks(&vm_fd)?;
        }

        let mut vm = Vm {
            vcpus: Vec::new(),
            pci_root: None,
            pci_bridges: Default::default(),
            pci: None,
            acpi_pm: None,
            pci_hotplug: None,
            hotplug: Default::default(),
            power_button: None,
            pio_bus: Arc::new(Bus::new()),
            mmio_bus: Arc::new(Bus::new()),
            gsi_allocator: Arc::new(Mutex::new(
                IdAllocator::new(FIRST_ALLOCATABLE_GSI, GSI_END - 1).map_err(VmmError::Gsi)?,
            )),
            control: Arc::new(VmControl::new()?),
            reset_hooks: Vec::new(),
            snapshot: PlatformSnapshot {
                irqchips: Vec::new(),
                pit: None,
            },
            boot: BootEntry {
                mode: crate::arch::regs::BootMode::Pvh,
                entry: 0,
                boot_info: 0,
            },
            config,
            kvm,
            vm_fd,
            ram,
        };
        vm.setup_legacy_devices()?;
        vm.setup_pci_devices()?;
        vm.create_vcpus()?;
        vm.snapshot = vm.take_snapshot();
        vm.load_and_reset_vcpus()?;
        Ok(vm)
    }

    /// ==== PCI / virtio-pci devices ====
    /// Creates the PCI host bridge and the vhost-user virtio-pci devices from
    /// `self.config.devices` / `self.config.chardevs`, inserting them on `self.pio_bus` /
    /// `self.mmio_bus`, allocating GSIs from `self.gsi_allocator`, sharing `self.ram`, and
    /// registering reset behaviour with [`Vm::add_reset_hook`]. Called once during construction,
    /// after the legacy devices and before the vCPUs are created.
    fn setup_pci_devices(&mut self) -> Result<(), VmmError> {
        let memory = (*self.ram.memory.memory()).clone();
        let pci = crate::virtio::setup_pci_devices(
            &self.config,
            self.vm_fd.clone(),
            memory,
            &self.pio_bus,
            &self.mmio_bus,
            self.gsi_allocator.clone(),
        )?;
        self.pci_root = Some(pci.root.clone());
        self.pci_bridges = pci.bridges.clone();
        let root = pci.root.clone();
        self.add_reset_hook(Box::new(move || root.reset()));
        self.hotplug = super::hotplug::HotplugState::new(&self.config, &pci);
        if let Some(hp) = &self.pci_hotplug {
            for p in &pci.plugged {
                hp.coldplugged(p.slot);
            }
        }
        self.pci = Some(pci);
        Ok(())
    }

    /// Registers what QMP `system_powerdown` does (the ACPI power button).
    pub fn set_power_button(&mut self, press: PowerButton) {
        self.power_button = Some(press);
    }

    /// Registers something to run on guest reset (reboot), before vCPUs restart.
    pub fn add_reset_hook(&mut self, hook: ResetHook) {
        self.reset_hooks.push(hook);
    }

    fn create_vcpus(&mut self) -> Result<(), VmmError> {
        let mut base = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        apply_cpu_config(
            base.as_mut_slice(),
            &self.config.cpu,
            super::host::features_off_by_default(),
        )?;
        if let Some(e) = base.as_slice().iter().find(|e| e.function == 0x8000_0008) {
            self.ram.check_phys_bits((e.eax & 0xff) as u8)?;
        }
        let n = self.config.smp.cpus.max(1);
        for index in 0..n {
            let mut cpuid = base.clone();
            apply_vcpu_topology(cpuid.as_mut_slice(), index, &self.config.smp);
            self.vcpus
                .push(Arc::new(Mutex::new(Vcpu::new(&self.vm_fd, index, cpuid)?)));
        }
        Ok(())
    }

    fn take_snapshot(&self) -> PlatformSnapshot {
        let mut irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            match self.vm_fd.get_irqchip(&mut chip) {
                Ok(()) => irqchips.push(chip),
                Err(e) => log::warn!("KVM_GET_IRQCHIP {chip_id}: {e}: not restored on reboot"),
            }
        }
        let pit = self
            .vm_fd
            .get_pit2()
            .inspect_err(|e| log::warn!("KVM_GET_PIT2: {e}: not restored on reboot"))
            .ok();
        PlatformSnapshot { irqchips, pit }
    }

    /// (Re)writes the ACPI tables (or the MP table with `acpi=off`), kernel, initrd and boot
    /// data, and puts every vCPU in its power-on state.
    fn load_and_reset_vcpus(&mut self) -> Result<(), VmmError> {
        let mem = self.ram.memory.memory();
        let ncpus = self.config.smp.cpus.max(1);
        // The MP table also with ACPI (the guest then prefers the MADT): without one Linux
        // looks for it in the F segment, remapping 64 KiB once per 16-byte step.
        crate::arch::mptable::setup_mptable(&mem, ncpus)?;
        if self.config.acpi {
            crate::arch::acpi::setup_acpi(&mem, ncpus, &self.config.platform)?;
        }
        self.boot = load_boot(&*mem, &self.config.boot, self.ram.size)?;
        for vcpu in &self.vcpus {
            vcpu.lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset(&mem, &self.boot)?;
        }
        Ok(())
    }

    /// Guest reboot: platform and devices back to power-on, boot data reloaded. The vCPUs
    /// must be paused.
    pub(super) fn reboot(&mut self) -> Result<(), VmmError> {
        for chip in &self.snapshot.irqchips {
            if let Err(e) = self.vm_fd.set_irqchip(chip) {
                log::warn!("KVM_SET_IRQCHIP {}: {e}", chip.chip_id);
            }
        }
        if let Some(pit) = &self.snapshot.pit
            && let Err(e) = self.vm_fd.set_pit2(pit)
        {
            log::warn!("KVM_SET_PIT2: {e}");
        }
        for hook in &self.reset_hooks {
            hook();
        }
        self.load_and_reset_vcpus()?;
        self.control.clear_stop();
        Ok(())
    }
}

//! The in-process platform devices on the port-I/O bus: 8250 UART (COM1, IRQ 4 through an
//! irqfd), i8042 (reset line), CMOS RTC/NVRAM, a sink for POST/delay ports, with ACPI the
//! PM1a registers (power button, S5; SCI on IRQ 9 through KVM_IRQ_LINE), and `-device pvpanic`.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::VmmError;
use super::vm::Vm;
use crate::arch::layout::ram_split;
use crate::config::IsaDeviceConfig;
use crate::devices::acpi_pcihp::{PCIHP_BASE, PCIHP_LEN, PciHotplug, PciHotplugIo};
use crate::devices::acpi_pm::{
    AcpiPm, GPE0_BLK, GPE0_BLK_LEN, Gpe0Io, PM_PORT_LEN, PM1A_EVT_BLK, SCI_IRQ,
};
use crate::devices::bus::{BusDevice, SharedDevice};
use crate::devices::cmos::{CMOS_PORT_BASE, CMOS_PORT_LEN, Cmos};
use crate::devices::debug::{DebugCon, DebugExit};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::pvpanic::{PanicEvent, Pvpanic};
use crate::devices::serial::{SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN, SerialDevice};

/// Ports the kernel pokes that need no behaviour: writes dropped, reads 0xff (debug-logged).
struct Sink(&'static str);

impl BusDevice for Sink {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        log::debug!("{} port read +{offset:#x}", self.0);
        data.fill(0xff);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        log::trace!("{} port write +{offset:#x} <- {data:x?}", self.0);
    }
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

fn bus_err(what: &'static str) -> impl Fn(crate::devices::bus::BusError) -> VmmError {
    move |source| VmmError::Bus { what, source }
}

impl Vm {
    pub(super) fn setup_legacy_devices(&mut self) -> Result<(), VmmError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("serial irq eventfd"))?;
        self.vm_fd
            .register_irqfd(&irq, SERIAL_IRQ)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD (serial)", e))?;
        let serial =
            SerialDevice::with_escape(&self.config.serial, self.config.platform.escape_char, irq)?;
        self.pio_bus
            .insert(
                Arc::new(Mutex::new(serial)),
                SERIAL_PORT_BASE,
                SERIAL_PORT_LEN,
            )
            .map_err(bus_err("serial"))?;

        let reset = super::control::ResetLine(self.control.clone());
        self.pio_bus
            .insert(
                Arc::new(Mutex::new(I8042::new(reset))),
                I8042_PORT_BASE,
                I8042_PORT_LEN,
            )
            .map_err(bus_err("i8042"))?;

        let (below, above) = ram_split(self.ram.size);
        self.pio_bus
            .insert(
                Arc::new(Mutex::new(Cmos::with_base(
                    below,
                    above,
                    self.config.platform.rtc_base,
                ))),
                CMOS_PORT_BASE,
                CMOS_PORT_LEN,
            )
            .map_err(bus_err("cmos"))?;

        if self.config.acpi {
            self.setup_acpi_pm()?;
        }
        if let Some(port) = self.config.platform.pvpanic {
            if !self.config.acpi {
                log::warn!(
                    "-device pvpanic: with acpi=off the guest has no way to find it (it is \
                     described only in the DSDT)"
                );
            }
            let control = self.control.clone();
            let sink = Box::new(move |e| {
                control.request(match e {
                    PanicEvent::Panicked => super::control::VmRequest::Panicked,
                    PanicEvent::CrashLoaded => super::control::VmRequest::CrashLoaded,
                })
            });
            self.pio_bus
                .insert(Arc::new(Mutex::new(Pvpanic::new(sink))), port.into(), 1)
                .map_err(bus_err("pvpanic"))?;
        }
        for dev in &self.config.platform.isa_devices {
            let (device, base, len): (SharedDevice, u16, u8) = match dev {
                IsaDeviceConfig::DebugCon {
                    iobase,
                    output,
                    readback,
                } => (
                    Arc::new(Mutex::new(DebugCon::new(output, *readback)?)),
                    *iobase,
                    1,
                ),
                IsaDeviceConfig::DebugExit { iobase, iosize } => (
                    Arc::new(Mutex::new(DebugExit::new(self.control.clone()))),
                    *iobase,
                    *iosize,
                ),
            };
            self.pio_bus
                .insert(device, u64::from(base), u64::from(len))
                .map_err(bus_err("ISA debug device"))?;
        }

        // POST codes (0x80, also the kernel's io_delay port) and the alternative delay port.
        for (port, name) in [(0x80u64, "POST"), (0xed, "io-delay")] {
            self.pio_bus
                .insert(Arc::new(Mutex::new(Sink(name))), port, 1)
                .map_err(bus_err(name))?;
        }
        Ok(())
    }

    /// The ACPI PM device at 0x600: SCI through KVM_IRQ_LINE (level, IRQ 9), S5 posts the
    /// guest-shutdown request, reboot returns it to power-on state.
    fn setup_acpi_pm(&mut self) -> Result<(), VmmError> {
        let vm_fd = self.vm_fd.clone();
        let mut irq_error_logged = false;
        let sci = Box::new(move |level: bool| {
            if let Err(e) = vm_fd.set_irq_line(SCI_IRQ, level)
                && !std::mem::replace(&mut irq_error_logged, true)
            {
                log::error!("KVM_IRQ_LINE (ACPI SCI, IRQ {SCI_IRQ}): {e}");
            }
        });
        let control = self.control.clone();
        let power_off = Box::new(move || control.request(super::control::VmRequest::Shutdown));
        let pm = Arc::new(Mutex::new(AcpiPm::new(sci, power_off)));
        self.pio_bus
            .insert(pm.clone(), PM1A_EVT_BLK.into(), PM_PORT_LEN)
            .map_err(bus_err("acpi-pm"))?;
        self.pio_bus
            .insert(
                Arc::new(Mutex::new(Gpe0Io(pm.clone()))),
                GPE0_BLK.into(),
                GPE0_BLK_LEN.into(),
            )
            .map_err(bus_err("acpi-gpe0"))?;
        let hotplug = PciHotplug::new().map_err(io_err("creating the PCI hotplug eventfd"))?;
        self.pio_bus
            .insert(
                Arc::new(Mutex::new(PciHotplugIo(hotplug.clone()))),
                PCIHP_BASE.into(),
                PCIHP_LEN,
            )
            .map_err(bus_err("acpi-pci-hotplug"))?;
        let hp = hotplug.clone();
        self.add_reset_hook(Box::new(move || hp.reset()));
        self.pci_hotplug = Some(hotplug);
        self.acpi_pm = Some(pm.clone());
        let button = pm.clone();
        self.set_power_button(Box::new(move || {
            button
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .press_power_button()
        }));
        self.add_reset_hook(Box::new(move || {
            pm.lock().unwrap_or_else(|e| e.into_inner()).reset()
        }));
        Ok(())
    }
}

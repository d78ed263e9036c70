//! ACPI PCI hotplug registers for bus 0, QEMU's PIIX4 interface (hw/acpi/pcihp.c), so a
//! guest's acpiphp driver finds hotplugged devices and ejects removed ones:
//!
//! ```text
//! 0xae00  PCIU (32 bits, read)   slots with a device added since the last read (read clears)
//! 0xae04  PCID (32 bits, read)   slots whose device the host asked to remove
//! 0xae08  B0EJ (32 bits, write)  the guest let go of these slots: eject them
//! 0xae0c  PCRM (32 bits, read)   slots whose device can be removed
//! 0xae10  BNUM (32 bits)         bus selector: only bus 0 (reads 0)
//! ```
//!
//! A change sets GPE0 bit [`PCIHP_GPE_BIT`] (the SCI); the DSDT's `_E01` reads PCIU/PCID and
//! notifies the slots (arch/acpi/pcihp.rs). The vCPU thread only records an eject and wakes
//! the main thread ([`PciHotplug::take_ejects`]), which takes the device off the bus: KVM
//! registrations must not be changed from a vCPU thread (see `VirtioPciDevice::new`).

use std::sync::{Arc, Mutex, PoisonError};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::bus::BusDevice;

/// First port of the register block.
pub const PCIHP_BASE: u16 = 0xae00;
/// Ports the block occupies.
pub const PCIHP_LEN: u64 = 0x14;
/// The GPE0 status bit the block raises.
pub const PCIHP_GPE_BIT: u8 = 1;
/// Slot 0 is the host bridge: slots from here on have hotplug objects in the DSDT.
pub const FIRST_HOTPLUG_SLOT: u8 = 1;

#[derive(Default)]
struct Regs {
    up: u32,
    down: u32,
    /// Ejected by the guest, not yet handled by the main thread.
    ejected: u32,
    removable: u32,
}

/// The registers, shared by the port device (vCPU threads) and the main thread.
pub struct PciHotplug {
    regs: Mutex<Regs>,
    /// Readable while ejects wait for the main thread.
    pub eject_evt: EventFd,
}

impl PciHotplug {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(PciHotplug {
            regs: Mutex::new(Regs::default()),
            eject_evt: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A device was plugged into `slot` (the caller raises the GPE).
    pub fn plugged(&self, slot: u8) {
        let mut r = self.regs();
        r.up |= 1 << slot;
        r.down &= !(1 << slot);
        r.removable |= 1 << slot;
    }

    /// The host asks the guest to let go of `slot` (the caller raises the GPE).
    pub fn request_unplug(&self, slot: u8) {
        self.regs().down |= 1 << slot;
    }

    /// A device present from power-on in `slot` (removable, no event).
    pub fn coldplugged(&self, slot: u8) {
        self.regs().removable |= 1 << slot;
    }

    /// The slot is empty again.
    pub fn removed(&self, slot: u8) {
        let mut r = self.regs();
        let bit = 1 << slot;
        r.up &= !bit;
        r.down &= !bit;
        r.removable &= !bit;
    }

    /// Main thread: slots the guest ejected since the last call.
    pub fn take_ejects(&self) -> u32 {
        let _ = self.eject_evt.read();
        std::mem::take(&mut self.regs().ejected)
    }

    /// Platform reset: pending notifications go (the guest rescans the bus when it boots).
    pub fn reset(&self) {
        let mut r = self.regs();
        r.up = 0;
        r.down = 0;
    }
}

/// The port-I/O face of [`PciHotplug`].
pub struct PciHotplugIo(pub Arc<PciHotplug>);

impl BusDevice for PciHotplugIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut r = self.0.regs();
        let value = match offset & !3 {
            0 => std::mem::take(&mut r.up),
            4 => r.down,
            0xc => r.removable,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let at = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(at + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 8 {
            return;
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let slots = u32::from_le_bytes(b) & !((1 << FIRST_HOTPLUG_SLOT) - 1);
        let mut r = self.0.regs();
        let slots = slots & r.removable;
        if slots == 0 {
            return;
        }
        r.ejected |= slots;
        r.down &= !slots;
        drop(r);
        let _ = self.0.eject_evt.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(io: &mut PciHotplugIo, off: u64) -> u32 {
        let mut b = [0u8; 4];
        io.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn up_clears_on_read_and_eject_reaches_the_main_thread() {
        let hp = PciHotplug::new().unwrap();
        let mut io = PciHotplugIo(hp.clone());
        hp.coldplugged(2);
        hp.plugged(3);
        assert_eq!(read32(&mut io, 0), 1 << 3);
        assert_eq!(read32(&mut io, 0), 0, "PCIU clears on read");
        assert_eq!(read32(&mut io, 0xc), (1 << 2) | (1 << 3));
        hp.request_unplug(3);
        assert_eq!(read32(&mut io, 4), 1 << 3);
        // Ejecting the host bridge or an empty slot does nothing.
        io.write(8, &1u32.to_le_bytes());
        io.write(8, &(1u32 << 9).to_le_bytes());
        assert_eq!(hp.take_ejects(), 0);
        io.write(8, &(1u32 << 3).to_le_bytes());
        assert_eq!(read32(&mut io, 4), 0);
        assert_eq!(hp.take_ejects(), 1 << 3);
        assert_eq!(hp.take_ejects(), 0);
        // A guest-initiated eject of a cold-plugged device is honoured too (as QEMU).
        io.write(8, &(1u32 << 2).to_le_bytes());
        assert_eq!(hp.take_ejects(), 1 << 2);
    }
}

//! PCIe enhanced configuration access mechanism (ECAM, "MMCONFIG") on `-M q35`: a 256 MiB MMIO
//! region where bus `b`, device `d`, function `f` own the 4 KiB at `b << 20 | d << 15 | f << 12`,
//! announced to the guest by the ACPI MCFG table. Accesses reach the same functions as the
//! configuration ports. Functions have 256 bytes of configuration space: the extended space
//! (0x100-0xfff) of a present function reads 0 (no extended capabilities), of an absent one
//! all-ones.

use std::sync::Arc;

use super::root::PciRoot;
use crate::devices::bus::BusDevice;

/// Guest-physical base of the ECAM region (QEMU's q35 puts it at 0xb0000000, below its
/// 32-bit PCI hole; accel's hole starts at 3 GiB, so it goes inside it, after the BAR window).
pub const PCIE_ECAM_START: u64 = 0xe000_0000;
/// Buses 0-255, 1 MiB each.
pub const PCIE_ECAM_SIZE: u64 = 0x1000_0000;
/// Last bus number the ECAM region covers.
pub const PCIE_ECAM_END_BUS: u8 = 0xff;
/// Size of one function's configuration space in ECAM.
const FUNCTION_SPACE: u64 = 4096;
/// Size of the configuration space accel's functions implement.
const IMPLEMENTED: u64 = 256;

/// The ECAM region as an MMIO-bus device.
pub struct PciEcam {
    root: Arc<PciRoot>,
}

/// `(bus, slot, function, offset in the function's space)` of an ECAM offset.
fn decode(offset: u64) -> (u8, usize, usize, u64) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as usize,
        ((offset >> 12) & 0x7) as usize,
        offset & (FUNCTION_SPACE - 1),
    )
}

/// An access the dword registers can serve: 1, 2 or 4 bytes not crossing a dword.
fn valid(pos: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && (pos % 4) as usize + len <= 4
}

impl PciEcam {
    pub fn new(root: Arc<PciRoot>) -> Self {
        PciEcam { root }
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, slot, func, pos) = decode(offset);
        if !valid(pos, data.len()) {
            data.fill(0xff);
            return;
        }
        let value = if pos < IMPLEMENTED {
            self.root.config_read(bus, slot, func, (pos / 4) as usize)
        } else if self.root.function_present(bus, slot, func) {
            0
        } else {
            0xffff_ffff
        };
        let bytes = value.to_le_bytes();
        let start = (pos % 4) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, slot, func, pos) = decode(offset);
        if !valid(pos, data.len()) || pos >= IMPLEMENTED {
            return;
        }
        self.root
            .config_write(bus, slot, func, (pos / 4) as usize, pos % 4, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::Bus;

    fn ecam_offset(bus: u64, slot: u64, func: u64, pos: u64) -> u64 {
        (bus << 20) | (slot << 15) | (func << 12) | pos
    }

    #[test]
    fn reaches_the_same_functions_as_the_ports() {
        let root = Arc::new(PciRoot::new(Arc::new(Bus::new()), Arc::new(Bus::new())).unwrap());
        let mut ecam = PciEcam::new(root);
        let mut d = [0u8; 4];
        ecam.read(ecam_offset(0, 0, 0, 0), &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        let mut w = [0u8; 2];
        ecam.read(ecam_offset(0, 0, 0, 2), &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
        // Extended space of a present function: 0; absent function: all-ones.
        ecam.read(ecam_offset(0, 0, 0, 0x100), &mut d);
        assert_eq!(d, [0; 4]);
        ecam.read(ecam_offset(0, 3, 0, 0x100), &mut d);
        assert_eq!(d, [0xff; 4]);
        ecam.read(ecam_offset(2, 0, 0, 0), &mut d);
        assert_eq!(d, [0xff; 4]);
        // Misaligned access.
        ecam.read(ecam_offset(0, 0, 0, 3), &mut w);
        assert_eq!(w, [0xff; 2]);
        // Command register write through ECAM.
        ecam.write(ecam_offset(0, 0, 0, 4), &[0x06, 0]);
        ecam.read(ecam_offset(0, 0, 0, 4), &mut d);
        assert_eq!(d[0], 0x06);
    }
}

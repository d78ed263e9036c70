//! One PCI function's 256-byte type-0 configuration space: register contents, which bits the
//! guest may write, BAR sizing, and the capability list.

use super::PciError;

/// Number of 32-bit registers in conventional PCI configuration space.
pub const NUM_CONFIG_REGISTERS: usize = 64;
/// Number of BARs of a type-0 header.
pub const NUM_BARS: usize = 6;

pub const PCI_VENDOR_ID_REDHAT: u16 = 0x1af4;
pub const PCI_VENDOR_ID_INTEL: u16 = 0x8086;

const COMMAND_REG: usize = 1;
const BAR0_REG: usize = 4;
const SUBSYSTEM_REG: usize = 11;
const CAP_PTR_REG: usize = 13;
const INTERRUPT_REG: usize = 15;
/// Status register bit: the capability list is valid.
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
/// Command register bits the guest may change: I/O space, memory space, bus master,
/// SERR, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0001 | 0x0002 | 0x0004 | 0x0100 | 0x0400;
pub const COMMAND_IO: u16 = 0x1;
pub const COMMAND_MEMORY: u16 = 0x2;
/// First byte after the standard type-0 header: where capabilities go.
const FIRST_CAP_OFFSET: usize = 0x40;

/// What kind of address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// Takes this BAR and the next one.
    Mem64,
}

/// A BAR the device implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub kind: BarKind,
    /// Power of two.
    pub size: u64,
    pub prefetchable: bool,
}

/// The class triple of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCode {
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
}

/// The fixed identity of a type-0 function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    pub class: ClassCode,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

/// Configuration space of one function (type-0 header).
#[derive(Clone, Debug)]
pub struct PciConfig {
    regs: [u32; NUM_CONFIG_REGISTERS],
    /// Bits the guest may write; everything else is read-only.
    wmask: [u32; NUM_CONFIG_REGISTERS],
    /// Bits cleared by writing 1 (status register error bits).
    w1cmask: [u32; NUM_CONFIG_REGISTERS],
    bars: [Option<BarInfo>; NUM_BARS],
    /// Offset of the last capability added (its "next" byte gets the new one).
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    pub fn new(header: &PciHeader) -> Self {
        let mut c = PciConfig {
            regs: [0; NUM_CONFIG_REGISTERS],
            wmask: [0; NUM_CONFIG_REGISTERS],
            w1cmask: [0; NUM_CONFIG_REGISTERS],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        };
        c.regs[0] = u32::from(header.vendor_id) | (u32::from(header.device_id) << 16);
        c.regs[2] = u32::from(header.revision)
            | (u32::from(header.class.prog_if) << 8)
            | (u32::from(header.class.subclass) << 16)
            | (u32::from(header.class.class) << 24);
        c.regs[SUBSYSTEM_REG] =
            u32::from(header.subsystem_vendor_id) | (u32::from(header.subsystem_id) << 16);
        c.wmask[COMMAND_REG] = COMMAND_WRITABLE;
        // Status: master/target abort, SERR, parity error bits are write-1-to-clear.
        c.w1cmask[COMMAND_REG] = 0xf900_0000;
        // Cache line size and latency timer are plain read/write scratch registers.
        c.wmask[3] = 0x0000_ffff;
        // Interrupt line is read/write (firmware scratch); pin stays 0 (no INTx).
        c.wmask[INTERRUPT_REG] = 0x0000_00ff;
        c
    }

    /// Declares BAR `index` with `info`, initially at `addr` (the VMM assigns addresses, as
    /// firmware would). A 64-bit BAR also uses `index + 1`.
    pub fn add_bar(&mut self, index: usize, info: BarInfo, addr: u64) -> Result<(), PciError> {
        let pair = usize::from(info.kind == BarKind::Mem64);
        if index + pair >= NUM_BARS
            || self.bars[index].is_some()
            || (pair == 1 && self.bars[index + 1].is_some())
        {
            return Err(PciError::InvalidBar(index));
        }
        let min = if info.kind == BarKind::Io { 4 } else { 16 };
        if !info.size.is_power_of_two()
            || info.size < min
            || (info.kind != BarKind::Mem64 && info.size > 1 << 31)
            || addr & (info.size - 1) != 0
        {
            return Err(PciError::InvalidBarSize(info.size));
        }
        let mask = !(info.size - 1);
        let (type_bits, addr_bits): (u32, u32) = match info.kind {
            BarKind::Io => (0x1, 0xffff_fffc),
            BarKind::Mem32 => (u32::from(info.prefetchable) << 3, 0xffff_fff0),
            BarKind::Mem64 => (0x4 | (u32::from(info.prefetchable) << 3), 0xffff_fff0),
        };
        let reg = BAR0_REG + index;
        self.wmask[reg] = (mask as u32) & addr_bits;
        self.regs[reg] = ((addr as u32) & addr_bits) | type_bits;
        if pair == 1 {
            self.wmask[reg + 1] = (mask >> 32) as u32;
            self.regs[reg + 1] = (addr >> 32) as u32;
        }
        self.bars[index] = Some(info);
        Ok(())
    }

    /// The BAR declared at `index` (not the upper half of a 64-bit BAR).
    pub fn bar_info(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` currently holds (as programmed by the guest).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let info = self.bar_info(index)?;
        let reg = BAR0_REG + index;
        Some(match info.kind {
            BarKind::Io => u64::from(self.regs[reg] & 0xffff_fffc),
            BarKind::Mem32 => u64::from(self.regs[reg] & 0xffff_fff0),
            BarKind::Mem64 => {
                u64::from(self.regs[reg] & 0xffff_fff0) | (u64::from(self.regs[reg + 1]) << 32)
            }
        })
    }

    /// Where BAR `index` decodes right now: its address if the matching command-register
    /// enable bit is set, `None` otherwise.
    pub fn bar_mapping(&self, index: usize) -> Option<u64> {
        let info = self.bar_info(index)?;
        let bit = if info.kind == BarKind::Io {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        (self.command() & bit != 0)
            .then(|| self.bar_address(index))
            .flatten()
    }

    /// Power-on command register: no decoding, no bus mastering.
    pub fn reset_command(&mut self) {
        self.regs[COMMAND_REG] &= 0xffff_0000;
    }

    pub fn command(&self) -> u16 {
        self.regs[COMMAND_REG] as u16
    }

    /// Appends a capability. `body` starts with the capability id; its second byte (the
    /// "next" pointer) is filled in here. `writable` has one mask byte per `body` byte.
    /// Returns the capability's offset in configuration space.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> Result<usize, PciError> {
        if body.len() < 2 || writable.len() != body.len() {
            return Err(PciError::InvalidCapability);
        }
        let offset = self.next_cap;
        let end = offset + body.len();
        if end > NUM_CONFIG_REGISTERS * 4 {
            return Err(PciError::CapabilitySpaceFull);
        }
        for (i, (&b, &w)) in body.iter().zip(writable).enumerate() {
            let pos = offset + i;
            let value = if i == 1 { 0 } else { b };
            self.set_byte(pos, value);
            self.set_wmask_byte(pos, if i < 2 { 0 } else { w });
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, offset as u8),
            None => {
                self.set_byte(CAP_PTR_REG * 4, offset as u8);
                self.regs[COMMAND_REG] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        // Capabilities are dword aligned.
        self.next_cap = (end + 3) & !3;
        Ok(offset)
    }

    fn set_byte(&mut self, pos: usize, value: u8) {
        let shift = (pos % 4) * 8;
        let r = &mut self.regs[pos / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
    }

    fn set_wmask_byte(&mut self, pos: usize, value: u8) {
        let shift = (pos % 4) * 8;
        let r = &mut self.wmask[pos / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(value) << shift);
    }

    /// Reads one byte of configuration space (0xff past the end).
    pub fn read_byte(&self, pos: usize) -> u8 {
        self.regs
            .get(pos / 4)
            .map_or(0xff, |r| (r >> ((pos % 4) * 8)) as u8)
    }

    /// Reads 32-bit register `reg` (all-ones past the end).
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Sets which bits of register `reg` the guest may write (type-1 headers, dword-wide
    /// capability registers).
    pub fn set_wmask(&mut self, reg: usize, mask: u32) {
        if let Some(r) = self.wmask.get_mut(reg) {
            *r = mask;
        }
    }

    /// Sets which bits of register `reg` a guest write of 1 clears (status registers).
    pub fn set_w1cmask(&mut self, reg: usize, mask: u32) {
        if let Some(r) = self.w1cmask.get_mut(reg) {
            *r = mask;
        }
    }

    /// Overwrites register contents regardless of the write mask (device-side updates).
    pub fn set_reg(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = value;
        }
    }

    /// A guest write of `data` (1, 2 or 4 bytes) at byte `offset` of register `reg`,
    /// honouring the write masks.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if reg >= NUM_CONFIG_REGISTERS || offset as usize + data.len() > 4 || data.is_empty() {
            log::debug!(
                "pci: ignored config write reg {reg} offset {offset} len {}",
                data.len()
            );
            return;
        }
        let mut value = 0u32;
        let mut lanes = 0u32;
        for (i, &b) in data.iter().enumerate() {
            let shift = (offset as usize + i) * 8;
            value |= u32::from(b) << shift;
            lanes |= 0xff << shift;
        }
        let wmask = self.wmask[reg] & lanes;
        let w1c = self.w1cmask[reg] & lanes & value;
        let r = &mut self.regs[reg];
        *r = (*r & !wmask) | (value & wmask);
        *r &= !w1c;
    }
}

/// Walks a capability list starting at the capability pointer; returns `(offset, id)` pairs.
/// Stops on loops and out-of-range pointers.
pub fn capabilities(read_byte: impl Fn(usize) -> u8) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut pos = usize::from(read_byte(CAP_PTR_REG * 4)) & !3;
    while (FIRST_CAP_OFFSET..NUM_CONFIG_REGISTERS * 4).contains(&pos) && out.len() < 48 {
        out.push((pos, read_byte(pos)));
        pos = usize::from(read_byte(pos + 1)) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: ClassCode {
                class: 0x01,
                subclass: 0x80,
                prog_if: 0,
            },
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        }
    }

    fn write32(c: &mut PciConfig, reg: usize, v: u32) {
        c.write(reg, 0, &v.to_le_bytes());
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfig::new(&header());
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0180_0001);
        assert_eq!(c.read_reg(11), 0x1100_1af4);
        write32(&mut c, 0, 0xffff_ffff);
        write32(&mut c, 2, 0);
        write32(&mut c, 11, 0);
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0180_0001);
        assert_eq!(c.read_reg(11), 0x1100_1af4);
        assert_eq!(c.read_reg(64), 0xffff_ffff);
    }

    #[test]
    fn command_mask_and_status_w1c() {
        let mut c = PciConfig::new(&header());
        write32(&mut c, 1, 0xffff_ffff);
        assert_eq!(c.command(), 0x0507);
        // Byte write to the high command byte only touches that lane.
        c.write(1, 1, &[0x00]);
        assert_eq!(c.command(), 0x0007);
        // Device sets an error status bit; the guest clears it by writing 1.
        c.set_reg(1, c.read_reg(1) | 0x2000_0000);
        c.write(1, 2, &[0x00, 0x20]);
        assert_eq!(c.read_reg(1) & 0x2000_0000, 0);
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = PciConfig::new(&header());
        let mem = BarInfo {
            kind: BarKind::Mem32,
            size: 0x4000,
            prefetchable: false,
        };
        c.add_bar(0, mem, 0xc000_0000).unwrap();
        let mem64 = BarInfo {
            kind: BarKind::Mem64,
            size: 0x1_0000_0000,
            prefetchable: true,
        };
        c.add_bar(2, mem64, 0x1_0000_0000).unwrap();
        let io = BarInfo {
            kind: BarKind::Io,
            size: 0x20,
            prefetchable: false,
        };
        c.add_bar(4, io, 0x1000).unwrap();
        assert_eq!(c.read_reg(4), 0xc000_0000);
        assert_eq!(c.read_reg(6), 0x0000_000c);
        assert_eq!(c.read_reg(7), 0x1);
        assert_eq!(c.read_reg(8), 0x1001);
        for reg in 4..10 {
            write32(&mut c, reg, 0xffff_ffff);
        }
        assert_eq!(c.read_reg(4), 0xffff_c000);
        assert_eq!(c.read_reg(5), 0, "unimplemented BAR reads 0");
        assert_eq!(c.read_reg(6), 0x0000_000c);
        assert_eq!(c.read_reg(7), 0xffff_ffff);
        assert_eq!(c.read_reg(8), 0xffff_ffe1);
        assert_eq!(c.read_reg(9), 0);
        // Reprogram BAR0 to a new address: low bits are dropped to the BAR's alignment.
        write32(&mut c, 4, 0xd000_1234);
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        // Not decoded until memory space is enabled.
        assert_eq!(c.bar_mapping(0), None);
        write32(&mut c, 1, u32::from(COMMAND_MEMORY));
        assert_eq!(c.bar_mapping(0), Some(0xd000_0000));
        assert_eq!(c.bar_mapping(4), None);
        assert_eq!(c.bar_mapping(1), None);
    }

    #[test]
    fn rejects_bad_bars() {
        let mut c = PciConfig::new(&header());
        let bad = BarInfo {
            kind: BarKind::Mem32,
            size: 0x3000,
            prefetchable: false,
        };
        assert!(c.add_bar(0, bad, 0).is_err());
        let ok = BarInfo {
            size: 0x1000,
            ..bad
        };
        assert!(c.add_bar(0, ok, 0x800).is_err(), "misaligned");
        let m64 = BarInfo {
            kind: BarKind::Mem64,
            size: 0x1000,
            prefetchable: false,
        };
        assert!(c.add_bar(5, m64, 0).is_err());
        c.add_bar(0, ok, 0).unwrap();
        assert!(c.add_bar(0, ok, 0).is_err());
    }

    #[test]
    fn capability_list_walk_and_masks() {
        let mut c = PciConfig::new(&header());
        assert_eq!(capabilities(|p| c.read_byte(p)), vec![]);
        let a = c
            .add_capability(&[0x09, 0xee, 5, 1, 2], &[0, 0, 0, 0xff, 0])
            .unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_ne!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        assert_eq!(
            capabilities(|p| c.read_byte(p)),
            vec![(0x40, 0x09), (0x48, 0x11)]
        );
        // The "next" byte is ours, not the body's.
        assert_eq!(c.read_byte(0x41), 0x48);
        assert_eq!(c.read_byte(0x49), 0);
        c.write(0x40 / 4, 1, &[0x00]);
        assert_eq!(c.read_byte(0x41), 0x48);
        c.write(0x40 / 4, 3, &[0x7f]);
        assert_eq!(c.read_byte(0x43), 0x7f);
        c.write(0x48 / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read_byte(0x4a), 0);
        assert_eq!(c.read_byte(0x4b), 0xc0);
        let big = [0u8; 200];
        assert_eq!(
            c.add_capability(&big, &big),
            Err(PciError::CapabilitySpaceFull)
        );
    }
}

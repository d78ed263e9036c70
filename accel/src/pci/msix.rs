//! MSI-X: the capability's control word, the vector table and the pending-bit array.
//!
//! The state machine only; delivering a vector (KVM GSI routes, irqfds) is the owner's job,
//! driven by the [`MsixChange`]s this reports.

/// Capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_CTRL_MASKED: u32 = 1;
/// Maximum number of vectors of one function.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// An MSI message as programmed in a table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

/// What the guest's last access changed, for the owner to mirror into the interrupt routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixChange {
    /// Nothing that affects delivery.
    None,
    /// One vector's effective state (message or masking) changed.
    Vector(u16),
    /// Enable or function mask changed: every vector may have changed.
    All,
}

/// MSI-X state of one function.
#[derive(Clone, Debug)]
pub struct Msix {
    table: Vec<Entry>,
    pba: Vec<u64>,
    control: u16,
}

impl Msix {
    /// `vectors` in `1..=2048`; every entry starts masked, as the spec requires.
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors.clamp(1, MSIX_MAX_VECTORS));
        Msix {
            table: vec![
                Entry {
                    ctrl: VECTOR_CTRL_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pba: vec![0; n.div_ceil(64)],
            control: (n - 1) as u16,
        }
    }

    pub fn num_vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// Bytes of the vector table.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the pending-bit array (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// The capability body (id, next, control, table offset/BIR, PBA offset/BIR) and its
    /// write mask (only the enable and function-mask bits are writable).
    pub fn capability(
        &self,
        table_bar: u8,
        table_off: u32,
        pba_bar: u8,
        pba_off: u32,
    ) -> ([u8; 12], [u8; 12]) {
        let mut body = [0u8; 12];
        body[0] = MSIX_CAP_ID;
        body[2..4].copy_from_slice(&(self.num_vectors() - 1).to_le_bytes());
        body[4..8].copy_from_slice(&(table_off | u32::from(table_bar & 7)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_off | u32::from(pba_bar & 7)).to_le_bytes());
        let mut wmask = [0u8; 12];
        wmask[3] = 0xc0;
        (body, wmask)
    }

    pub fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    pub fn function_masked(&self) -> bool {
        self.control & CTRL_FUNCTION_MASK != 0
    }

    /// Records the guest's new control word (after the config-space write mask applied).
    pub fn set_control(&mut self, control: u16) -> MsixChange {
        let new = (self.control & !(CTRL_ENABLE | CTRL_FUNCTION_MASK))
            | (control & (CTRL_ENABLE | CTRL_FUNCTION_MASK));
        if new == self.control {
            return MsixChange::None;
        }
        self.control = new;
        MsixChange::All
    }

    /// Resets to power-on state: disabled, every entry masked and zeroed, nothing pending.
    pub fn reset(&mut self) {
        *self = Msix::new(self.num_vectors());
    }

    /// The message `vector` delivers now: `None` if MSI-X is off, the function or the vector
    /// is masked, or the vector does not exist.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.table.get(usize::from(vector))?;
        (self.enabled() && !self.function_masked() && e.ctrl & VECTOR_CTRL_MASKED == 0).then_some(
            MsiMessage {
                address: u64::from(e.addr_lo) | (u64::from(e.addr_hi) << 32),
                data: e.data,
            },
        )
    }

    /// Guest read in the vector table (4- or 8-byte aligned accesses; others read as 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let idx = (offset / MSIX_ENTRY_SIZE) as usize;
        let field = offset % MSIX_ENTRY_SIZE;
        let Some(e) = self.table.get(idx) else {
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.ctrl];
        match (data.len(), field) {
            (4, 0 | 4 | 8 | 12) => {
                data.copy_from_slice(&words[(field / 4) as usize].to_le_bytes());
            }
            (8, 0 | 8) => {
                let i = (field / 4) as usize;
                let v = u64::from(words[i]) | (u64::from(words[i + 1]) << 32);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => log::debug!("msix: unaligned table read at {offset:#x}"),
        }
    }

    /// Guest write in the vector table. Returns which vector's delivery changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        let idx = (offset / MSIX_ENTRY_SIZE) as usize;
        let field = offset % MSIX_ENTRY_SIZE;
        let Some(old) = self.table.get(idx).copied() else {
            return MsixChange::None;
        };
        let mut words = [old.addr_lo, old.addr_hi, old.data, old.ctrl];
        match (data.len(), field) {
            (4, 0 | 4 | 8 | 12) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                words[(field / 4) as usize] = u32::from_le_bytes(b);
            }
            (8, 0 | 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                let v = u64::from_le_bytes(b);
                let i = (field / 4) as usize;
                words[i] = v as u32;
                words[i + 1] = (v >> 32) as u32;
            }
            _ => {
                log::debug!("msix: unaligned table write at {offset:#x}");
                return MsixChange::None;
            }
        }
        let new = Entry {
            addr_lo: words[0],
            addr_hi: words[1],
            data: words[2],
            // Only the mask bit of vector control is defined.
            ctrl: words[3] & VECTOR_CTRL_MASKED,
        };
        self.table[idx] = new;
        if new == old {
            MsixChange::None
        } else {
            let vector = idx as u16;
            // Unmasking a vector whose event was held back delivers it: the owner sees the
            // change and re-evaluates; the pending bit is cleared by it via `take_pending`.
            MsixChange::Vector(vector)
        }
    }

    /// Guest read of the pending-bit array (read-only for the guest).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            let byte = start + i;
            if let Some(q) = self.pba.get(byte / 8) {
                *b = (q >> ((byte % 8) * 8)) as u8;
            }
        }
    }

    /// Marks `vector` pending (an event arrived while it could not be delivered).
    pub fn set_pending(&mut self, vector: u16) {
        let v = usize::from(vector);
        if let Some(q) = self.pba.get_mut(v / 64) {
            *q |= 1 << (v % 64);
        }
    }

    /// Clears and returns `vector`'s pending bit if it is now deliverable.
    pub fn take_pending(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if self.message(vector).is_none() {
            return false;
        }
        match self.pba.get_mut(v / 64) {
            Some(q) if *q & (1 << (v % 64)) != 0 => {
                *q &= !(1 << (v % 64));
                true
            }
            _ => false,
        }
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_masked_and_disabled() {
        let m = Msix::new(3);
        assert_eq!(m.num_vectors(), 3);
        assert_eq!(m.table_size(), 48);
        assert_eq!(m.pba_size(), 8);
        let mut d = [0u8; 4];
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        assert_eq!(m.message(0), None);
        let (cap, wmask) = m.capability(0, 0x8000, 0, 0xc000);
        assert_eq!(cap[0], 0x11);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 2);
        assert_eq!(u32::from_le_bytes([cap[4], cap[5], cap[6], cap[7]]), 0x8000);
        assert_eq!(wmask[3], 0xc0);
    }

    #[test]
    fn table_programming_and_masking() {
        let mut m = Msix::new(2);
        assert_eq!(
            m.write_table(16, &0xfee0_1000u32.to_le_bytes()),
            MsixChange::Vector(1)
        );
        assert_eq!(m.write_table(20, &0u32.to_le_bytes()), MsixChange::None);
        assert_eq!(
            m.write_table(24, &0x4041u32.to_le_bytes()),
            MsixChange::Vector(1)
        );
        assert_eq!(m.message(1), None, "still masked and disabled");
        assert_eq!(m.set_control(0x8000 | 0x4000), MsixChange::All);
        assert_eq!(
            m.write_table(28, &0u32.to_le_bytes()),
            MsixChange::Vector(1)
        );
        assert_eq!(m.message(1), None, "function mask");
        assert_eq!(m.set_control(0x8000), MsixChange::All);
        assert_eq!(
            m.message(1),
            Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x4041
            })
        );
        assert_eq!(m.message(0), None);
        assert_eq!(m.message(2), None);
        // 8-byte access to address.
        let mut d = [0u8; 8];
        m.read_table(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0xfee0_1000);
        m.write_table(16, &0x1_fee0_2000u64.to_le_bytes());
        assert_eq!(m.message(1).unwrap().address, 0x1_fee0_2000);
        // Reserved vector-control bits read back as zero.
        m.write_table(28, &0xffff_fffeu32.to_le_bytes());
        let mut c = [0u8; 4];
        m.read_table(28, &mut c);
        assert_eq!(c, [0; 4]);
        // Misaligned accesses are ignored.
        assert_eq!(m.write_table(17, &[1, 2]), MsixChange::None);
        // Past the table.
        assert_eq!(m.write_table(64, &0u32.to_le_bytes()), MsixChange::None);
    }

    #[test]
    fn pending_bits() {
        let mut m = Msix::new(70);
        assert_eq!(m.pba_size(), 16);
        m.set_pending(65);
        let mut d = [0u8; 8];
        m.read_pba(8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 2);
        assert!(!m.take_pending(65), "masked: stays pending");
        assert!(m.is_pending(65));
        m.set_control(0x8000);
        m.write_table(65 * 16 + 12, &0u32.to_le_bytes());
        assert!(m.take_pending(65));
        assert!(!m.is_pending(65));
        m.reset();
        assert!(!m.enabled());
        assert_eq!(m.message(65), None);
    }
}

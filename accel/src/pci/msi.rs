//! A plain MSI capability (PCI local bus spec 6.8.1): one vector, 64-bit message address,
//! no per-vector masking — what QEMU's ioh3420 root port declares (`msi_init(.., 1, true,
//! false)`). accel's root ports use it for their hot-plug interrupt; the message is
//! delivered with KVM_SIGNAL_MSI (see [`super::InterruptRouter::signal_msi`]).

use super::config::PciConfig;
use super::msix::MsiMessage;

pub const CAP_ID_MSI: u8 = 0x05;
/// Capability length with a 64-bit address and no mask bits.
const MSI_CAP_LEN: usize = 0x0e;
const MSI_FLAGS: usize = 0x02;
const MSI_ADDRESS_LO: usize = 0x04;
const MSI_ADDRESS_HI: usize = 0x08;
const MSI_DATA: usize = 0x0c;
const FLAGS_ENABLE: u16 = 1 << 0;
/// Multiple Message Capable = 1 vector (0); Multiple Message Enable writable (bits 4-6), as
/// QEMU leaves it; 64-bit address capable.
const FLAGS_64BIT: u16 = 1 << 7;
const FLAGS_WRITABLE: u16 = FLAGS_ENABLE | (7 << 4);

/// Appends the capability to `config`; returns its offset.
pub fn add_msi_capability(config: &mut PciConfig) -> Result<usize, super::PciError> {
    let mut body = [0u8; MSI_CAP_LEN];
    let mut wmask = [0u8; MSI_CAP_LEN];
    body[0] = CAP_ID_MSI;
    body[MSI_FLAGS..MSI_FLAGS + 2].copy_from_slice(&FLAGS_64BIT.to_le_bytes());
    wmask[MSI_FLAGS..MSI_FLAGS + 2].copy_from_slice(&FLAGS_WRITABLE.to_le_bytes());
    wmask[MSI_ADDRESS_LO..MSI_ADDRESS_LO + 4].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
    wmask[MSI_ADDRESS_HI..MSI_ADDRESS_HI + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    wmask[MSI_DATA..MSI_DATA + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    config.add_capability(&body, &wmask)
}

fn read16(config: &PciConfig, pos: usize) -> u16 {
    u16::from_le_bytes([config.read_byte(pos), config.read_byte(pos + 1)])
}

fn read32(config: &PciConfig, pos: usize) -> u32 {
    u32::from(read16(config, pos)) | (u32::from(read16(config, pos + 2)) << 16)
}

/// The message the function sends for vector 0, if the guest enabled MSI.
pub fn msi_message(config: &PciConfig, cap: usize) -> Option<MsiMessage> {
    if read16(config, cap + MSI_FLAGS) & FLAGS_ENABLE == 0 {
        return None;
    }
    let address = u64::from(read32(config, cap + MSI_ADDRESS_LO))
        | (u64::from(read32(config, cap + MSI_ADDRESS_HI)) << 32);
    Some(MsiMessage {
        address,
        data: u32::from(read16(config, cap + MSI_DATA)),
    })
}

/// Platform reset: MSI disabled (the message registers keep their contents, as they are
/// undefined until the OS programs them).
pub fn reset_msi(config: &mut PciConfig, cap: usize) {
    let reg = (cap + MSI_FLAGS) / 4;
    let shift = ((cap + MSI_FLAGS) % 4) * 8;
    let value = config.read_reg(reg) & !(u32::from(FLAGS_WRITABLE) << shift);
    config.set_reg(reg, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{ClassCode, PciHeader};

    #[test]
    fn enabled_message_and_reset() {
        let mut c = PciConfig::new(&PciHeader {
            vendor_id: 0x1b36,
            device_id: 0x000c,
            revision: 0,
            class: ClassCode {
                class: 6,
                subclass: 4,
                prog_if: 0,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        let cap = add_msi_capability(&mut c).unwrap();
        assert_eq!(c.read_byte(cap), CAP_ID_MSI);
        assert_eq!(read16(&c, cap + MSI_FLAGS), FLAGS_64BIT);
        assert_eq!(msi_message(&c, cap), None);
        let w =
            |c: &mut PciConfig, pos: usize, data: &[u8]| c.write(pos / 4, (pos % 4) as u64, data);
        w(&mut c, cap + MSI_ADDRESS_LO, &0xfee0_1003u32.to_le_bytes());
        w(&mut c, cap + MSI_ADDRESS_HI, &1u32.to_le_bytes());
        w(&mut c, cap + MSI_DATA, &0x4041u16.to_le_bytes());
        w(
            &mut c,
            cap + MSI_FLAGS,
            &(FLAGS_ENABLE | 1 << 8).to_le_bytes(),
        );
        assert_eq!(
            msi_message(&c, cap),
            Some(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041
            })
        );
        assert_eq!(
            read16(&c, cap + MSI_FLAGS),
            FLAGS_64BIT | FLAGS_ENABLE,
            "read-only bits"
        );
        reset_msi(&mut c, cap);
        assert_eq!(msi_message(&c, cap), None);
    }
}

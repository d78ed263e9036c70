//! Guest-physical address map: where RAM goes, where the boot structures live, and the e820 map
//! the guest is given.
//!
//! ```text
//! 0x0000_0500  GDT (boot)                 0x0000_9000  page tables (PML4, PDPT, 4 PDs)
//! 0x0000_0520  IDT (empty)                0x0002_0000  kernel command line
//! 0x0000_6000  PVH hvm_start_info         0x0009_fc00  EBDA: MP table
//! 0x0000_7000  Linux zero page            0x0010_0000  kernel
//! 0x0000_8ff0  boot stack (64-bit entry)  top of low RAM: initrd
//! [0xC000_0000, 0x1_0000_0000): 32-bit PCI hole (BARs in [0xC000_0000, 0xFEC0_0000))
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (limit 0: any exception before the kernel loads its own triple-faults).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4; the PDPT follows at +0x1000 and the four page directories at +0x2000..+0x6000.
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line accel writes (bytes, without the NUL).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000 - 1;
/// Extended BIOS data area: the MP table lives here; reserved up to 1 MiB in e820.
pub const EBDA_START: u64 = 0x9_fc00;
/// First byte above the legacy BIOS area.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit PCI hole: RAM never goes here.
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// End of the 32-bit window PCI BARs are allocated from (IOAPIC/LAPIC live above).
pub const PCI_MMIO_END: u64 = 0xFEC0_0000;
/// 4 GiB: RAM that did not fit below the PCI hole continues here.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;
/// KVM's TSS (3 pages) and identity-map page sit just below the BIOS ROM area at 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xFFFB_D000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;
/// GSIs 0-23 are the IOAPIC pins; GSIs handed out to devices (MSI routes, irqfds) start here.
pub const FIRST_ALLOCATABLE_GSI: u32 = 24;
/// Exclusive upper bound of allocatable GSIs (KVM's default routing table size).
pub const GSI_END: u32 = 4096;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One piece of guest RAM: `size` bytes at `gpa`, backed by `backend` at `offset` in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    pub gpa: u64,
    pub size: u64,
    pub backend: usize,
    pub offset: u64,
}

/// Lays backends out from GPA 0 in order, moving whatever would cross into the PCI hole above
/// 4 GiB (a backend straddling the hole is split into two ranges of the same file).
pub fn ram_ranges(backend_sizes: &[u64]) -> Vec<RamRange> {
    let mut out = Vec::new();
    let mut gpa = 0u64;
    for (backend, &size) in backend_sizes.iter().enumerate() {
        let mut offset = 0u64;
        while offset < size {
            if gpa == PCI_HOLE_START {
                gpa = RAM_ABOVE_4G_START;
            }
            let room = if gpa < PCI_HOLE_START {
                PCI_HOLE_START - gpa
            } else {
                u64::MAX - gpa
            };
            let len = (size - offset).min(room);
            out.push(RamRange {
                gpa,
                size: len,
                backend,
                offset,
            });
            gpa += len;
            offset += len;
        }
    }
    out
}

/// RAM below the PCI hole and above 4 GiB, in bytes.
pub fn ram_split(total: u64) -> (u64, u64) {
    let below = total.min(PCI_HOLE_START);
    (below, total - below)
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for `total` bytes of RAM laid out by [`ram_ranges`]: RAM below the EBDA, the
/// EBDA/BIOS area reserved, RAM from 1 MiB to the end of low RAM, and RAM above 4 GiB.
pub fn e820_map(total: u64) -> Vec<E820Entry> {
    let (below, above) = ram_split(total);
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START.min(below),
        kind: E820_RAM,
    }];
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIGH_MEMORY_START - EBDA_START,
        kind: E820_RESERVED,
    });
    if below > HIGH_MEMORY_START {
        map.push(E820Entry {
            addr: HIGH_MEMORY_START,
            size: below - HIGH_MEMORY_START,
            kind: E820_RAM,
        });
    }
    if above > 0 {
        map.push(E820Entry {
            addr: RAM_ABOVE_4G_START,
            size: above,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_ram_is_one_range_and_standard_e820() {
        assert_eq!(
            ram_ranges(&[128 * MIB]),
            vec![RamRange {
                gpa: 0,
                size: 128 * MIB,
                backend: 0,
                offset: 0
            }]
        );
        assert_eq!(
            e820_map(128 * MIB),
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn ram_crossing_the_pci_hole_continues_at_4g() {
        // Two backends: 2 GiB then 2 GiB; the second straddles 3 GiB.
        let r = ram_ranges(&[2 * GIB, 2 * GIB]);
        assert_eq!(
            r,
            vec![
                RamRange {
                    gpa: 0,
                    size: 2 * GIB,
                    backend: 0,
                    offset: 0
                },
                RamRange {
                    gpa: 2 * GIB,
                    size: GIB,
                    backend: 1,
                    offset: 0
                },
                RamRange {
                    gpa: 4 * GIB,
                    size: GIB,
                    backend: 1,
                    offset: GIB
                },
            ]
        );
        let e = e820_map(4 * GIB);
        assert_eq!(
            e[2],
            E820Entry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            e[3],
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820_RAM
            }
        );
        // Nothing the guest sees as RAM overlaps the hole.
        assert!(
            e.iter()
                .all(|x| x.addr + x.size <= PCI_HOLE_START || x.addr >= RAM_ABOVE_4G_START)
        );
    }

    #[test]
    fn backend_ending_exactly_at_hole() {
        let r = ram_ranges(&[3 * GIB, MIB]);
        assert_eq!(
            r[1],
            RamRange {
                gpa: 4 * GIB,
                size: MIB,
                backend: 1,
                offset: 0
            }
        );
    }
}

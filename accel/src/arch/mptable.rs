//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its CPUs, its
//! buses, its IOAPIC and how ISA interrupts reach the IOAPIC.
//!
//! Layout, starting at [`MPTABLE_START`] (0x9fc00, the top KiB of base memory that Linux scans
//! and that the e820 map reserves up to 1 MiB):
//!
//! ```text
//! 0x9fc00  MP floating pointer structure ("_MP_", 16 bytes, checksummed) -> physptr
//! 0x9fc10  MP configuration table header ("PCMP", 44 bytes, checksummed over the base table)
//!          processor entries (one per vCPU, APIC id = index, BSP = 0)
//!          bus entries (PCI bus 0, ISA bus 1)
//!          one IOAPIC entry (id = num_cpus, 0xfec00000)
//!          I/O interrupt entries: ISA IRQ n -> IOAPIC pin n, n = 0..15
//!          local interrupt entries: ExtINT -> LINT0 of the BSP, NMI -> LINT1 of every CPU
//! ```
//!
//! ISA IRQs are mapped to the IOAPIC pin with the same number (IRQ0 -> pin 0), like Firecracker
//! and Cloud Hypervisor do: that is KVM's default GSI routing (GSI n -> PIC line n and IOAPIC
//! pin n for n < 16), which the in-kernel PIT uses for IRQ0. QEMU's IRQ0 -> pin 2 only holds
//! because QEMU reprograms KVM's routing; whoever replaces the GSI routing table (e.g. to add
//! MSI routes) must keep GSI n -> IOAPIC pin n for this table to stay true.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

/// Guest-physical address of the MP floating pointer structure.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End (exclusive) of the reserved area the table must fit in.
pub const MPTABLE_LIMIT: u64 = 0x10_0000;
/// Largest vCPU count a table can describe: APIC ids 0..=253, the IOAPIC takes the next id and
/// 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 254;
/// Physical address of the IOAPIC's register window.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of the local APICs' register window.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Number of ISA IRQs described (0..15).
pub const ISA_IRQS: u8 = 16;
/// Bus ids used in the table.
pub const BUS_ID_PCI: u8 = 0;
pub const BUS_ID_ISA: u8 = 1;

const SPEC_REV_1_4: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const OEM_ID: [u8; 8] = *b"ACCEL   ";
const PRODUCT_ID: [u8; 12] = *b"ACCEL VM    ";

// Entry type codes (MP spec table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types (MP spec table 4-8).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the bus" (ISA: active high, edge).
const INT_FLAGS_CONFORM: u16 = 0;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
/// CPU signature: family 6, model 0, stepping 0 (what Firecracker and CH advertise).
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX subset: FPU (bit 0) and on-chip APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const IOAPIC_ENABLED: u8 = 1;
/// "All local APICs" as a destination.
const ALL_LAPICS: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("an MP table needs between 1 and {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    #[error(
        "the MP table ({size} bytes at {MPTABLE_START:#x}) does not fit below {MPTABLE_LIMIT:#x}"
    )]
    TooBig { size: usize },
    #[error("guest memory does not cover the MP table at [{MPTABLE_START:#x}, +{size:#x})")]
    NotInGuestMemory { size: usize },
    #[error("writing the MP table to guest memory: {0}")]
    Write(#[source] GuestMemoryError),
}

/// MP floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    spec_rev: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3_5: [u8; 3],
}

/// MP configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table_ptr: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (MP spec 4.3.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct ProcessorEntry {
    entry_type: u8,
    lapic_id: u8,
    lapic_version: u8,
    cpu_flags: u8,
    signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry (MP spec 4.3.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct BusEntry {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (MP spec 4.3.3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct IoApicEntry {
    entry_type: u8,
    id: u8,
    version: u8,
    flags: u8,
    addr: u32,
}

/// I/O and local interrupt assignment entries share one layout (MP spec 4.3.4, 4.3.5).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct InterruptEntry {
    entry_type: u8,
    int_type: u8,
    flags: u16,
    src_bus: u8,
    src_irq: u8,
    dst_apic: u8,
    dst_pin: u8,
}

// SAFETY: all of these are `repr(C, packed)` aggregates of integers and byte arrays: no padding,
// no pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: as above.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as above.
unsafe impl ByteValued for IoApicEntry {}
// SAFETY: as above.
unsafe impl ByteValued for InterruptEntry {}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// Total size in bytes of the floating pointer plus the configuration table for `num_cpus`.
pub fn mptable_size(num_cpus: u8) -> usize {
    size_of::<FloatingPointer>()
        + size_of::<ConfigHeader>()
        + usize::from(num_cpus) * size_of::<ProcessorEntry>()
        + 2 * size_of::<BusEntry>()
        + size_of::<IoApicEntry>()
        + (usize::from(ISA_IRQS) + 2) * size_of::<InterruptEntry>()
}

/// The configuration table entries (everything after the header), and their count.
fn entries(num_cpus: u8) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    let mut count = 0u16;
    let mut push = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        count += 1;
    };
    for id in 0..num_cpus {
        let cpu = ProcessorEntry {
            entry_type: ENTRY_PROCESSOR,
            lapic_id: id,
            lapic_version: LAPIC_VERSION,
            cpu_flags: CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 },
            signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURES,
            reserved: [0; 2],
        };
        push(cpu.as_slice());
    }
    for (bus_id, bus_type) in [(BUS_ID_PCI, *b"PCI   "), (BUS_ID_ISA, *b"ISA   ")] {
        let bus = BusEntry {
            entry_type: ENTRY_BUS,
            bus_id,
            bus_type,
        };
        push(bus.as_slice());
    }
    let ioapic_id = num_cpus;
    let ioapic = IoApicEntry {
        entry_type: ENTRY_IOAPIC,
        id: ioapic_id,
        version: IOAPIC_VERSION,
        flags: IOAPIC_ENABLED,
        addr: IOAPIC_ADDR,
    };
    push(ioapic.as_slice());
    for irq in 0..ISA_IRQS {
        let int = InterruptEntry {
            entry_type: ENTRY_IO_INTERRUPT,
            int_type: INT_TYPE_INT,
            flags: INT_FLAGS_CONFORM,
            src_bus: BUS_ID_ISA,
            src_irq: irq,
            dst_apic: ioapic_id,
            dst_pin: irq,
        };
        push(int.as_slice());
    }
    // The PIC (virtual wire mode) reaches the BSP through LINT0; NMIs go to LINT1 everywhere.
    for (int_type, dst_apic, dst_pin) in [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, ALL_LAPICS, 1)] {
        let lint = InterruptEntry {
            entry_type: ENTRY_LOCAL_INTERRUPT,
            int_type,
            flags: INT_FLAGS_CONFORM,
            src_bus: BUS_ID_ISA,
            src_irq: 0,
            dst_apic,
            dst_pin,
        };
        push(lint.as_slice());
    }
    (out, count)
}

/// Builds the floating pointer and configuration table as they appear at [`MPTABLE_START`].
fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let size = mptable_size(num_cpus);
    if MPTABLE_START + size as u64 > MPTABLE_LIMIT {
        return Err(MptableError::TooBig { size });
    }
    let fp_size = size_of::<FloatingPointer>();
    let (body, entry_count) = entries(num_cpus);
    let base_length = size_of::<ConfigHeader>() + body.len();
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        // The largest table (254 CPUs) is about 5.3 KiB, far below u16::MAX.
        base_length: u16::try_from(base_length).map_err(|_| MptableError::TooBig { size })?,
        spec_rev: SPEC_REV_1_4,
        oem_id: OEM_ID,
        product_id: PRODUCT_ID,
        entry_count,
        lapic_addr: LAPIC_ADDR,
        ..Default::default()
    };
    let mut table = Vec::with_capacity(base_length);
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&body);
    header.checksum = checksum(&table);
    table[..size_of::<ConfigHeader>()].copy_from_slice(header.as_slice());

    let mut fp = FloatingPointer {
        signature: *b"_MP_",
        // Fits: MPTABLE_LIMIT is below 4 GiB.
        physptr: (MPTABLE_START + fp_size as u64) as u32,
        length: 1, // in 16-byte units
        spec_rev: SPEC_REV_1_4,
        // feature1 = 0: a configuration table is present; feature2 = 0: virtual wire mode.
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(fp.as_slice());
    out.extend_from_slice(&table);
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// Writes the MP tables for `num_cpus` vCPUs (APIC ids 0..num_cpus) at [`MPTABLE_START`].
pub fn setup_mptable(
    mem: &GuestMemoryMmap<AtomicBitmap>,
    num_cpus: u8,
) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    let start = GuestAddress(MPTABLE_START);
    if !mem.check_range(start, bytes.len()) {
        return Err(MptableError::NotInGuestMemory { size: bytes.len() });
    }
    mem.write_slice(&bytes, start)
        .map_err(MptableError::Write)?;
    log::debug!(
        "MP table: {num_cpus} CPU(s), {} bytes at {MPTABLE_START:#x}",
        bytes.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_mem() -> GuestMemoryMmap<AtomicBitmap> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap<AtomicBitmap>, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Parses the table in guest memory the way a guest would and checks every invariant.
    fn check_table(num_cpus: u8) {
        let mem = guest_mem();
        setup_mptable(&mem, num_cpus).unwrap();

        let fp = read(&mem, MPTABLE_START, 16);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1, "length in paragraphs");
        assert_eq!(fp[9], 4, "spec revision 1.4");
        let physptr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        assert_eq!(physptr, MPTABLE_START + 16);

        let hdr = read(&mem, physptr, 44);
        assert_eq!(&hdr[0..4], b"PCMP");
        let base_len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let entry_count = u16::from_le_bytes([hdr[34], hdr[35]]) as usize;
        let lapic = u32::from_le_bytes(hdr[36..40].try_into().unwrap());
        assert_eq!(lapic, 0xfee0_0000);
        let table = read(&mem, physptr, base_len);
        assert_eq!(sum(&table), 0, "config table checksum");
        assert_eq!(16 + base_len, mptable_size(num_cpus));

        let mut off = 44;
        let mut counts = [0usize; 5];
        let mut cpus = Vec::new();
        let mut ioapic_id = None;
        let mut irqs = Vec::new();
        let mut lints = Vec::new();
        for _ in 0..entry_count {
            let e = &table[off..];
            counts[e[0] as usize] += 1;
            match e[0] {
                0 => {
                    cpus.push((e[1], e[3]));
                    off += 20;
                }
                2 => {
                    assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), IOAPIC_ADDR);
                    assert_eq!(e[2], 0x11);
                    assert_eq!(e[3], 1, "IOAPIC enabled");
                    ioapic_id = Some(e[1]);
                    off += 8;
                }
                3 => {
                    assert_eq!(e[4], BUS_ID_ISA);
                    irqs.push((e[5], e[6], e[7]));
                    off += 8;
                }
                4 => {
                    lints.push((e[1], e[6], e[7]));
                    off += 8;
                }
                _ => off += 8,
            }
        }
        assert_eq!(off, base_len, "entries fill the table exactly");
        assert_eq!(counts, [num_cpus as usize, 2, 1, 16, 2]);
        let expected_cpus: Vec<_> = (0..num_cpus)
            .map(|i| (i, if i == 0 { 3 } else { 1 }))
            .collect();
        assert_eq!(cpus, expected_cpus);
        assert_eq!(ioapic_id, Some(num_cpus));
        let expected_irqs: Vec<_> = (0..16).map(|i| (i, num_cpus, i)).collect();
        assert_eq!(irqs, expected_irqs);
        assert_eq!(lints, vec![(3, 0, 0), (1, 0xff, 1)]);
    }

    #[test]
    fn tables_for_1_2_64_and_max_cpus() {
        for n in [1, 2, 64, MAX_CPUS] {
            check_table(n);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let mem = guest_mem();
        assert!(matches!(
            setup_mptable(&mem, 0),
            Err(MptableError::CpuCount(0))
        ));
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::CpuCount(255))
        ));
        // Nothing was written.
        assert_eq!(read(&mem, MPTABLE_START, 4), vec![0; 4]);
    }

    #[test]
    fn rejects_memory_without_the_table_area() {
        let mem: GuestMemoryMmap<AtomicBitmap> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9fc00 + 64)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 2),
            Err(MptableError::NotInGuestMemory { .. })
        ));
    }
}

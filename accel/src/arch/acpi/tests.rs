//! The tables parsed back from guest memory the way a guest finds them: RSDP -> XSDT -> FADT ->
//! DSDT/FACS, MADT; every signature, length and checksum, and the fields the platform relies on.

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

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Reads a system description table at `addr`, checks its signature, length and checksum.
fn table(mem: &GuestMemoryMmap<AtomicBitmap>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    assert!(
        (RSDP_START..ACPI_LIMIT).contains(&addr),
        "{sig:?} at {addr:#x}"
    );
    let hdr = read(mem, addr, 36);
    assert_eq!(&hdr[0..4], sig);
    let len = u32_at(&hdr, 4) as usize;
    assert!(len >= 36);
    assert!(addr + len as u64 <= ACPI_LIMIT);
    let t = read(mem, addr, len);
    assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
    assert_eq!(&t[10..16], b"ACCEL ", "OEM id");
    t
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn check(num_cpus: u8) {
    let mem = guest_mem();
    setup_acpi(&mem, num_cpus, &Default::default()).unwrap();

    // RSDP: ACPI 2.0, both checksums, 16-byte aligned inside the scanned BIOS area.
    let rsdp = read(&mem, RSDP_START, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "length");
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    assert_eq!(entries.len(), 2);

    // FADT: the PM1a blocks of the PM device, SCI 9, fixed power button, DSDT and FACS.
    let fadt = table(&mem, entries[0], b"FACP");
    assert_eq!(fadt.len(), 276, "ACPI 6 FADT");
    assert_eq!(u16_at(&fadt, 46), SCI_IRQ as u16, "SCI_INT");
    assert_eq!(u32_at(&fadt, 48), 0, "SMI_CMD: always in ACPI mode");
    assert_eq!(u32_at(&fadt, 56), 0x600, "PM1a_EVT_BLK");
    assert_eq!(u32_at(&fadt, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(u32_at(&fadt, 76), 0, "no PM timer");
    assert_eq!(u32_at(&fadt, 80), 0xafe0, "GPE0 block (PCI hotplug)");
    assert_eq!((fadt[88], fadt[89]), (4, 2), "PM1_EVT_LEN, PM1_CNT_LEN");
    let flags = u32_at(&fadt, 112);
    assert_eq!(
        flags & (1 << 4),
        0,
        "PWR_BUTTON clear: fixed-feature power button"
    );
    assert_ne!(flags & (1 << 5), 0, "SLP_BUTTON set: no sleep button");
    assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
    let boot_arch = u16_at(&fadt, 109);
    assert_eq!(boot_arch & (1 << 3), 0, "MSI not declared unsupported");
    // X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: system I/O GAS at the same ports.
    assert_eq!((fadt[148], fadt[149]), (1, 32));
    assert_eq!(u64_at(&fadt, 152), 0x600);
    assert_eq!((fadt[172], fadt[173]), (1, 16));
    assert_eq!(u64_at(&fadt, 176), 0x604);
    let dsdt_addr = u64_at(&fadt, 140);
    assert_eq!(u64::from(u32_at(&fadt, 40)), dsdt_addr, "DSDT == X_DSDT");
    let facs_addr = u64_at(&fadt, 132);
    assert_eq!(
        u64::from(u32_at(&fadt, 36)),
        facs_addr,
        "FIRMWARE_CTRL == X_FIRMWARE_CTRL"
    );
    assert_eq!(facs_addr % 64, 0, "FACS 64-byte aligned");
    let facs = read(&mem, facs_addr, 64);
    assert_eq!(&facs[0..4], b"FACS");
    assert_eq!(u32_at(&facs, 4), 64);

    // DSDT: \_S5 with SLP_TYP 5, the PNP0A03 host bridge with its _CRS windows.
    let dsdt = table(&mem, dsdt_addr, b"DSDT");
    assert_eq!(dsdt[8], 2, "DSDT revision 2");
    let aml = &dsdt[36..];
    // NameOp "_S5_" PackageOp len 4-elements BytePrefix 5 BytePrefix 5 Zero Zero
    assert!(contains(
        aml,
        &[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0
        ]
    ));
    assert!(contains(aml, b"_SB_") && contains(aml, b"PCI0"));
    // EisaId("PNP0A03") = 0x030ad041, as a DWord constant.
    assert!(contains(aml, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
    // DWordMemory 0xc0000000-0xdfffffff (the ECAM region follows).
    assert!(contains(
        aml,
        &[0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xdf]
    ));
    // IO descriptor for the config ports: decode16, 0xcf8, 0xcf8, align 1, length 8.
    assert!(contains(
        aml,
        &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
    ));

    // MADT: LAPICs, IOAPIC, SCI override, LAPIC NMI.
    let madt = table(&mem, entries[1], b"APIC");
    assert_eq!(u32_at(&madt, 36), LAPIC_ADDR);
    assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
    let mut off = 44;
    let mut lapics = Vec::new();
    let mut ioapics = Vec::new();
    let mut overrides = Vec::new();
    let mut nmis = Vec::new();
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        let e = &madt[off..off + len];
        match kind {
            0 => lapics.push((e[2], e[3], u32_at(e, 4))),
            1 => ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8))),
            2 => overrides.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8))),
            4 => nmis.push((e[2], u16_at(e, 3), e[5])),
            k => panic!("unexpected MADT structure {k}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len(), "structures fill the MADT exactly");
    let want: Vec<_> = (0..num_cpus).map(|i| (i, i, 1)).collect();
    assert_eq!(lapics, want);
    assert_eq!(ioapics, vec![(num_cpus, IOAPIC_ADDR, 0)]);
    assert_eq!(overrides, vec![(0, 9, 9, 0x000d)]);
    assert_eq!(nmis, vec![(0xff, 0, 1)]);
}

#[test]
fn tables_checksum_and_parse_for_1_2_64_and_max_cpus() {
    for n in [1, 2, 64, MAX_CPUS] {
        check(n);
    }
}

#[test]
fn rejects_bad_cpu_counts_and_missing_memory() {
    let mem = guest_mem();
    assert!(matches!(
        setup_acpi(&mem, 0, &Default::default()),
        Err(AcpiError::CpuCount(0))
    ));
    assert!(matches!(
        setup_acpi(&mem, 255, &Default::default()),
        Err(AcpiError::CpuCount(255))
    ));
    assert_eq!(read(&mem, RSDP_START, 8), vec![0; 8], "nothing written");
    let small: GuestMemoryMmap<AtomicBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xe_0000 + 4096)]).unwrap();
    assert!(matches!(
        setup_acpi(&small, 1, &Default::default()),
        Err(AcpiError::NotInGuestMemory)
    ));
}

/// The DSDT of a VM at `setup_acpi`, found through RSDP -> XSDT -> FADT.
fn dsdt_of(platform: &PlatformConfig) -> Vec<u8> {
    let mem = guest_mem();
    setup_acpi(&mem, 1, platform).unwrap();
    let rsdp = read(&mem, RSDP_START, 36);
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
    table(&mem, u64_at(&fadt, 140), b"DSDT")
}

#[test]
fn pvpanic_is_described_only_when_present() {
    assert!(!contains(&dsdt_of(&Default::default()), b"QEMU0001"));
    let dsdt = dsdt_of(&PlatformConfig {
        pvpanic: Some(0x505),
        ..Default::default()
    });
    assert!(contains(&dsdt, b"PEVT"));
    assert!(contains(&dsdt, b"QEMU0001\0"), "_HID string");
    // _CRS: I/O port descriptor (0x47), 16-bit decode, min = max = 0x505, align 1, length 1.
    assert!(contains(
        &dsdt,
        &[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]
    ));
}

/// `-M q35`: the host bridge is PNP0A08 (PCI Express) compatible with PNP0A03, the ECAM
/// region is a motherboard resource, and the XSDT's third entry is an MCFG describing it.
#[test]
fn q35_has_mcfg_and_a_pcie_host_bridge() {
    let pc = dsdt_of(&Default::default());
    // EisaId("PNP0A08") = 0x080ad041.
    assert!(!contains(&pc, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
    assert!(!contains(&pc, b"MRES"));
    let platform = PlatformConfig {
        pcie: true,
        ..Default::default()
    };
    let dsdt = dsdt_of(&platform);
    assert!(
        contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]),
        "_HID PNP0A08"
    );
    assert!(contains(&dsdt, b"_CID"));
    assert!(
        contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]),
        "_CID PNP0A03"
    );
    // Memory32Fixed (0x86), length 9, read-write, base 0xe0000000, length 0x10000000.
    assert!(contains(
        &dsdt,
        &[0x86, 0x09, 0x00, 0x01, 0, 0, 0, 0xe0, 0, 0, 0, 0x10]
    ));
    // WordBusNumber 0x00-0xff.
    assert!(contains(&dsdt, &[0x00, 0x00, 0xff, 0x00]));

    let mem = guest_mem();
    setup_acpi(&mem, 1, &platform).unwrap();
    let rsdp = read(&mem, RSDP_START, 36);
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    assert_eq!(u32_at(&xsdt, 4), 36 + 3 * 8);
    let mcfg = table(&mem, u64_at(&xsdt, 36 + 16), b"MCFG");
    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(u64_at(&mcfg, 44), 0xe000_0000);
    assert_eq!(u16_at(&mcfg, 52), 0, "segment");
    assert_eq!((mcfg[54], mcfg[55]), (0, 0xff), "buses");
}

/// The PCI hotplug objects are there, and when `iasl` is installed the DSDT disassembles
/// with them (slots, PCNT, the GPE handler) and the FADT describes GPE0 at 0xafe0.
#[test]
fn pci_hotplug_objects_and_gpe0_block() {
    let dsdt = dsdt_of(&Default::default());
    for name in [
        &b"PCNT"[..],
        b"PCEJ",
        b"B0EJ",
        b"S01_",
        b"S1F_",
        b"_E01",
        b"_GPE",
    ] {
        assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
    }
    assert!(!contains(&dsdt, b"S00_"), "slot 0 is the host bridge");
    let mem = guest_mem();
    setup_acpi(&mem, 1, &Default::default()).unwrap();
    let rsdp = read(&mem, RSDP_START, 36);
    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
    assert_eq!(u32_at(&fadt, 80), 0xafe0, "GPE0_BLK");
    assert_eq!(fadt[92], 4, "GPE0_BLK_LEN");
    let Some(dsl) = disassemble(&dsdt, "dsdt") else {
        return;
    };
    assert!(dsl.contains("Notify (S1F, 0x03)"), "{dsl}");
    assert!(dsl.contains("Method (_E01"), "{dsl}");
    assert!(dsl.contains("PCEJ (0x1F)"), "{dsl}");
}

/// The DSDT disassembled by `iasl -d` (scratch files under a name with `tag`), or `None`
/// when `iasl` is not installed; a failed disassembly fails the test.
fn disassemble(dsdt: &[u8], tag: &str) -> Option<String> {
    let out = std::process::Command::new("iasl").arg("-v").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("accel-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dsdt.dat");
    std::fs::write(&path, dsdt).unwrap();
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&path)
        .output()
        .unwrap();
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dsl)
}

/// q35's PCI0 has `_OSC` granting native PCIe hotplug (and pc's has none); with `iasl`, it
/// disassembles to QEMU's method.
#[test]
fn q35_osc_grants_native_pcie_hotplug() {
    assert!(!contains(&dsdt_of(&Default::default()), b"_OSC"));
    let dsdt = dsdt_of(&PlatformConfig {
        pcie: true,
        ..Default::default()
    });
    assert!(contains(&dsdt, b"_OSC"));
    // ToUUID("33DB4D5B-1FF7-401C-9657-7441C03DD766") as its 16 buffer bytes.
    let uuid = [
        0x5b, 0x4d, 0xdb, 0x33, 0xf7, 0x1f, 0x1c, 0x40, 0x96, 0x57, 0x74, 0x41, 0xc0, 0x3d, 0xd7,
        0x66,
    ];
    assert!(contains(&dsdt, &uuid));
    let Some(dsl) = disassemble(&dsdt, "osc") else {
        return;
    };
    for line in [
        "Method (_OSC, 4, NotSerialized)",
        "CreateDWordField (Arg3, Zero, CDW1)",
        "ToUUID (\"33db4d5b-1ff7-401c-9657-7441c03dd766\")",
        "CreateDWordField (Arg3, 0x08, CDW3)",
        "Local0 &= 0x1F",
        "CDW3 = Local0",
        "Return (Arg3)",
    ] {
        assert!(dsl.contains(line), "{line}\n{dsl}");
    }
}

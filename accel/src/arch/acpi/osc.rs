//! `_OSC` of the PCI Express host bridge (q35): the OS asks the platform for control of
//! PCIe features and the platform grants native hot-plug, SHPC, PME, AER and the PCIe
//! capability structure — QEMU's `build_q35_osc_method` with native hot-plug enabled (QEMU
//! 7.2's q35 default keeps hot-plug in ACPI and masks bit 0; accel's root ports do native
//! hot-plug, which Linux's pciehp takes only when `_OSC` grants it).
//!
//! ```text
//! Method (_OSC, 4) {
//!   CreateDWordField (Arg3, 0, CDW1)
//!   If (Arg0 == ToUUID ("33db4d5b-1ff7-401c-9657-7441c03dd766")) {
//!     CreateDWordField (Arg3, 4, CDW2)  CreateDWordField (Arg3, 8, CDW3)
//!     Local0 = CDW3 & 0x1f
//!     If (Arg1 != 1) { CDW1 |= 0x08 }          unknown revision
//!     If (CDW3 != Local0) { CDW1 |= 0x10 }     capabilities masked
//!     CDW3 = Local0
//!   } Else { CDW1 |= 0x04 }                    unrecognised UUID
//!   Return (Arg3)
//! }
//! ```

use acpi_tables::Aml;
use acpi_tables::aml::{
    And, Arg, CreateDWordField, Else, Equal, If, Local, Method, NotEqual, ONE, Or, Path, Return,
    Store, Uuid, ZERO,
};

/// The PCI Express host bridge `_OSC` UUID (PCI Firmware spec 4.5.1).
pub const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// Controls granted: native PCIe hot-plug (bit 0), SHPC (1), PME (2), AER (3), PCIe
/// capability structure (4).
pub const OSC_CONTROLS_GRANTED: u8 = 0x1f;

/// The `_OSC` method, as AML.
pub(super) fn method() -> Vec<u8> {
    let (cdw1, cdw2, cdw3) = (Path::new("CDW1"), Path::new("CDW2"), Path::new("CDW3"));
    let (four, eight) = (4u8, 8u8);
    let create1 = CreateDWordField::new(&cdw1, &Arg(3), &ZERO);
    let create2 = CreateDWordField::new(&cdw2, &Arg(3), &four);
    let create3 = CreateDWordField::new(&cdw3, &Arg(3), &eight);
    let load = Store::new(&Local(0), &cdw3);
    let granted = OSC_CONTROLS_GRANTED;
    let mask = And::new(&Local(0), &Local(0), &granted);
    let (unknown_revision, masked, bad_uuid) = (0x08u8, 0x10u8, 0x04u8);
    let set_revision = Or::new(&cdw1, &cdw1, &unknown_revision);
    let bad_revision = NotEqual::new(&Arg(1), &ONE);
    let if_revision = If::new(&bad_revision, vec![&set_revision]);
    let set_masked = Or::new(&cdw1, &cdw1, &masked);
    let was_masked = NotEqual::new(&cdw3, &Local(0));
    let if_masked = If::new(&was_masked, vec![&set_masked]);
    let store = Store::new(&cdw3, &Local(0));
    let uuid = Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
    let is_pci = Equal::new(&Arg(0), &uuid);
    let if_pci = If::new(
        &is_pci,
        vec![
            &create2,
            &create3,
            &load,
            &mask,
            &if_revision,
            &if_masked,
            &store,
        ],
    );
    let set_uuid = Or::new(&cdw1, &cdw1, &bad_uuid);
    let else_uuid = Else::new(vec![&set_uuid]);
    let ret = Return::new(&Arg(3));
    let method = Method::new(
        Path::new("_OSC"),
        4,
        false,
        vec![&create1, &if_pci, &else_uuid, &ret],
    );
    let mut out = Vec::new();
    method.to_aml_bytes(&mut out);
    out
}

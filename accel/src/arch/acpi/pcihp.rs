//! AML for ACPI PCI hotplug on bus 0, QEMU's PIIX4 interface (see
//! [`crate::devices::acpi_pcihp`] for the registers):
//!
//! ```text
//! Scope (\_SB.PCI0) {                      (inside Device (PCI0))
//!   OperationRegion (PCST, SystemIO, 0xae00, 8)   Field { PCIU, 32, PCID, 32 }
//!   OperationRegion (SEJ_, SystemIO, 0xae08, 4)   Field { B0EJ, 32 }
//!   Method (PCEJ, 1) { B0EJ = 1 << Arg0 }
//!   Device (Snn) { _ADR nn << 16, _SUN nn, Method (_EJ0, 1) { PCEJ (nn) } }   nn = 1..31
//!   Method (PCNT) {
//!     Local0 = PCIU  Local1 = PCID
//!     If (Local0 & (1 << nn)) { Notify (Snn, 1) }    device check: scan the slot
//!     If (Local1 & (1 << nn)) { Notify (Snn, 3) }    eject request
//!   }
//! }
//! Scope (\_GPE) { Method (_E01) { \_SB.PCI0.PCNT () } }   GPE0 bit 1
//! ```
//!
//! No loops: AML runs slowly on an emulating host (kvm_pvm), the checks are unrolled.

use acpi_tables::Aml;
use acpi_tables::aml::{
    And, Arg, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Local, Method, MethodCall, Name, Notify, OpRegion, OpRegionSpace, Path, Scope, ShiftLeft,
    Store, ZERO,
};

use crate::devices::acpi_pcihp::{FIRST_HOTPLUG_SLOT, PCIHP_BASE, PCIHP_GPE_BIT};

/// Already encoded AML, placed as a child of a scope.
pub(super) struct Raw(pub Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(aml: &dyn Aml) -> Raw {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    Raw(out)
}

fn slot_name(slot: u8) -> String {
    format!("S{slot:02X}_")
}

/// The objects that go inside `Device (PCI0)`.
pub(super) fn pci0_children() -> Vec<Raw> {
    let mut out = Vec::new();
    let base = u32::from(PCIHP_BASE);
    let (len8, len4) = (8u8, 4u8);
    let pcst = OpRegion::new(Path::new("PCST"), OpRegionSpace::SystemIO, &base, &len8);
    let pcst_fields = Field::new(
        Path::new("PCST"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
        ],
    );
    let ej_base = base + 8;
    let sej = OpRegion::new(Path::new("SEJ_"), OpRegionSpace::SystemIO, &ej_base, &len4);
    let sej_fields = Field::new(
        Path::new("SEJ_"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"B0EJ", 32)],
    );
    let one = 1u8;
    let b0ej = Path::new("B0EJ");
    let shifted = ShiftLeft::new(&b0ej, &one, &Arg(0));
    let pcej = Method::new(Path::new("PCEJ"), 1, true, vec![&shifted]);
    for aml in [&pcst as &dyn Aml, &pcst_fields, &sej, &sej_fields, &pcej] {
        out.push(encode(aml));
    }
    for slot in FIRST_HOTPLUG_SLOT..32u8 {
        let adr = u32::from(slot) << 16;
        let sun = u32::from(slot);
        let call = MethodCall::new(Path::new("PCEJ"), vec![&slot]);
        let ej0 = Method::new(Path::new("_EJ0"), 1, false, vec![&call]);
        let adr_name = Name::new(Path::new("_ADR"), &adr);
        let sun_name = Name::new(Path::new("_SUN"), &sun);
        let dev = Device::new(
            Path::new(&slot_name(slot)),
            vec![&adr_name, &sun_name, &ej0],
        );
        out.push(encode(&dev));
    }
    let (pciu, pcid) = (Path::new("PCIU"), Path::new("PCID"));
    let up = Store::new(&Local(0), &pciu);
    let down = Store::new(&Local(1), &pcid);
    let mut checks = vec![encode(&up), encode(&down)];
    for slot in FIRST_HOTPLUG_SLOT..32u8 {
        let mask = 1u32 << slot;
        let path = Path::new(&slot_name(slot));
        let (check, eject) = (1u8, 3u8);
        let is_up = And::new(&ZERO, &Local(0), &mask);
        let notify_up = Notify::new(&path, &check);
        checks.push(encode(&If::new(&is_up, vec![&notify_up])));
        let is_down = And::new(&ZERO, &Local(1), &mask);
        let notify_down = Notify::new(&path, &eject);
        checks.push(encode(&If::new(&is_down, vec![&notify_down])));
    }
    let pcnt = Method::new(
        Path::new("PCNT"),
        0,
        true,
        checks.iter().map(|c| c as &dyn Aml).collect(),
    );
    out.push(encode(&pcnt));
    out
}

/// `Scope (\_GPE)` with the hotplug GPE's handler.
pub(super) fn gpe_scope() -> Vec<u8> {
    let call = MethodCall::new(Path::new("\\_SB_.PCI0.PCNT"), vec![]);
    let name = format!("_E{PCIHP_GPE_BIT:02X}");
    let handler = Method::new(Path::new(&name), 0, false, vec![&call]);
    let mut out = Vec::new();
    Scope::new(Path::new("\\_GPE"), vec![&handler]).to_aml_bytes(&mut out);
    out
}

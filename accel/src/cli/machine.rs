//! `-accel`, `-enable-kvm`, `-machine` and `-cpu`.

use super::CliError;
use super::props::Props;
use super::values;
use crate::arch::cpuid::feature_bit;
use crate::config::{CpuConfig, MachineType};

const ONLY_KVM: &str = "accel only supports the KVM accelerator (-accel kvm)";

/// `-accel kvm[,kernel-irqchip=on]`: validates one occurrence.
pub(super) fn check_accel(mut props: Props) -> Result<(), CliError> {
    let name = props.take_required("accel")?;
    if name != "kvm" {
        return Err(props.unsupported("accel", &name, ONLY_KVM));
    }
    check_kernel_irqchip(&mut props)?;
    props.finish(&["kernel-irqchip (on only)", "kernel_irqchip (on only)"])
}

/// `kernel-irqchip=on` is what accel does; `off`/`split` are refused.
/// QEMU also takes the older `kernel_irqchip` spelling.
fn check_kernel_irqchip(props: &mut Props) -> Result<(), CliError> {
    for key in ["kernel-irqchip", "kernel_irqchip"] {
        match props.take(key).as_deref() {
            None | Some("on") => {}
            Some(other @ ("split" | "off")) => {
                return Err(props.unsupported(
                    key,
                    other,
                    "accel always uses KVM's in-kernel PIC/IOAPIC/PIT (kernel-irqchip=on)",
                ));
            }
            Some(other) => return Err(props.invalid(key, other, "on, split or off")),
        }
    }
    Ok(())
}

/// The result of the merged `-machine` occurrences.
#[derive(Debug, Default)]
pub(super) struct Machine {
    pub kind: MachineType,
    /// `memory-backend=ID`.
    pub memory_backend: Option<String>,
    /// `acpi=on|off|auto` (on and auto: ACPI tables; off: MP table only).
    pub acpi: bool,
}

pub(super) const MACHINE_PROPS: &[&str] = &[
    "type",
    "accel (kvm only)",
    "memory-backend",
    "acpi (on/off/auto)",
    "kernel-irqchip (on only)",
    "kernel_irqchip (on only)",
    "usb (off only)",
    "dump-guest-core (ignored)",
    "mem-merge (ignored)",
];

/// `-machine [type=]pc|q35|microvm[,accel=kvm][,memory-backend=ID][,...]`.
pub(super) fn parse_machine(mut props: Props) -> Result<Machine, CliError> {
    let kind = match props.take("type") {
        None => MachineType::default(),
        Some(t) => machine_type(&t).ok_or_else(|| {
            props.invalid(
                "type",
                &t,
                "one of pc, q35, microvm, none (or pc-i440fx-*, pc-q35-*)",
            )
        })?,
    };
    if let Some(list) = props.take("accel") {
        // QEMU's legacy fallback list `accel=kvm:tcg` (libvirt's probing line): QEMU uses the
        // first accelerator that works, so kvm must come first; accel never falls back (a
        // missing /dev/kvm is an error at start).
        let first = list.split(':').next().unwrap_or_default();
        if first != "kvm" {
            return Err(props.unsupported("accel", &list, ONLY_KVM));
        }
    }
    let memory_backend = props.take_id("memory-backend")?;
    // QEMU's OnOffAuto: auto means on for pc/q35 (accel builds the same platform for all).
    let acpi = match props.take("acpi").as_deref() {
        None | Some("on") | Some("auto") => true,
        Some("off") => false,
        Some(v) => return Err(props.invalid("acpi", v, "on, off or auto")),
    };
    check_kernel_irqchip(&mut props)?;
    if props.take_bool("usb")? == Some(true) {
        return Err(props.unsupported("usb", "on", "accel has no USB controller"));
    }
    // Host-side memory hints that do not change what the guest sees: accepted, ignored.
    props.take_bool("dump-guest-core")?;
    props.take_bool("mem-merge")?;
    props.finish(MACHINE_PROPS)?;
    Ok(Machine {
        kind,
        memory_backend,
        acpi,
    })
}

fn machine_type(name: &str) -> Option<MachineType> {
    match name {
        "pc" => Some(MachineType::Pc),
        "q35" => Some(MachineType::Q35),
        "microvm" => Some(MachineType::Microvm),
        "none" => Some(MachineType::None),
        _ if name.starts_with("pc-i440fx-") => Some(MachineType::Pc),
        _ if name.starts_with("pc-q35-") => Some(MachineType::Q35),
        _ => None,
    }
}

/// `-cpu host|max[,+feat][,-feat][,feat=on|off][,feat]`.
pub(super) fn parse_cpu(option: &'static str, value: &str) -> Result<CpuConfig, CliError> {
    let mut parts = value.split(',');
    let model = parts.next().unwrap_or_default();
    if model != "host" && model != "max" {
        return Err(CliError::InvalidValue {
            option: option.into(),
            property: "model".into(),
            value: model.into(),
            expected: "host or max (accel passes the host CPU through; named models \
                       like qemu64 or Skylake-Client are not supported)"
                .into(),
        });
    }
    let mut cpu = CpuConfig {
        model: model.into(),
        ..CpuConfig::default()
    };
    for item in parts.filter(|p| !p.is_empty()) {
        let (name, on) = if let Some(name) = item.strip_prefix('+') {
            (name, true)
        } else if let Some(name) = item.strip_prefix('-') {
            (name, false)
        } else if let Some((name @ ("pmu" | "migratable" | "check" | "enforce"), value)) =
            item.split_once('=')
        {
            cpu_property(option, name, value)?;
            continue;
        } else if let Some((name, value)) = item.split_once('=') {
            let on = values::parse_bool(value).map_err(|_| CliError::UnsupportedValue {
                option: option.into(),
                property: name.into(),
                value: value.into(),
                reason: "accel supports only CPU feature flags set on/off \
                         (+feat, -feat, feat=on|off), not other CPU properties"
                    .into(),
            })?;
            (name, on)
        } else {
            (item, true)
        };
        // QEMU takes `+PROP`/`-PROP` for any boolean CPU property (`-pmu` is `pmu=off`).
        if matches!(name, "pmu" | "migratable" | "check" | "enforce") {
            cpu_property(option, name, if on { "on" } else { "off" })?;
            continue;
        }
        let Some(bit) = feature_bit(name) else {
            return Err(CliError::UnknownProperty {
                option: option.into(),
                property: name.into(),
                supported: "x86 CPUID feature flags by QEMU name (e.g. x2apic, avx2, \
                            popcnt, sse4.2, kvm-pv-eoi)"
                    .into(),
            });
        };
        // The last mention of a flag (under any spelling) wins.
        let same = |f: &String| feature_bit(f) == Some(bit);
        cpu.enable.retain(|f| !same(f));
        cpu.disable.retain(|f| !same(f));
        if on {
            cpu.enable.push(name.into());
        } else {
            cpu.disable.push(name.into());
        }
    }
    Ok(cpu)
}

/// `-cpu host,pmu=off|on,migratable=on|off,check=..,enforce=..`: CPU properties that are not
/// feature flags.
///
/// - `pmu=off` is what accel's guests get: accel never sets up a virtual PMU (no
///   KVM_CAP_PMU_CAPABILITY; CPUID leaf 0xA comes from KVM_GET_SUPPORTED_CPUID, which reports
///   no PMU where KVM has none). `pmu=on` is refused.
/// - `migratable=on|off` only selects which host features QEMU passes through for migration;
///   accel has no migration and passes KVM's supported set either way.
/// - `check`/`enforce`: warnings or errors for features the host lacks; accel already refuses
///   a `+feat` KVM cannot provide.
fn cpu_property(option: &str, name: &str, value: &str) -> Result<(), CliError> {
    let on = values::parse_bool(value).map_err(|values::BadValue(e)| CliError::InvalidValue {
        option: option.into(),
        property: name.into(),
        value: value.into(),
        expected: e.into(),
    })?;
    if name == "pmu" && on {
        return Err(CliError::UnsupportedValue {
            option: option.into(),
            property: name.into(),
            value: value.into(),
            reason: "accel provides no virtual PMU (pmu=off)".into(),
        });
    }
    Ok(())
}

/// accel's default CPU when `-cpu` is absent: the host's (QEMU defaults to qemu64).
pub(super) fn default_cpu() -> CpuConfig {
    CpuConfig {
        model: "host".into(),
        ..CpuConfig::default()
    }
}

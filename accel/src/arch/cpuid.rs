//! CPUID: the `-cpu` model and `+feat`/`-feat` edits applied to KVM_GET_SUPPORTED_CPUID, and
//! the per-vCPU topology fix-ups (APIC ids, leaf 0xB/0x1F).
//!
//! Everything here is a pure function on a list of `kvm_cpuid_entry2`, so it is unit-tested
//! without KVM.

use kvm_bindings::kvm_cpuid_entry2;

use crate::config::{CpuConfig, SmpConfig};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("unsupported CPU model '{0}' (accel supports 'host' and 'max')")]
    UnsupportedModel(String),
    #[error("unknown CPU feature flag '{0}'")]
    UnknownFeature(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Where a feature flag lives: (leaf, subleaf, register, bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureBit {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
}

const fn fb(leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> FeatureBit {
    FeatureBit {
        leaf,
        subleaf,
        reg,
        bit,
    }
}

use Reg::*;

/// Feature names (QEMU spelling, with `_`/`.` normalised to `-`) and where they live.
const FEATURES: &[(&str, FeatureBit)] = &[
    // Leaf 1 EDX.
    ("fpu", fb(1, 0, Edx, 0)),
    ("vme", fb(1, 0, Edx, 1)),
    ("de", fb(1, 0, Edx, 2)),
    ("pse", fb(1, 0, Edx, 3)),
    ("tsc", fb(1, 0, Edx, 4)),
    ("msr", fb(1, 0, Edx, 5)),
    ("pae", fb(1, 0, Edx, 6)),
    ("mce", fb(1, 0, Edx, 7)),
    ("cx8", fb(1, 0, Edx, 8)),
    ("apic", fb(1, 0, Edx, 9)),
    ("sep", fb(1, 0, Edx, 11)),
    ("mtrr", fb(1, 0, Edx, 12)),
    ("pge", fb(1, 0, Edx, 13)),
    ("mca", fb(1, 0, Edx, 14)),
    ("cmov", fb(1, 0, Edx, 15)),
    ("pat", fb(1, 0, Edx, 16)),
    ("pse36", fb(1, 0, Edx, 17)),
    ("clflush", fb(1, 0, Edx, 19)),
    ("mmx", fb(1, 0, Edx, 23)),
    ("fxsr", fb(1, 0, Edx, 24)),
    ("sse", fb(1, 0, Edx, 25)),
    ("sse2", fb(1, 0, Edx, 26)),
    ("ss", fb(1, 0, Edx, 27)),
    ("ht", fb(1, 0, Edx, 28)),
    // Leaf 1 ECX.
    ("pni", fb(1, 0, Ecx, 0)),
    ("sse3", fb(1, 0, Ecx, 0)),
    ("pclmulqdq", fb(1, 0, Ecx, 1)),
    ("monitor", fb(1, 0, Ecx, 3)),
    ("vmx", fb(1, 0, Ecx, 5)),
    ("ssse3", fb(1, 0, Ecx, 9)),
    ("fma", fb(1, 0, Ecx, 12)),
    ("cx16", fb(1, 0, Ecx, 13)),
    ("pdcm", fb(1, 0, Ecx, 15)),
    ("pcid", fb(1, 0, Ecx, 17)),
    ("sse4-1", fb(1, 0, Ecx, 19)),
    ("sse4-2", fb(1, 0, Ecx, 20)),
    ("x2apic", fb(1, 0, Ecx, 21)),
    ("movbe", fb(1, 0, Ecx, 22)),
    ("popcnt", fb(1, 0, Ecx, 23)),
    ("tsc-deadline", fb(1, 0, Ecx, 24)),
    ("aes", fb(1, 0, Ecx, 25)),
    ("xsave", fb(1, 0, Ecx, 26)),
    ("avx", fb(1, 0, Ecx, 28)),
    ("f16c", fb(1, 0, Ecx, 29)),
    ("rdrand", fb(1, 0, Ecx, 30)),
    ("hypervisor", fb(1, 0, Ecx, 31)),
    // Leaf 7.0 EBX.
    ("fsgsbase", fb(7, 0, Ebx, 0)),
    ("bmi1", fb(7, 0, Ebx, 3)),
    ("hle", fb(7, 0, Ebx, 4)),
    ("avx2", fb(7, 0, Ebx, 5)),
    ("smep", fb(7, 0, Ebx, 7)),
    ("bmi2", fb(7, 0, Ebx, 8)),
    ("erms", fb(7, 0, Ebx, 9)),
    ("invpcid", fb(7, 0, Ebx, 10)),
    ("rtm", fb(7, 0, Ebx, 11)),
    ("mpx", fb(7, 0, Ebx, 14)),
    ("avx512f", fb(7, 0, Ebx, 16)),
    ("avx512dq", fb(7, 0, Ebx, 17)),
    ("rdseed", fb(7, 0, Ebx, 18)),
    ("adx", fb(7, 0, Ebx, 19)),
    ("smap", fb(7, 0, Ebx, 20)),
    ("clflushopt", fb(7, 0, Ebx, 23)),
    ("clwb", fb(7, 0, Ebx, 24)),
    ("avx512cd", fb(7, 0, Ebx, 28)),
    ("sha-ni", fb(7, 0, Ebx, 29)),
    ("avx512bw", fb(7, 0, Ebx, 30)),
    ("avx512vl", fb(7, 0, Ebx, 31)),
    // Leaf 7.0 ECX.
    ("avx512vbmi", fb(7, 0, Ecx, 1)),
    ("umip", fb(7, 0, Ecx, 2)),
    ("pku", fb(7, 0, Ecx, 3)),
    ("waitpkg", fb(7, 0, Ecx, 5)),
    ("gfni", fb(7, 0, Ecx, 8)),
    ("vaes", fb(7, 0, Ecx, 9)),
    ("vpclmulqdq", fb(7, 0, Ecx, 10)),
    ("la57", fb(7, 0, Ecx, 16)),
    ("rdpid", fb(7, 0, Ecx, 22)),
    // Leaf 7.0 EDX.
    ("fsrm", fb(7, 0, Edx, 4)),
    ("md-clear", fb(7, 0, Edx, 10)),
    ("serialize", fb(7, 0, Edx, 14)),
    ("spec-ctrl", fb(7, 0, Edx, 26)),
    ("stibp", fb(7, 0, Edx, 27)),
    ("arch-capabilities", fb(7, 0, Edx, 29)),
    ("ssbd", fb(7, 0, Edx, 31)),
    // Leaf 0xD.1 EAX.
    ("xsaveopt", fb(0xd, 1, Eax, 0)),
    ("xsavec", fb(0xd, 1, Eax, 1)),
    ("xgetbv1", fb(0xd, 1, Eax, 2)),
    ("xsaves", fb(0xd, 1, Eax, 3)),
    // Leaf 0x8000_0001 ECX.
    ("lahf-lm", fb(0x8000_0001, 0, Ecx, 0)),
    ("svm", fb(0x8000_0001, 0, Ecx, 2)),
    ("abm", fb(0x8000_0001, 0, Ecx, 5)),
    ("lzcnt", fb(0x8000_0001, 0, Ecx, 5)),
    ("sse4a", fb(0x8000_0001, 0, Ecx, 6)),
    ("3dnowprefetch", fb(0x8000_0001, 0, Ecx, 8)),
    ("prefetchw", fb(0x8000_0001, 0, Ecx, 8)),
    ("topoext", fb(0x8000_0001, 0, Ecx, 22)),
    // Leaf 0x8000_0001 EDX.
    ("syscall", fb(0x8000_0001, 0, Edx, 11)),
    ("nx", fb(0x8000_0001, 0, Edx, 20)),
    ("xd", fb(0x8000_0001, 0, Edx, 20)),
    ("pdpe1gb", fb(0x8000_0001, 0, Edx, 26)),
    ("rdtscp", fb(0x8000_0001, 0, Edx, 27)),
    ("lm", fb(0x8000_0001, 0, Edx, 29)),
    // Leaf 0x8000_0007 EDX: invariant TSC (Linux: constant_tsc + nonstop_tsc).
    ("invtsc", fb(0x8000_0007, 0, Edx, 8)),
    // KVM paravirt leaf 0x4000_0001 EAX.
    ("kvmclock", fb(0x4000_0001, 0, Eax, 0)),
    ("kvm-nopiodelay", fb(0x4000_0001, 0, Eax, 1)),
    ("kvm-mmu", fb(0x4000_0001, 0, Eax, 2)),
    ("kvmclock2", fb(0x4000_0001, 0, Eax, 3)),
    ("kvm-asyncpf", fb(0x4000_0001, 0, Eax, 4)),
    ("kvm-steal-time", fb(0x4000_0001, 0, Eax, 5)),
    ("kvm-pv-eoi", fb(0x4000_0001, 0, Eax, 6)),
    ("kvm-pv-unhalt", fb(0x4000_0001, 0, Eax, 7)),
    ("kvm-pv-tlb-flush", fb(0x4000_0001, 0, Eax, 9)),
    ("kvm-pv-ipi", fb(0x4000_0001, 0, Eax, 11)),
];

const INVTSC: FeatureBit = fb(0x8000_0007, 0, Edx, 8);

/// Looks a feature flag up by its QEMU or Linux name (`sse4.1`, `sse4_1`, `sse4-1` alike).
pub fn feature_bit(name: &str) -> Option<FeatureBit> {
    let norm: String = name
        .trim()
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    FEATURES.iter().find(|(n, _)| *n == norm).map(|(_, b)| *b)
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Eax => &mut e.eax,
        Ebx => &mut e.ebx,
        Ecx => &mut e.ecx,
        Edx => &mut e.edx,
    }
}

fn find_mut(
    entries: &mut [kvm_cpuid_entry2],
    leaf: u32,
    subleaf: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| {
        e.function == leaf
            && (e.index == subleaf || e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// Applies the `-cpu` model and its `+feat`/`-feat` edits (VM-wide, before per-vCPU fix-ups).
/// Sets the hypervisor bit and clears invariant TSC (unless `+invtsc`) and the features named
/// in `host_off` (ones this host's KVM reports but cannot deliver; `+feat` still turns them
/// on). A flag whose leaf KVM does not report is skipped with a warning.
pub fn apply_cpu_config(
    entries: &mut [kvm_cpuid_entry2],
    cpu: &CpuConfig,
    host_off: &[&str],
) -> Result<(), CpuidError> {
    let model = cpu.model.trim();
    if !(model.is_empty()
        || model.eq_ignore_ascii_case("host")
        || model.eq_ignore_ascii_case("max"))
    {
        return Err(CpuidError::UnsupportedModel(cpu.model.clone()));
    }
    // Resolve every name first: an unknown flag fails without half-applying the rest.
    let mut edits = Vec::new();
    for (names, on) in [(&cpu.enable, true), (&cpu.disable, false)] {
        for name in names {
            let bit = feature_bit(name).ok_or_else(|| CpuidError::UnknownFeature(name.clone()))?;
            edits.push((name, bit, on));
        }
    }
    if let Some(e) = find_mut(entries, 1, 0) {
        e.ecx |= 1 << 31;
    }
    // Invariant TSC off unless asked for (`+invtsc`), as in QEMU's `-cpu host`. With it Linux
    // trusts the raw TSC as its clocksource on every vCPU; KVM does not promise the vCPUs'
    // TSCs stay in step (not on this machine's kvm_pvm), while kvmclock corrects for that.
    if let Some(e) = find_mut(entries, INVTSC.leaf, INVTSC.subleaf) {
        *reg_mut(e, INVTSC.reg) &= !(1 << INVTSC.bit);
    }
    for name in host_off {
        let bit = feature_bit(name).ok_or_else(|| CpuidError::UnknownFeature(name.to_string()))?;
        if let Some(e) = find_mut(entries, bit.leaf, bit.subleaf) {
            *reg_mut(e, bit.reg) &= !(1 << bit.bit);
        }
    }
    for (name, bit, on) in edits {
        match find_mut(entries, bit.leaf, bit.subleaf) {
            Some(e) => {
                let r = reg_mut(e, bit.reg);
                if on {
                    *r |= 1 << bit.bit;
                } else {
                    *r &= !(1 << bit.bit);
                }
            }
            None => log::warn!(
                "cpu flag '{name}': leaf {:#x} not reported by KVM, ignored",
                bit.leaf
            ),
        }
    }
    Ok(())
}

fn bits_for(n: u8) -> u32 {
    // Number of bits needed to hold ids 0..n-1.
    let n = u32::from(n.max(1));
    32 - (n - 1).leading_zeros()
}

/// Per-vCPU fix-ups: initial APIC id in leaf 1 EBX[31:24] (and logical count / HTT), x2APIC id
/// and SMT/core topology in leaves 0xB and 0x1F, cores per package in leaf 4 (Intel) and
/// 0x8000_0008 (AMD). APIC id = vCPU index (what the MP table lists); with non-power-of-two
/// core/thread counts that differs from the packed ids QEMU would use.
pub fn apply_vcpu_topology(entries: &mut [kvm_cpuid_entry2], cpu_index: u8, smp: &SmpConfig) {
    let apic_id = u32::from(cpu_index);
    let threads = u32::from(smp.threads.max(1));
    let per_pkg = threads * u32::from(smp.cores.max(1));
    let smt_shift = bits_for(smp.threads);
    let core_shift = smt_shift + bits_for(smp.cores);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((per_pkg.min(255)) << 16);
                if per_pkg > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            // Intel deterministic cache parameters: cores per package in EAX[31:26].
            4 => {
                let cores = u32::from(smp.cores.max(1));
                e.eax = (e.eax & 0x03ff_ffff) | ((cores - 1).min(63) << 26);
            }
            // AMD: core-id bits of the APIC id in ECX[15:12], logical CPUs per package - 1 in
            // ECX[7:0] (as QEMU builds it).
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (core_shift << 12) | ((per_pkg - 1).min(255));
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                let (eax, ebx, level_type) = match e.index {
                    0 => (smt_shift, threads, 1),
                    1 => (core_shift, per_pkg, 2),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 7 || function == 0xb {
                kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            ..Default::default()
        }
    }

    fn cfg(enable: &[&str], disable: &[&str]) -> CpuConfig {
        CpuConfig {
            model: "host".into(),
            enable: enable.iter().map(|s| s.to_string()).collect(),
            disable: disable.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_normalise() {
        assert_eq!(feature_bit("sse4.1"), Some(fb(1, 0, Ecx, 19)));
        assert_eq!(feature_bit("SSE4_1"), Some(fb(1, 0, Ecx, 19)));
        assert_eq!(feature_bit("tsc_deadline"), Some(fb(1, 0, Ecx, 24)));
        assert_eq!(feature_bit("nosuchflag"), None);
    }

    #[test]
    fn edits_set_and_clear_bits_and_hypervisor_bit() {
        let mut e = vec![entry(1, 0), entry(7, 0), entry(7, 1)];
        e[0].ecx = 1 << 13; // cx16
        e[1].ebx = 1 << 20; // smap
        apply_cpu_config(
            &mut e,
            &cfg(&["x2apic", "fsgsbase"], &["cx16", "smap"]),
            &[],
        )
        .unwrap();
        assert_eq!(e[0].ecx, (1 << 21) | (1 << 31));
        assert_eq!(e[1].ebx, 1 << 0);
        assert_eq!(e[2].ebx, 0, "subleaf 1 untouched");
    }

    #[test]
    fn invariant_tsc_is_off_unless_enabled() {
        let mut e = vec![entry(1, 0), entry(0x8000_0007, 0)];
        e[1].edx = (1 << 8) | (1 << 9);
        apply_cpu_config(&mut e, &cfg(&[], &[]), &[]).unwrap();
        assert_eq!(e[1].edx, 1 << 9, "invtsc cleared, other bits kept");
        apply_cpu_config(&mut e, &cfg(&["invtsc"], &[]), &[]).unwrap();
        assert_eq!(e[1].edx, (1 << 8) | (1 << 9));
    }

    #[test]
    fn host_defaults_off_unless_asked_for() {
        let unhalt = 1 << 7;
        let ipi = 1 << 11;
        let mut e = vec![entry(1, 0), entry(0x4000_0001, 0)];
        e[1].eax = unhalt | ipi;
        apply_cpu_config(&mut e, &cfg(&[], &[]), &["kvm-pv-unhalt"]).unwrap();
        assert_eq!(e[1].eax, ipi, "kvm-pv-unhalt hidden, the rest kept");
        apply_cpu_config(&mut e, &cfg(&["kvm-pv-unhalt"], &[]), &["kvm-pv-unhalt"]).unwrap();
        assert_eq!(e[1].eax, unhalt | ipi, "+kvm-pv-unhalt wins");
    }

    #[test]
    fn unknown_flag_and_model_are_errors_and_change_nothing() {
        let mut e = vec![entry(1, 0)];
        assert_eq!(
            apply_cpu_config(&mut e, &cfg(&["x2apic", "bogus"], &[]), &[]),
            Err(CpuidError::UnknownFeature("bogus".into()))
        );
        assert_eq!(e[0].ecx, 0);
        let mut c = cfg(&[], &[]);
        c.model = "Skylake-Server".into();
        assert_eq!(
            apply_cpu_config(&mut e, &c, &[]),
            Err(CpuidError::UnsupportedModel("Skylake-Server".into()))
        );
    }

    #[test]
    fn topology_per_vcpu() {
        let smp = SmpConfig {
            cpus: 4,
            sockets: 1,
            cores: 2,
            threads: 2,
            maxcpus: 4,
        };
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        e[0].ebx = 0xffff_0800; // clflush size 8 in bits 15:8 kept
        apply_vcpu_topology(&mut e, 3, &smp);
        assert_eq!(e[0].ebx, (3 << 24) | (4 << 16) | 0x0800);
        assert_ne!(e[0].edx & (1 << 28), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (1, 2, 0x100, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 4, 0x201, 3));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
        let mut amd = vec![entry(0x8000_0008, 0), entry(4, 0)];
        amd[0].ecx = 0xffff_ffff;
        amd[1].eax = 0x0000_0121;
        apply_vcpu_topology(&mut amd, 1, &smp);
        assert_eq!(amd[0].ecx, 0xffff_2f03);
        assert_eq!(amd[1].eax, (1 << 26) | 0x121);
        let one = SmpConfig::default();
        apply_vcpu_topology(&mut e, 0, &one);
        assert_eq!(e[0].ebx >> 16, 1);
        assert_eq!(e[0].edx & (1 << 28), 0);
    }
}

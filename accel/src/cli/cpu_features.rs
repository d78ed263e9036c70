//! x86 CPUID feature flags by QEMU name (`-cpu host,+x2apic,-popcnt,avx2=off`).
//!
//! The parser validates `-cpu` flag names against this table and stores canonical names in
//! `CpuConfig`; the VMM can map them to CPUID bits with [`cpuid_bits`].

/// Which register of a CPUID leaf holds a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidReg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One CPUID bit: `leaf`/`subleaf` (`index` in KVM terms), register and bit number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidBit {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: CpuidReg,
    pub bit: u8,
}

use CpuidReg::{Eax, Ebx, Ecx, Edx};

/// (leaf, subleaf, register, [(bit, name)]).
type Word = (u32, u32, CpuidReg, &'static [(u8, &'static str)]);

const WORDS: &[Word] = &[
    (
        1,
        0,
        Edx,
        &[
            (0, "fpu"),
            (1, "vme"),
            (2, "de"),
            (3, "pse"),
            (4, "tsc"),
            (5, "msr"),
            (6, "pae"),
            (7, "mce"),
            (8, "cx8"),
            (9, "apic"),
            (11, "sep"),
            (12, "mtrr"),
            (13, "pge"),
            (14, "mca"),
            (15, "cmov"),
            (16, "pat"),
            (17, "pse36"),
            (18, "pn"),
            (19, "clflush"),
            (21, "ds"),
            (22, "acpi"),
            (23, "mmx"),
            (24, "fxsr"),
            (25, "sse"),
            (26, "sse2"),
            (27, "ss"),
            (28, "ht"),
            (29, "tm"),
            (30, "ia64"),
            (31, "pbe"),
        ],
    ),
    (
        1,
        0,
        Ecx,
        &[
            (0, "pni"),
            (1, "pclmulqdq"),
            (2, "dtes64"),
            (3, "monitor"),
            (4, "ds-cpl"),
            (5, "vmx"),
            (6, "smx"),
            (7, "est"),
            (8, "tm2"),
            (9, "ssse3"),
            (10, "cid"),
            (12, "fma"),
            (13, "cx16"),
            (14, "xtpr"),
            (15, "pdcm"),
            (17, "pcid"),
            (18, "dca"),
            (19, "sse4.1"),
            (20, "sse4.2"),
            (21, "x2apic"),
            (22, "movbe"),
            (23, "popcnt"),
            (24, "tsc-deadline"),
            (25, "aes"),
            (26, "xsave"),
            (27, "osxsave"),
            (28, "avx"),
            (29, "f16c"),
            (30, "rdrand"),
            (31, "hypervisor"),
        ],
    ),
    (6, 0, Eax, &[(2, "arat")]),
    (
        7,
        0,
        Ebx,
        &[
            (0, "fsgsbase"),
            (1, "tsc-adjust"),
            (2, "sgx"),
            (3, "bmi1"),
            (4, "hle"),
            (5, "avx2"),
            (7, "smep"),
            (8, "bmi2"),
            (9, "erms"),
            (10, "invpcid"),
            (11, "rtm"),
            (14, "mpx"),
            (16, "avx512f"),
            (17, "avx512dq"),
            (18, "rdseed"),
            (19, "adx"),
            (20, "smap"),
            (21, "avx512ifma"),
            (22, "pcommit"),
            (23, "clflushopt"),
            (24, "clwb"),
            (25, "intel-pt"),
            (26, "avx512pf"),
            (27, "avx512er"),
            (28, "avx512cd"),
            (29, "sha-ni"),
            (30, "avx512bw"),
            (31, "avx512vl"),
        ],
    ),
    (
        7,
        0,
        Ecx,
        &[
            (1, "avx512vbmi"),
            (2, "umip"),
            (3, "pku"),
            (4, "ospke"),
            (5, "waitpkg"),
            (6, "avx512vbmi2"),
            (8, "gfni"),
            (9, "vaes"),
            (10, "vpclmulqdq"),
            (11, "avx512vnni"),
            (12, "avx512bitalg"),
            (14, "avx512-vpopcntdq"),
            (16, "la57"),
            (22, "rdpid"),
            (24, "bus-lock-detect"),
            (25, "cldemote"),
            (27, "movdiri"),
            (28, "movdir64b"),
            (30, "sgxlc"),
            (31, "pks"),
        ],
    ),
    (
        7,
        0,
        Edx,
        &[
            (2, "avx512-4vnniw"),
            (3, "avx512-4fmaps"),
            (4, "fsrm"),
            (8, "avx512-vp2intersect"),
            (10, "md-clear"),
            (14, "serialize"),
            (16, "tsx-ldtrk"),
            (19, "arch-lbr"),
            (22, "amx-bf16"),
            (23, "avx512-fp16"),
            (24, "amx-tile"),
            (25, "amx-int8"),
            (26, "spec-ctrl"),
            (27, "stibp"),
            (28, "flush-l1d"),
            (29, "arch-capabilities"),
            (30, "core-capability"),
            (31, "ssbd"),
        ],
    ),
    (7, 1, Eax, &[(4, "avx-vnni"), (5, "avx512-bf16")]),
    (
        0xd,
        1,
        Eax,
        &[
            (0, "xsaveopt"),
            (1, "xsavec"),
            (2, "xgetbv1"),
            (3, "xsaves"),
        ],
    ),
    (
        0x4000_0001,
        0,
        Eax,
        &[
            (0, "kvmclock"),
            (1, "kvm-nopiodelay"),
            (2, "kvm-mmu"),
            (3, "kvmclock"),
            (4, "kvm-asyncpf"),
            (5, "kvm-steal-time"),
            (6, "kvm-pv-eoi"),
            (7, "kvm-pv-unhalt"),
            (9, "kvm-pv-tlb-flush"),
            (10, "kvm-asyncpf-vmexit"),
            (11, "kvm-pv-ipi"),
            (12, "kvm-poll-control"),
            (13, "kvm-pv-sched-yield"),
            (14, "kvm-asyncpf-int"),
            (15, "kvm-msi-ext-dest-id"),
            (24, "kvmclock-stable-bit"),
        ],
    ),
    (
        0x8000_0001,
        0,
        Ecx,
        &[
            (0, "lahf-lm"),
            (1, "cmp-legacy"),
            (2, "svm"),
            (3, "extapic"),
            (4, "cr8legacy"),
            (5, "abm"),
            (6, "sse4a"),
            (7, "misalignsse"),
            (8, "3dnowprefetch"),
            (9, "osvw"),
            (10, "ibs"),
            (11, "xop"),
            (12, "skinit"),
            (13, "wdt"),
            (15, "lwp"),
            (16, "fma4"),
            (17, "tce"),
            (19, "nodeid-msr"),
            (21, "tbm"),
            (22, "topoext"),
            (23, "perfctr-core"),
            (24, "perfctr-nb"),
        ],
    ),
    (
        0x8000_0001,
        0,
        Edx,
        &[
            (11, "syscall"),
            (20, "nx"),
            (22, "mmxext"),
            (25, "fxsr-opt"),
            (26, "pdpe1gb"),
            (27, "rdtscp"),
            (29, "lm"),
            (30, "3dnowext"),
            (31, "3dnow"),
        ],
    ),
    (0x8000_0007, 0, Edx, &[(8, "invtsc")]),
];

/// QEMU's alternative spellings (after `_` → `-`).
const ALIASES: &[(&str, &str)] = &[
    ("sse3", "pni"),
    ("pclmuldq", "pclmulqdq"),
    ("sse4-1", "sse4.1"),
    ("sse4-2", "sse4.2"),
    ("xd", "nx"),
    ("ffxsr", "fxsr-opt"),
    ("i64", "lm"),
    ("tsc-deadline-timer", "tsc-deadline"),
];

/// The canonical QEMU name of a feature flag (`_` and `-` are interchangeable, aliases such
/// as `sse3` or `sse4_1` resolve), or `None` if accel does not know the flag.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    let normalized = name.replace('_', "-");
    let wanted = ALIASES
        .iter()
        .find(|(alias, _)| *alias == normalized)
        .map_or(normalized.as_str(), |(_, canonical)| canonical);
    WORDS
        .iter()
        .flat_map(|(_, _, _, bits)| bits.iter())
        .find(|(_, n)| *n == wanted)
        .map(|(_, n)| *n)
}

/// The CPUID bits a canonical flag name stands for (usually one; `kvmclock` has two).
pub fn cpuid_bits(name: &str) -> impl Iterator<Item = CpuidBit> + '_ {
    WORDS.iter().flat_map(move |&(leaf, subleaf, reg, bits)| {
        bits.iter()
            .filter(move |(_, n)| *n == name)
            .map(move |&(bit, _)| CpuidBit {
                leaf,
                subleaf,
                reg,
                bit,
            })
    })
}

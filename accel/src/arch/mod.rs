//! x86-64 platform bits: guest address map and e820, CPUID filtering, initial vCPU register
//! state, direct Linux boot, the ACPI tables, and the MP table (the platform with acpi=off).

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

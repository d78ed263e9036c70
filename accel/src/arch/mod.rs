//! x86-64 platform bits: guest address map and e820, CPUID filtering, initial vCPU register
//! state, direct Linux boot, and the MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;

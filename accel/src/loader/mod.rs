//! Kernel formats linux-loader does not load. [`elf32`]: 32-bit ELF kernels with a PVH note
//! (QEMU loads both ELF classes; linux-loader 0.14's `Elf` parses only ELF64 headers).
//!
//! Wiring (in `arch::boot::load_boot`): an ELF whose class byte (`e_ident[4]`) is 1 goes to
//! [`elf32::load`] instead of `Elf::load`; the result is a `KernelLoaderResult` with
//! `PvhEntryPresent`, so the PVH path that follows is unchanged.

pub mod elf32;

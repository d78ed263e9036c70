//! Crash reports: all registers and the bytes at CS:RIP, printed when a vCPU hits a state the
//! guest cannot continue from (triple fault, KVM internal error, failed entry).

use std::fmt::Write as _;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::memory::GuestMemMmap;
use crate::arch::regs::translate;

fn seg(name: &str, s: &kvm_segment) -> String {
    format!(
        "{name:<3}={:04x} base={:016x} limit={:08x} type={:x} p={} dpl={} db={} s={} l={} g={} avl={} unusable={}\n",
        s.selector,
        s.base,
        s.limit,
        s.type_,
        s.present,
        s.dpl,
        s.db,
        s.s,
        s.l,
        s.g,
        s.avl,
        s.unusable
    )
}

/// Formats the general and special registers.
pub fn format_registers(regs: &kvm_regs, sregs: &kvm_sregs) -> String {
    let r = regs;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    let _ = writeln!(
        s,
        "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}",
        r.rsi, r.rdi, r.rbp, r.rsp
    );
    let _ = writeln!(
        s,
        "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}",
        r.r8, r.r9, r.r10, r.r11
    );
    let _ = writeln!(
        s,
        "R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
        r.r12, r.r13, r.r14, r.r15
    );
    let _ = writeln!(s, "RIP={:016x} RFL={:08x}", r.rip, r.rflags);
    for (n, sg) in [
        ("CS", &sregs.cs),
        ("DS", &sregs.ds),
        ("ES", &sregs.es),
        ("FS", &sregs.fs),
        ("GS", &sregs.gs),
        ("SS", &sregs.ss),
        ("TR", &sregs.tr),
        ("LDT", &sregs.ldt),
    ] {
        s.push_str(&seg(n, sg));
    }
    let _ = writeln!(
        s,
        "GDT={:016x} {:04x}  IDT={:016x} {:04x}",
        sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit
    );
    let _ = writeln!(
        s,
        "CR0={:016x} CR2={:016x} CR3={:016x} CR4={:016x} CR8={:x}",
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8
    );
    let _ = writeln!(
        s,
        "EFER={:016x} APIC_BASE={:016x}",
        sregs.efer, sregs.apic_base
    );
    s
}

/// Reads up to `len` bytes at CS:RIP through the guest's page tables (stops at an unmapped page).
pub fn code_bytes(mem: &GuestMemMmap, regs: &kvm_regs, sregs: &kvm_sregs, len: usize) -> Vec<u8> {
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let read = |gpa: u64| mem.read_obj::<u64>(GuestAddress(gpa)).ok();
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let Some(gpa) = translate(
            linear.wrapping_add(i),
            sregs.cr0,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            read,
        ) else {
            break;
        };
        match mem.read_obj::<u8>(GuestAddress(gpa)) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

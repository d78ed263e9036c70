//! What accel must know about the host's KVM: `kvm_pvm` (a KVM without hardware
//! virtualization, where guest kernel code runs in KVM's instruction emulator) and the
//! paravirt features it reports but cannot deliver.

use std::path::Path;

/// True if `/dev/kvm` is provided by the `kvm_pvm` module.
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// CPUID features accel turns off by default on this host (`-cpu host,+FEAT` turns one on).
///
/// `kvm-pv-unhalt`: on kvm_pvm the guest's `KVM_HC_KICK_CPU` hypercall (a PV spinlock
/// unlock waking a halted waiter, `kvm_kick_cpu`) can be re-emulated forever without
/// completing: with both host cores busy, the unlocking vCPU spun ~400,000 times a second on
/// the one `vmcall` (KVM's `kvm_emulate_insn` trace, same RIP every time, no hypercall ever
/// dispatched) while the waiter stayed halted: an RCU stall, then a hung guest. QEMU 7.2
/// with `-cpu host` hangs the same way on this host; without the feature the guest uses
/// plain queued spinlocks and never issues that hypercall.
pub fn features_off_by_default() -> &'static [&'static str] {
    if is_kvm_pvm() {
        &["kvm-pv-unhalt"]
    } else {
        &[]
    }
}

/// Says once, at start, what running on kvm_pvm means for the guest.
pub fn notice() {
    if is_kvm_pvm() {
        log::warn!(
            "this host's KVM is kvm_pvm (no hardware virtualization: guest kernel code is \
             emulated, boots take tens of seconds). Guest kernels need \
             'noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm reboot=k' on their \
             command line here; accel hides kvm-pv-unhalt from the guest (its kick hypercall \
             can hang on this host)"
        );
    }
}

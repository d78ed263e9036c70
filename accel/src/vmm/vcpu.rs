//! One vCPU: its KVM fd, initial state for (re)boot, and the run loop its thread executes.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use kvm_bindings::{
    CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs,
    kvm_vcpu_events,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use super::control::{FatalExit, VcpuFault, VmControl, VmRequest};
use super::dump::{code_bytes, format_registers, hex};
use super::memory::GuestMemMmap;
use crate::arch::boot::BootEntry;
use crate::arch::regs::{boot_fpu, boot_msrs, boot_regs, configure_lint, setup_sregs};
use crate::devices::bus::Bus;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {what}: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: boot registers: {source}")]
    Regs {
        index: u8,
        source: crate::arch::regs::RegsError,
    },
    #[error("vCPU {index}: building MSR list: {msg}")]
    Msrs { index: u8, msg: String },
}

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs (null outside [`Vcpu::run`]): where
    /// [`kick_signal_handler`] sets `immediate_exit`. Const-initialised and without a
    /// destructor, so reading it from a signal handler touches no lazy TLS machinery.
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Handler of the vCPU kick signal (SIGRTMIN): makes the thread's current or next KVM_RUN
/// return EINTR at once. Setting `immediate_exit` closes the race a bare signal has (one that
/// lands between the stop-flag check and KVM_RUN would be lost and the vCPU would run on).
pub extern "C" fn kick_signal_handler(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: a non-null pointer is this thread's vCPU `kvm_run` mapping, published by
        // `Vcpu::run` for exactly as long as the `VcpuFd` (which owns the mapping) is running
        // on this thread. A volatile byte store is async-signal-safe; KVM reads the flag at
        // the next KVM_RUN entry.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Publishes the thread's `kvm_run` to [`kick_signal_handler`] while alive.
struct KickTarget;

impl KickTarget {
    fn publish(run: *mut kvm_bindings::kvm_run) -> Self {
        KVM_RUN.with(|c| c.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Everything the run loops share.
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VmControl>,
    pub memory: GuestMemoryAtomic<GuestMemMmap>,
    /// `--timing`: process start, reported once at the first KVM_RUN.
    pub timing_start: Option<Instant>,
    pub first_run_seen: AtomicBool,
}

/// What one `KVM_RUN` exit leads to.
enum Step {
    Go,
    Stop(FatalExit),
    /// An exit accel does not handle (its reason number is in the run structure).
    Unexpected,
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    cpuid: CpuId,
    cpuid_set: bool,
    /// LAPIC and special registers right after creation: the base for every (re)boot.
    pristine_lapic: kvm_lapic_state,
    pristine_sregs: kvm_sregs,
}

impl Vcpu {
    pub fn new(vm: &VmFd, index: u8, cpuid: CpuId) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let pristine_lapic = fd.get_lapic().map_err(|source| VcpuError::Kvm {
            index,
            what: "KVM_GET_LAPIC",
            source,
        })?;
        let pristine_sregs = fd.get_sregs().map_err(|source| VcpuError::Kvm {
            index,
            what: "KVM_GET_SREGS",
            source,
        })?;
        Ok(Vcpu {
            index,
            fd,
            cpuid,
            cpuid_set: false,
            pristine_lapic,
            pristine_sregs,
        })
    }

    fn kvm_err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Kvm {
            index,
            what,
            source,
        }
    }

    /// Puts the vCPU in its power-on state: the BSP at the kernel entry, APs waiting for SIPI.
    pub fn reset(&mut self, mem: &GuestMemMmap, boot: &BootEntry) -> Result<(), VcpuError> {
        let index = self.index;
        if !self.cpuid_set {
            self.fd
                .set_cpuid2(&self.cpuid)
                .map_err(self.kvm_err("KVM_SET_CPUID2"))?;
            self.cpuid_set = true;
        }
        // Special registers first: they carry the APIC base (xAPIC mode, BSP flag), which
        // decides how KVM reads the LAPIC state below.
        let sregs = if index == 0 {
            setup_sregs(mem, boot.mode, self.pristine_sregs)
                .map_err(|source| VcpuError::Regs { index, source })?
        } else {
            self.pristine_sregs
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(self.kvm_err("KVM_SET_SREGS"))?;
        self.set_boot_msrs()?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(self.kvm_err("KVM_SET_FPU"))?;
        let mut lapic = self.pristine_lapic;
        configure_lint(&mut lapic, index == 0);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("KVM_SET_LAPIC"))?;
        if let Err(e) = self.fd.set_vcpu_events(&kvm_vcpu_events::default()) {
            log::debug!("vCPU {index}: clearing pending events: {e}");
        }
        let regs = if index == 0 {
            boot_regs(boot.mode, boot.entry, boot.boot_info)
        } else {
            kvm_regs {
                rflags: 0x2,
                ..Default::default()
            }
        };
        self.fd
            .set_regs(&regs)
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        let mp_state = if index == 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        };
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(self.kvm_err("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// Writes the boot MSR set. KVM stops at the first MSR it refuses: skip that one and go on,
    /// so e.g. the paravirt MSRs (kvmclock, async PF) are still cleared on reboot.
    fn set_boot_msrs(&self) -> Result<(), VcpuError> {
        let index = self.index;
        let all = boot_msrs();
        let mut rest = &all[..];
        while !rest.is_empty() {
            let msrs = Msrs::from_entries(rest).map_err(|e| VcpuError::Msrs {
                index,
                msg: format!("{e:?}"),
            })?;
            let n = self
                .fd
                .set_msrs(&msrs)
                .map_err(self.kvm_err("KVM_SET_MSRS"))?;
            if n >= rest.len() {
                break;
            }
            log::debug!("vCPU {index}: KVM refused MSR {:#x}", rest[n].index);
            rest = &rest[n + 1..];
        }
        Ok(())
    }

    /// Runs the guest until the VM is asked to stop. Posts a request on fatal exits.
    pub fn run(&mut self, shared: &VcpuShared) {
        let control = &shared.control;
        if self.index == 0
            && let Some(start) = shared.timing_start
            && !shared.first_run_seen.swap(true, Ordering::Relaxed)
        {
            let t = start.elapsed();
            eprintln!(
                "accel: timing: process start to first KVM_RUN: {:.3} ms",
                t.as_secs_f64() * 1e3
            );
            log::debug!("process start to first KVM_RUN: {t:?}");
        }
        let _kick = KickTarget::publish(self.fd.get_kvm_run());
        loop {
            if control.should_stop() {
                return;
            }
            let step = match self.fd.run() {
                Ok(exit) => match EXITS.record(exit) {
                    VcpuExit::IoIn(port, data) => {
                        if !shared.pio.read(u64::from(port), data) {
                            log::debug!("unhandled port read {port:#x} ({} bytes)", data.len());
                        }
                        Step::Go
                    }
                    VcpuExit::IoOut(port, data) => {
                        if !shared.pio.write(u64::from(port), data) {
                            log::debug!("unhandled port write {port:#x} <- {data:x?}");
                        }
                        Step::Go
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !shared.mmio.read(addr, data) {
                            log::debug!("unhandled MMIO read {addr:#x} ({} bytes)", data.len());
                        }
                        Step::Go
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        if !shared.mmio.write(addr, data) {
                            log::debug!("unhandled MMIO write {addr:#x} <- {data:x?}");
                        }
                        Step::Go
                    }
                    VcpuExit::Hlt => {
                        log::debug!("vCPU {}: HLT exit", self.index);
                        Step::Go
                    }
                    VcpuExit::Intr | VcpuExit::IrqWindowOpen => Step::Go,
                    VcpuExit::Shutdown => Step::Stop(FatalExit::TripleFault),
                    VcpuExit::FailEntry(reason, cpu) => {
                        Step::Stop(FatalExit::FailEntry { reason, cpu })
                    }
                    VcpuExit::InternalError => Step::Stop(FatalExit::InternalError),
                    VcpuExit::SystemEvent(kind, _) => {
                        match kind {
                            KVM_SYSTEM_EVENT_SHUTDOWN => control.request(VmRequest::Shutdown),
                            KVM_SYSTEM_EVENT_RESET => control.request(VmRequest::Reset),
                            other => {
                                log::warn!("vCPU {}: system event {other} ignored", self.index)
                            }
                        }
                        Step::Go
                    }
                    // Its number is read below, once the exit no longer borrows the run.
                    _ => Step::Unexpected,
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick (see `kick_signal_handler`): re-arm KVM_RUN, then the stop flag
                    // is checked at the top of the loop. The stopper sets the flag before it
                    // signals, so a kick after this store still finds it set.
                    self.fd.set_kvm_immediate_exit(0);
                    Step::Go
                }
                Err(e) => Step::Stop(FatalExit::Run(e)),
            };
            let exit = match step {
                Step::Go => continue,
                Step::Stop(exit) => exit,
                Step::Unexpected => FatalExit::Unexpected(self.fd.get_kvm_run().exit_reason),
            };
            let report = self.crash_report(&exit, shared);
            eprint!("{report}");
            control.request(VmRequest::fatal(VcpuFault::Exit {
                vcpu: usize::from(self.index),
                exit,
            }));
            return;
        }
    }

    /// Registers, internal-error data and the instruction bytes at CS:RIP.
    fn crash_report(&mut self, reason: &FatalExit, shared: &VcpuShared) -> String {
        let mut out = format!("accel: vCPU {} stopped: {reason}\n", self.index);
        let run = self.fd.get_kvm_run();
        if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: exit_reason says the `internal` member of the union is the valid one.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let n = (internal.ndata as usize).min(internal.data.len());
            out.push_str(&format!(
                "internal error suberror {} data [{}]\n",
                internal.suberror,
                internal.data[..n]
                    .iter()
                    .map(|d| format!("{d:#x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                // SAFETY: for emulation failures KVM fills the `emulation_failure` layout.
                let emu = unsafe { run.__bindgen_anon_1.emulation_failure };
                if emu.flags
                    & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                    != 0
                {
                    // SAFETY: the INSTRUCTION_BYTES flag says the instruction fields are filled.
                    let insn = unsafe { emu.__bindgen_anon_1.__bindgen_anon_1 };
                    let len = (insn.insn_size as usize).min(insn.insn_bytes.len());
                    out.push_str(&format!(
                        "failing instruction (from KVM): {}\n",
                        hex(&insn.insn_bytes[..len])
                    ));
                }
            }
        }
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => {
                out.push_str(&format_registers(&regs, &sregs));
                let mem = shared.memory.memory();
                let code = code_bytes(&mem, &regs, &sregs, 16);
                out.push_str(&format!(
                    "code at CS:RIP: {}\n",
                    if code.is_empty() {
                        "<unmapped>".to_string()
                    } else {
                        hex(&code)
                    }
                ));
            }
            (r, s) => out.push_str(&format!(
                "could not read registers: {:?} {:?}\n",
                r.err(),
                s.err()
            )),
        }
        out
    }
}

/// vCPU exits to userspace per reason, summed over all vCPUs: shows which work reaches accel
/// (a running virtio device's data path must add nothing here).
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub hlt: AtomicU64,
    pub other: AtomicU64,
}

/// The process-wide exit counters.
pub static EXITS: ExitCounters = ExitCounters {
    io: AtomicU64::new(0),
    mmio: AtomicU64::new(0),
    hlt: AtomicU64::new(0),
    other: AtomicU64::new(0),
};

impl ExitCounters {
    fn record<'a>(&self, exit: VcpuExit<'a>) -> VcpuExit<'a> {
        let c = match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &self.io,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &self.mmio,
            VcpuExit::Hlt => &self.hlt,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
        exit
    }

    /// `io=N mmio=N hlt=N other=N`.
    pub fn summary(&self) -> String {
        format!(
            "io={} mmio={} hlt={} other={}",
            self.io.load(Ordering::Relaxed),
            self.mmio.load(Ordering::Relaxed),
            self.hlt.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

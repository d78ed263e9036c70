//! The VMM core: builds the VM ([`vm::Vm`]: memfd RAM, KVM irqchip/PIT, legacy devices, vCPUs,
//! direct Linux boot) and runs it until the guest shuts down, resets with `-no-reboot`, crashes,
//! or accel gets SIGINT/SIGTERM.
//!
//! Threads: one per vCPU (each owns its `VcpuFd` while running and hands it back when it
//! stops), and the main thread, which waits in `poll` on the [`control::VmControl`] eventfds and
//! a signalfd for SIGINT/SIGTERM. To stop the vCPUs the main thread sets the stop flag and kicks
//! each thread once with SIGRTMIN, whose handler sets the vCPU's `immediate_exit`: KVM_RUN
//! returns at once whether the thread was inside it or about to enter it.
//!
//! Signals: like QEMU, SIGINT and SIGTERM end the VM cleanly with exit status 0
//! ("terminating on signal N" on stderr).

pub mod control;
pub mod dump;
pub mod host;
mod legacy;
pub mod memory;
mod teardown;
pub mod vcpu;
pub mod vm;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::config::VmConfig;
use control::VmRequest;
use vcpu::{Vcpu, VcpuShared};
pub use vm::{ResetHook, Vm};

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset with `-no-reboot`, or a guest shutdown: exit status 0.
    Shutdown,
    /// SIGINT/SIGTERM: clean teardown (exit status 0, as QEMU).
    Signal(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("could not open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] crate::arch::boot::BootError),
    #[error(transparent)]
    Cpuid(#[from] crate::arch::cpuid::CpuidError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("MP table: {0}")]
    Mptable(#[from] crate::arch::mptable::MptableError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] crate::arch::acpi::AcpiError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serial(#[from] crate::devices::serial::SerialError),
    #[error("placing {what} on its bus: {source}")]
    Bus {
        what: &'static str,
        #[source]
        source: crate::devices::bus::BusError,
    },
    #[error("device setup: {0}")]
    Pci(#[from] crate::virtio::SetupError),
    #[error("GSI allocator: {0}")]
    Gsi(vm_allocator::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("signal handling ({what}): {source}")]
    Signal {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("guest stopped: {0}")]
    GuestFault(String),
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records the process start time for `--timing` (call first thing in `main`).
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

/// Builds the VM from `config` and runs it to the end.
pub fn run(config: VmConfig) -> Result<ExitReason, VmmError> {
    let start = *PROCESS_START.get_or_init(Instant::now);
    host::notice();

    // SIGINT/SIGTERM are blocked in every thread (threads inherit the mask, so block before
    // creating any) and read from a signalfd by the main thread.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    let signal = |what| move |source| VmmError::Signal { what, source };
    mask.thread_block()
        .map_err(signal("blocking SIGINT/SIGTERM"))?;
    let sigfd = SignalFd::new(&mask).map_err(signal("signalfd"))?;
    register_signal_handler(SIGRTMIN(), vcpu::kick_signal_handler).map_err(|e| {
        VmmError::Signal {
            what: "vCPU kick handler",
            source: nix::Error::from_raw(e.errno()),
        }
    })?;

    let timing = config.timing;
    let mut vm = Vm::new(config)?;
    let shared = Arc::new(VcpuShared {
        pio: vm.pio_bus.clone(),
        mmio: vm.mmio_bus.clone(),
        control: vm.control.clone(),
        memory: vm.ram.memory.clone(),
        timing_start: timing.then_some(start),
        first_run_seen: AtomicBool::new(false),
    });

    loop {
        let handles = start_vcpus(&mut vm, &shared)?;
        let outcome = wait_for_request(&vm, &sigfd);
        vm.control.set_stop();
        stop_vcpus(&mut vm, handles);
        match outcome? {
            Outcome::Request(VmRequest::Reset) if !vm.config.no_reboot => {
                log::info!("guest reset: rebooting");
                vm.reboot()?;
            }
            Outcome::Request(VmRequest::Reset | VmRequest::Shutdown) => {
                return Ok(ExitReason::Shutdown);
            }
            Outcome::Request(VmRequest::Fatal(msg)) => return Err(VmmError::GuestFault(msg)),
            Outcome::Signal(sig) => return Ok(ExitReason::Signal(sig)),
        }
    }
}

enum Outcome {
    Request(VmRequest),
    Signal(i32),
}

fn start_vcpus(vm: &mut Vm, shared: &Arc<VcpuShared>) -> Result<Vec<JoinHandle<Vcpu>>, VmmError> {
    let mut handles = Vec::new();
    for mut vcpu in vm.vcpus.drain(..) {
        let shared = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index))
            .spawn(move || {
                let _guard = PanicReporter(&shared.control);
                vcpu.run(&shared);
                vcpu
            })
            .map_err(|source| VmmError::Io {
                what: "spawning a vCPU thread",
                source,
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// Turns a panicking vCPU thread into a fatal request, so the main thread does not wait forever.
struct PanicReporter<'a>(&'a control::VmControl);

impl Drop for PanicReporter<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .request(VmRequest::Fatal("a vCPU thread panicked".into()));
        }
    }
}

/// Kicks every vCPU thread out of KVM_RUN (the stop flag is already set) and takes the vCPUs
/// back once their threads have ended.
fn stop_vcpus(vm: &mut Vm, handles: Vec<JoinHandle<Vcpu>>) {
    for h in &handles {
        if !h.is_finished()
            && let Err(e) = h.kill(SIGRTMIN())
        {
            log::warn!("kicking vCPU thread: {e}");
        }
    }
    for h in handles {
        match h.join() {
            Ok(vcpu) => vm.vcpus.push(vcpu),
            Err(_) => log::error!("a vCPU thread panicked"),
        }
    }
    vm.vcpus.sort_by_key(|v| v.index);
}

fn wait_for_request(vm: &Vm, sigfd: &SignalFd) -> Result<Outcome, VmmError> {
    let control = &vm.control;
    loop {
        // SAFETY: the eventfd is owned by `control`, which outlives this borrow.
        let req_fd = unsafe { BorrowedFd::borrow_raw(control.request_evt.as_raw_fd()) };
        let mut fds = [
            PollFd::new(req_fd, PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(source) => {
                return Err(VmmError::Signal {
                    what: "waiting for requests and signals",
                    source,
                });
            }
        }
        let ready = |i: usize| {
            fds[i]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN))
        };
        let (req_ready, sig_ready) = (ready(0), ready(1));
        if sig_ready && let Ok(Some(info)) = sigfd.read_signal() {
            let sig = info.ssi_signo as i32;
            log::info!("terminating on signal {sig}");
            return Ok(Outcome::Signal(sig));
        }
        if req_ready && let Some(req) = control.take() {
            return Ok(Outcome::Request(req));
        }
    }
}

//! The VMM core: builds the VM ([`vm::Vm`]: memfd RAM, KVM irqchip/PIT, legacy devices, vCPUs,
//! direct Linux boot) and runs it until the guest shuts down, resets with `-no-reboot`, crashes,
//! or accel gets SIGINT/SIGTERM.
//!
//! Threads: one per vCPU, created once and parked while the VM is paused ([`vcpus`]: `-S`,
//! QMP `stop`, resets), the QMP monitor thread ([`crate::qmp`]), and the main thread, which
//! waits in `poll` on the [`control::VmControl`] eventfd (guest requests), the QMP command
//! eventfd and a signalfd for SIGINT/SIGTERM ([`lifecycle`]). To pause the vCPUs the main
//! thread sets the stop flag and kicks each thread once with SIGRTMIN, whose handler sets the
//! vCPU's `immediate_exit`: KVM_RUN returns at once whether the thread was inside it or about
//! to enter it.
//!
//! Signals: like QEMU, SIGINT and SIGTERM end the VM cleanly with exit status 0
//! ("terminating on signal N" on stderr, `SHUTDOWN` event with reason `host-signal`).

pub mod confine;
pub mod control;
pub mod daemon;
pub mod dump;
pub mod host;
mod hotplug;
pub(crate) mod info;
mod legacy;
mod lifecycle;
pub mod memory;
mod probe;
mod teardown;
pub mod vcpu;
mod vcpus;
pub mod vm;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::config::VmConfig;
use crate::qmp::{MonitorServer, QmpShared, QmpStartError, RunState};
use vcpu::VcpuShared;
use vcpus::VcpuThreads;
pub use vm::{PowerButton, ResetHook, Vm};

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Guest reset with `-no-reboot`, or a guest shutdown: exit status 0.
    Shutdown,
    /// SIGINT/SIGTERM: clean teardown (exit status 0, as QEMU).
    Signal(i32),
    /// The guest wrote to `isa-debug-exit`: the process exits with this status.
    DebugExit(i32),
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
    #[error(transparent)]
    DebugCon(#[from] crate::devices::debug::DebugConError),
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
    GuestFault(Arc<control::VcpuFault>),
    #[error("QMP monitor: {0}")]
    Qmp(#[from] QmpStartError),
    #[error(transparent)]
    Backends(#[from] crate::backends::BackendsError),
    #[error("cannot confine accel (-sandbox off runs without): {0}")]
    Sandbox(#[from] vu_sandbox::SandboxError),
    #[error("-run-with user=: {0}")]
    User(#[from] vu_sandbox::UserError),
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records the process start time for `--timing` (call first thing in `main`).
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

/// Builds the VM from `config` and runs it to the end.
///
/// With `ready` (`-daemonize`), the parent process is released once the VM is built and its
/// monitors listen.
pub fn run(mut config: VmConfig, ready: Option<daemon::ReadyPipe>) -> Result<ExitReason, VmmError> {
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

    let _pidfile = match &config.lifecycle.pidfile {
        Some(path) => Some(info::PidFile::create(path).map_err(|source| VmmError::Io {
            what: "writing the -pidfile",
            source,
        })?),
        None => None,
    };
    if config.machine == crate::config::MachineType::None {
        return probe::run(&config, ready, &sigfd);
    }
    let timing = config.timing;
    // Before the devices connect; dropped (backends stopped) after the VM.
    let _backends = crate::backends::Backends::start(&mut config)?;
    let vm = Vm::new(config)?;
    let initial = if vm.config.lifecycle.start_paused {
        RunState::Prelaunch
    } else {
        RunState::Running
    };
    let qmp = Arc::new(QmpShared::new(info::vm_info(&vm), initial)?);
    let server = MonitorServer::start(&vm.config.monitors, qmp.clone())?;
    let shared = Arc::new(VcpuShared {
        pio: vm.pio_bus.clone(),
        mmio: vm.mmio_bus.clone(),
        control: vm.control.clone(),
        memory: vm.ram.memory.clone(),
        timing_start: timing.then_some(start),
        first_run_seen: AtomicBool::new(false),
    });
    let mut vm = vm;
    // The vCPU threads start parked, so QMP can report their thread ids at once.
    let threads = VcpuThreads::spawn(&vm.vcpus, &shared, &qmp, vm.config.lifecycle.debug_threads)?;
    // Setup is done: nothing opens /dev/kvm, binds a socket or maps new RAM any more. Every
    // thread gets its kind's list (the vCPU threads theirs, the only one with KVM_RUN); the
    // main thread then drops what only the vCPU threads need.
    confine::apply(&vm.config)?;
    vu_sandbox::confine_thread(&confine::main_syscalls())?;
    if let Some(ready) = ready {
        ready.ready();
    }
    let result = lifecycle::run_loop(&mut vm, &threads, &qmp, &sigfd);
    threads.exit(&vm.control);
    // Replies and events already queued (quit's SHUTDOWN) reach the clients first.
    if let Some(server) = server {
        server.shutdown();
    }
    result
}

//! The QMP monitor: QEMU 7.2's machine protocol, for the commands and events a VM's life
//! needs (see [`commands`] for the list).
//!
//! - [`wire`]: JSON stream splitting, request checks, reply/event encoding (QEMU's texts).
//! - [`commands`]: dispatch; queries answered from [`VmInfo`], lifecycle commands forwarded.
//! - [`server`]: one monitor thread serving every `-qmp`/`-mon` socket with `poll`.
//!
//! The monitor thread never touches the VM. Lifecycle commands (`stop`, `cont`,
//! `system_reset`, `system_powerdown`, `quit`) go to the main thread through [`QmpShared`]
//! (a queue plus an eventfd the main thread polls) and the monitor thread waits for the
//! answer; the main thread emits events ([`QmpShared::emit`]) before it answers, so, as in
//! QEMU, a client sees e.g. `STOP` before the `stop` command's return.

pub mod commands;
pub mod server;
pub mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use server::MonitorServer;
pub use wire::QmpError;

/// Events kept for the monitor thread at most (it drains them at once; this bounds memory if
/// it cannot run).
const MAX_QUEUED_EVENTS: usize = 1024;
/// How long a lifecycle command may take on the main thread before the client gets an error.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum QmpStartError {
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{what} {addr}: {source}")]
    Socket {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spawning the monitor thread: {0}")]
    Thread(std::io::Error),
}

/// QEMU's `RunState` values that accel can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Shutdown,
    InternalError,
    /// pvpanic reported a panic and the VM stopped (`-no-shutdown`); `cont` runs it again.
    GuestPanicked,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
            RunState::GuestPanicked => "guest-panicked",
        }
    }

    /// States that `cont` refuses until `system_reset` (QEMU's `runstate_needs_reset`).
    pub fn needs_reset(self) -> bool {
        matches!(self, RunState::Shutdown | RunState::InternalError)
    }
}

/// What the main thread is asked to do by a monitor.
#[derive(Clone, Debug, PartialEq)]
pub enum VmCommand {
    Stop,
    Cont,
    SystemReset,
    Powerdown,
    Quit,
    /// A device or its backend comes or goes (`vmm::hotplug`).
    Hotplug(HotplugCommand),
}

/// The hotplug commands, with their arguments as the client sent them (checked for shape;
/// the main thread parses them with the command line's parsers).
#[derive(Clone, Debug, PartialEq)]
pub enum HotplugCommand {
    ChardevAdd { id: String, backend: Value },
    ChardevRemove { id: String },
    NetdevAdd(serde_json::Map<String, Value>),
    NetdevDel { id: String },
    DeviceAdd(serde_json::Map<String, Value>),
    DeviceDel { id: String },
}

/// A command waiting for the main thread, with where its answer goes.
pub struct PendingCommand {
    pub command: VmCommand,
    reply: mpsc::Sender<Result<(), QmpError>>,
}

impl PendingCommand {
    pub fn reply(self, result: Result<(), QmpError>) {
        // The monitor thread may have given up waiting (timeout): nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// One vCPU as `query-cpus-fast` reports it.
#[derive(Clone, Debug)]
pub struct CpuInfo {
    pub index: u32,
    pub socket: u32,
    pub core: u32,
    pub thread: u32,
}

/// One PCI function as `query-pci` reports it.
#[derive(Clone, Debug)]
pub struct PciFunctionInfo {
    /// The bus number the guest gave its bus (0: the root bus).
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    /// A bridge: its bus numbers, windows and the functions behind it.
    pub bridge: Option<PciBridgeInfo>,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Base class << 8 | subclass.
    pub class: u16,
    pub irq_line: u8,
    pub irq_pin: u8,
    pub qdev_id: String,
    pub bars: Vec<PciBarInfo>,
}

/// What a PCI-to-PCI bridge forwards, as the guest programmed it (QEMU's `PciBusInfo`).
#[derive(Clone, Debug)]
pub struct PciBridgeInfo {
    pub primary: u8,
    pub secondary: u8,
    pub subordinate: u8,
    /// `(base, limit)` of the I/O, memory and prefetchable windows (base > limit: closed).
    pub io: (u64, u64),
    pub memory: (u64, u64),
    pub prefetch: (u64, u64),
    pub devices: Vec<PciFunctionInfo>,
}

#[derive(Clone, Debug)]
pub struct PciBarInfo {
    pub index: u8,
    pub io: bool,
    pub mem64: bool,
    pub prefetch: bool,
    pub size: u64,
    /// Where it decodes now; `None` while the guest has decoding off.
    pub address: Option<u64>,
}

/// Reads the PCI bus for `query-pci` (registered by the VMM; called on the monitor thread).
pub type PciLister = Box<dyn Fn() -> Vec<PciFunctionInfo> + Send + Sync>;

/// The facts queries report; fixed once the VM is built.
pub struct VmInfo {
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub cpus: Vec<CpuInfo>,
    pub ram_size: u64,
    /// `(label, filename)` of chardevs other than the monitors' own.
    pub chardevs: Vec<(String, String)>,
    pub pci: Option<PciLister>,
}

/// State shared by the monitor thread, the main thread and the vCPU threads.
pub struct QmpShared {
    pub info: VmInfo,
    /// Host thread id of each vCPU thread (0 until it started).
    pub vcpu_tids: Vec<AtomicI32>,
    status: Mutex<RunState>,
    commands: Mutex<VecDeque<PendingCommand>>,
    /// Readable while a command waits for the main thread.
    pub command_evt: EventFd,
    events: Mutex<VecDeque<(String, Option<Value>, u64)>>,
    /// Readable while events wait for the monitor thread (also used to ask it to stop).
    pub(crate) wake_evt: EventFd,
    /// Whether a monitor exists at all (otherwise events are not kept).
    active: AtomicBool,
    pub(crate) stopping: AtomicBool,
}

impl QmpShared {
    pub fn new(info: VmInfo, initial: RunState) -> Result<Self, QmpStartError> {
        let vcpu_tids = info.cpus.iter().map(|_| AtomicI32::new(0)).collect();
        Ok(QmpShared {
            info,
            vcpu_tids,
            status: Mutex::new(initial),
            commands: Mutex::new(VecDeque::new()),
            command_evt: EventFd::new(EFD_NONBLOCK).map_err(QmpStartError::EventFd)?,
            events: Mutex::new(VecDeque::new()),
            wake_evt: EventFd::new(EFD_NONBLOCK).map_err(QmpStartError::EventFd)?,
            active: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn status(&self) -> RunState {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Main thread: the VM's run state changed.
    pub fn set_status(&self, state: RunState) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Sends an event to every negotiated client (timestamped now).
    pub fn emit(&self, name: &str, data: Option<Value>) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
        }
        q.push_back((name.to_string(), data, micros));
        drop(q);
        let _ = self.wake_evt.write(1);
    }

    /// `SHUTDOWN` with QEMU's `guest`/`reason` members.
    pub fn emit_shutdown(&self, guest: bool, reason: &str) {
        self.emit(
            "SHUTDOWN",
            Some(serde_json::json!({"guest": guest, "reason": reason})),
        );
    }

    /// `RESET` with QEMU's `guest`/`reason` members.
    pub fn emit_reset(&self, guest: bool, reason: &str) {
        self.emit(
            "RESET",
            Some(serde_json::json!({"guest": guest, "reason": reason})),
        );
    }

    pub(crate) fn take_events(&self) -> Vec<(String, Option<Value>, u64)> {
        let _ = self.wake_evt.read();
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Main thread: the next lifecycle command to carry out.
    pub fn take_command(&self) -> Option<PendingCommand> {
        let mut q = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        let cmd = q.pop_front();
        if q.is_empty() {
            let _ = self.command_evt.read();
        }
        cmd
    }

    /// Monitor thread: runs `command` on the main thread and waits for its answer.
    pub(crate) fn call(&self, command: VmCommand) -> Result<(), QmpError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(PendingCommand { command, reply: tx });
        if let Err(e) = self.command_evt.write(1) {
            return Err(QmpError::generic(format!("waking the main thread: {e}")));
        }
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(QmpError::generic(
                "the VM did not carry out the command in time",
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(QmpError::generic("the VM is shutting down"))
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The main thread's loop: guest requests (reset, poweroff, fatal), QMP lifecycle commands
//! and SIGINT/SIGTERM, with QEMU's run states and events.
//!
//! | what happens                  | events (QEMU's)                                  | then |
//! |-------------------------------|--------------------------------------------------|------|
//! | guest reset                   | `RESET` guest-reset                              | reboot |
//! | guest reset, `-no-reboot`     | `SHUTDOWN` guest-reset                           | exit 0 |
//! | guest poweroff                | `SHUTDOWN` guest-shutdown                        | exit 0 (`-no-shutdown`: `STOP`, state shutdown) |
//! | pvpanic "panicked"            | `GUEST_PANICKED` poweroff, `STOP`, `SHUTDOWN` guest-panic | exit 0 |
//! | pvpanic, `-no-shutdown`       | `GUEST_PANICKED` pause, `STOP`                   | state guest-panicked (`cont` runs on) |
//! | pvpanic "crash loaded"        | `GUEST_CRASHLOADED` run                          | runs on |
//! | `stop` / `cont`               | `STOP` / `RESUME`                                | |
//! | `system_reset`                | `RESET` host-qmp-system-reset                    | reboot (paused: state prelaunch) |
//! | `system_reset`, `-no-reboot`  | `SHUTDOWN` host-qmp-system-reset                 | as a guest poweroff |
//! | `system_powerdown`            | `POWERDOWN`                                      | the power button hook |
//! | `quit`                        | `SHUTDOWN` host-qmp-quit                         | exit 0 |
//! | SIGINT / SIGTERM              | `SHUTDOWN` host-signal                           | exit 0 |

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;

use super::control::VmRequest;
use super::vcpus::VcpuThreads;
use super::{ExitReason, Vm, VmmError};
use crate::qmp::{PendingCommand, QmpError, QmpShared, RunState, VmCommand};

enum Wake {
    /// The guest ejected PCI slots (ACPI hotplug).
    Eject,
    /// The guest powered root-port slots off (PCIe native hotplug).
    SlotPowerOff,
    Request(VmRequest),
    Command(PendingCommand),
    Signal(i32),
}

struct Lifecycle<'a> {
    vm: &'a mut Vm,
    threads: &'a VcpuThreads,
    qmp: &'a QmpShared,
    state: RunState,
}

/// Runs the VM until it ends.
pub(super) fn run_loop(
    vm: &mut Vm,
    threads: &VcpuThreads,
    qmp: &QmpShared,
    sigfd: &SignalFd,
) -> Result<ExitReason, VmmError> {
    let mut lc = Lifecycle {
        vm,
        threads,
        qmp,
        state: RunState::Prelaunch,
    };
    if !lc.vm.config.lifecycle.start_paused {
        lc.threads.resume(&lc.vm.control);
        lc.set(RunState::Running);
    }
    lc.qmp.set_status(lc.state);
    loop {
        match wait(lc.vm, lc.qmp, sigfd)? {
            Wake::Signal(sig) => {
                log::info!("terminating on signal {sig}");
                lc.qmp.emit_shutdown(false, "host-signal");
                return Ok(ExitReason::Signal(sig));
            }
            Wake::Eject => super::hotplug::ejected(lc.vm, lc.qmp),
            Wake::SlotPowerOff => super::hotplug::slots_powered_off(lc.vm, lc.qmp),
            Wake::Request(req) => {
                if let Some(exit) = lc.guest_request(req)? {
                    return Ok(exit);
                }
            }
            Wake::Command(cmd) => match lc.command(cmd.command.clone()) {
                Ok(exit) => {
                    cmd.reply(Ok(()));
                    if let Some(exit) = exit {
                        return Ok(exit);
                    }
                }
                Err(CommandFailure::Client(e)) => cmd.reply(Err(e)),
                Err(CommandFailure::Vmm(e)) => {
                    cmd.reply(Err(QmpError::generic(e.to_string())));
                    return Err(e);
                }
            },
        }
    }
}

enum CommandFailure {
    /// Answered to the client; the VM goes on.
    Client(QmpError),
    /// The VMM failed (e.g. reloading the kernel on reset): the process ends.
    Vmm(VmmError),
}

impl From<VmmError> for CommandFailure {
    fn from(e: VmmError) -> Self {
        CommandFailure::Vmm(e)
    }
}

impl Lifecycle<'_> {
    fn set(&mut self, state: RunState) {
        self.state = state;
        self.qmp.set_status(state);
    }

    /// A request from the guest or a vCPU; `Some` ends the process.
    fn guest_request(&mut self, req: VmRequest) -> Result<Option<ExitReason>, VmmError> {
        self.threads.pause(&self.vm.control);
        let no_reboot = self.vm.config.no_reboot;
        match req {
            VmRequest::Reset if !no_reboot => {
                log::info!("guest reset: rebooting");
                self.qmp.emit_reset(true, "guest-reset");
                self.vm.reboot()?;
                if self.state == RunState::Running {
                    self.threads.resume(&self.vm.control);
                }
                Ok(None)
            }
            VmRequest::Reset => Ok(self.shutdown(true, "guest-reset")),
            VmRequest::Shutdown => Ok(self.shutdown(true, "guest-shutdown")),
            VmRequest::Panicked => Ok(self.panicked()),
            VmRequest::CrashLoaded => {
                log::warn!("the guest panicked and loads its crash kernel (pvpanic)");
                self.qmp.emit(
                    "GUEST_CRASHLOADED",
                    Some(serde_json::json!({"action": "run"})),
                );
                if self.state == RunState::Running {
                    self.threads.resume(&self.vm.control);
                }
                Ok(None)
            }
            // QEMU's isa-debug-exit calls exit(): no SHUTDOWN event, -no-shutdown ignored.
            VmRequest::Exit(status) => Ok(Some(ExitReason::DebugExit(status))),
            VmRequest::Fatal(msg) => {
                self.set(RunState::InternalError);
                Err(VmmError::GuestFault(msg))
            }
        }
    }

    /// pvpanic's "panicked", as QEMU's default `-action panic=shutdown`: the VM stops, then
    /// powers off (`SHUTDOWN` guest-panic, exit 0), or with `-no-shutdown` stays stopped.
    fn panicked(&mut self) -> Option<ExitReason> {
        let pause = self.vm.config.lifecycle.no_shutdown;
        log::error!(
            "the guest panicked (pvpanic); {}",
            if pause {
                "the VM stops"
            } else {
                "powering off"
            }
        );
        let action = if pause { "pause" } else { "poweroff" };
        self.qmp.emit(
            "GUEST_PANICKED",
            Some(serde_json::json!({"action": action})),
        );
        let was_running = self.state == RunState::Running;
        self.set(RunState::GuestPanicked);
        if was_running {
            self.qmp.emit("STOP", None);
        }
        if pause {
            return None;
        }
        self.qmp.emit_shutdown(true, "guest-panic");
        Some(ExitReason::Shutdown)
    }

    /// A shutdown request: the process ends, or with `-no-shutdown` the VM stops.
    fn shutdown(&mut self, guest: bool, reason: &str) -> Option<ExitReason> {
        self.qmp.emit_shutdown(guest, reason);
        if !self.vm.config.lifecycle.no_shutdown {
            return Some(ExitReason::Shutdown);
        }
        // -no-shutdown: the VM stops; a management tool resets or quits it.
        let was_running = self.state == RunState::Running;
        self.set(RunState::Shutdown);
        if was_running {
            self.qmp.emit("STOP", None);
        }
        None
    }

    /// Carries out a QMP command; `Some` ends the process (after the reply).
    fn command(&mut self, command: VmCommand) -> Result<Option<ExitReason>, CommandFailure> {
        let control = &self.vm.control;
        match command {
            VmCommand::Stop => {
                if self.state == RunState::Running {
                    self.threads.pause(control);
                    self.set(RunState::Paused);
                    self.qmp.emit("STOP", None);
                }
            }
            VmCommand::Cont => {
                if self.state.needs_reset() {
                    return Err(CommandFailure::Client(QmpError::generic(
                        "Resetting the Virtual Machine is required",
                    )));
                }
                if self.state != RunState::Running {
                    self.threads.resume(control);
                    self.set(RunState::Running);
                    self.qmp.emit("RESUME", None);
                }
            }
            VmCommand::SystemReset if self.vm.config.no_reboot => {
                // QEMU: with -no-reboot every reset request, the monitor's too, is a shutdown.
                self.threads.pause(control);
                return Ok(self.shutdown(false, "host-qmp-system-reset"));
            }
            VmCommand::SystemReset => {
                let was_running = self.state == RunState::Running;
                self.threads.pause(control);
                self.qmp.emit_reset(false, "host-qmp-system-reset");
                self.vm.reboot()?;
                if was_running {
                    self.threads.resume(&self.vm.control);
                } else {
                    self.set(RunState::Prelaunch);
                }
            }
            VmCommand::Powerdown => {
                self.qmp.emit("POWERDOWN", None);
                match &self.vm.power_button {
                    Some(press) => press(),
                    None => log::warn!(
                        "system_powerdown: this machine has no ACPI power button; the guest \
                         is not told"
                    ),
                }
            }
            VmCommand::Quit => {
                self.qmp.emit_shutdown(false, "host-qmp-quit");
                return Ok(Some(ExitReason::Shutdown));
            }
            VmCommand::Hotplug(h) => {
                super::hotplug::run(self.vm, h).map_err(CommandFailure::Client)?;
            }
        }
        Ok(None)
    }
}

fn wait(vm: &Vm, qmp: &QmpShared, sigfd: &SignalFd) -> Result<Wake, VmmError> {
    let control = &vm.control;
    loop {
        // SAFETY: both eventfds are owned by objects that outlive this borrow.
        let req_fd = unsafe { BorrowedFd::borrow_raw(control.request_evt.as_raw_fd()) };
        // SAFETY: as above.
        let cmd_fd = unsafe { BorrowedFd::borrow_raw(qmp.command_evt.as_raw_fd()) };
        let mut fds = vec![
            PollFd::new(req_fd, PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(cmd_fd, PollFlags::POLLIN),
        ];
        let mut eject_at = None;
        if let Some(hp) = &vm.pci_hotplug {
            // SAFETY: the eventfd is owned by `vm`, which outlives this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(hp.eject_evt.as_raw_fd()) };
            eject_at = Some(fds.len());
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let mut power_off_at = None;
        if let Some(pci) = &vm.pci {
            // SAFETY: the eventfd is owned by `vm`, which outlives this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(pci.slot_events.evt.as_raw_fd()) };
            power_off_at = Some(fds.len());
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
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
        let (req_ready, sig_ready, cmd_ready) = (ready(0), ready(1), ready(2));
        if eject_at.is_some_and(ready) {
            return Ok(Wake::Eject);
        }
        if power_off_at.is_some_and(ready) {
            return Ok(Wake::SlotPowerOff);
        }
        if sig_ready && let Ok(Some(info)) = sigfd.read_signal() {
            return Ok(Wake::Signal(info.ssi_signo as i32));
        }
        if req_ready && let Some(req) = control.take() {
            return Ok(Wake::Request(req));
        }
        if cmd_ready && let Some(cmd) = qmp.take_command() {
            return Ok(Wake::Command(cmd));
        }
    }
}

//! `-machine none`: no guest at all, only the QMP monitors. libvirt and other management tools
//! start QEMU this way to probe its capabilities (`query-version`, `query-commands`,
//! `query-kvm`, ...), then `quit`.
//!
//! accel checks that `/dev/kvm` opens (so `query-kvm` tells the truth), starts the monitors and
//! answers until `quit` or SIGINT/SIGTERM. Commands that act on a guest (`cont`, `stop`,
//! `system_reset`, `system_powerdown`) are errors: there is none.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;

use super::{ExitReason, VmmError, daemon, info};
use crate::config::VmConfig;
use crate::qmp::{MonitorServer, QmpError, QmpShared, RunState, VmCommand};

pub(super) fn run(
    config: &VmConfig,
    ready: Option<daemon::ReadyPipe>,
    sigfd: &SignalFd,
) -> Result<ExitReason, VmmError> {
    kvm_ioctls::Kvm::new().map_err(VmmError::OpenKvm)?;
    let qmp = Arc::new(QmpShared::new(
        info::probe_info(config),
        RunState::Prelaunch,
    )?);
    let server = MonitorServer::start(&config.monitors, qmp.clone())?;
    if server.is_none() {
        log::warn!("-machine none without a monitor: nothing to do until a signal");
    }
    if let Some(ready) = ready {
        ready.ready();
    }
    let result = serve(&qmp, sigfd);
    if let Some(server) = server {
        server.shutdown();
    }
    result
}

fn serve(qmp: &QmpShared, sigfd: &SignalFd) -> Result<ExitReason, VmmError> {
    loop {
        // SAFETY: the eventfd is owned by `qmp`, which outlives this borrow.
        let cmd_fd = unsafe { BorrowedFd::borrow_raw(qmp.command_evt.as_raw_fd()) };
        let mut fds = [
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(cmd_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(source) => {
                return Err(VmmError::Signal {
                    what: "waiting for QMP commands and signals",
                    source,
                });
            }
        }
        let signalled = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN));
        if signalled && let Ok(Some(info)) = sigfd.read_signal() {
            let sig = info.ssi_signo as i32;
            log::info!("terminating on signal {sig}");
            qmp.emit_shutdown(false, "host-signal");
            return Ok(ExitReason::Signal(sig));
        }
        while let Some(cmd) = qmp.take_command() {
            if cmd.command == VmCommand::Quit {
                qmp.emit_shutdown(false, "host-qmp-quit");
                cmd.reply(Ok(()));
                return Ok(ExitReason::Shutdown);
            }
            cmd.reply(Err(QmpError::generic(
                "-machine none: there is no guest to run, stop or reset",
            )));
        }
    }
}

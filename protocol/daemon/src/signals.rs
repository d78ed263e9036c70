//! SIGTERM/SIGINT: leave promptly and cleanly (socket file removed, exit status 0).

use std::path::PathBuf;

use nix::sys::signal::{SigSet, Signal};

use super::DaemonError;

/// The signal thread's kind of the allow-list (on top of the process's): wait, log, remove the
/// socket files, exit.
const SIGNAL_THREAD_SYSCALLS: &[vu_sandbox::Allow] = {
    use vu_sandbox::Allow::Any;
    &[
        Any("rt_sigtimedwait"),
        Any("unlink"),
        Any("unlinkat"),
        Any("futex"),
        Any("mmap"),
        Any("munmap"),
        Any("mprotect"),
        Any("madvise"),
        Any("brk"),
        Any("sigaltstack"),
        Any("sched_getaffinity"),
        Any("set_robust_list"),
        Any("rseq"),
        Any("close"),
        Any("clock_gettime"),
    ]
};

fn exit_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every thread it spawns
/// afterwards: call this before creating threads); they stay pending until
/// [`install_exit_handler_for`].
pub(crate) fn block_exit_signals() -> Result<(), DaemonError> {
    exit_signals()
        .thread_block()
        .map_err(|e| DaemonError::Signals(e.into()))
}

/// Starts a thread that waits for the signals [`block_exit_signals`] blocked, then removes
/// every one of `socket_paths` and exits the process with status 0.
pub(crate) fn install_exit_handler_for(socket_paths: Vec<PathBuf>) -> Result<(), DaemonError> {
    let set = exit_signals();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = vu_sandbox::confine_thread(SIGNAL_THREAD_SYSCALLS) {
                log::warn!("signal thread: not narrowed to its own allow-list: {e}");
            }
            let signal = loop {
                match set.wait() {
                    Ok(s) => break s,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::error!("waiting for signals failed: {e}");
                        return;
                    }
                }
            };
            log::info!("{signal}: exiting");
            for p in &socket_paths {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}

//! The vCPU threads: created once, parked while the VM is paused (`-S`, `stop`, during a
//! reset), released by [`VcpuThreads::resume`].
//!
//! Each thread loops: park until the resume generation changes, then run its vCPU (holding
//! the vCPU's mutex) until the stop flag is set. [`VcpuThreads::pause`] sets the flag, kicks
//! every thread out of KVM_RUN (SIGRTMIN, see [`super::vcpu::kick_signal_handler`]) and waits
//! until all are parked; the main thread can then lock the vCPUs to reset them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::signal::{Killable, SIGRTMIN};

use super::VmmError;
use super::control::{VcpuFault, VmControl, VmRequest};
use super::vcpu::{Vcpu, VcpuShared};
use crate::qmp::QmpShared;

#[derive(Default)]
struct GateState {
    /// Bumped by every resume; a thread runs once per generation it has not run yet.
    generation: u64,
    parked: usize,
    exit: bool,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct VcpuThreads {
    gate: Arc<Gate>,
    handles: Vec<JoinHandle<()>>,
}

impl VcpuThreads {
    /// Starts one parked thread per vCPU; each records its host thread id in `qmp`.
    pub(super) fn spawn(
        vcpus: &[Arc<Mutex<Vcpu>>],
        shared: &Arc<VcpuShared>,
        qmp: &Arc<QmpShared>,
        debug_threads: bool,
    ) -> Result<Self, VmmError> {
        let gate = Arc::new(Gate::default());
        let mut handles = Vec::new();
        for (i, vcpu) in vcpus.iter().enumerate() {
            let (vcpu, shared, qmp, gate) =
                (vcpu.clone(), shared.clone(), qmp.clone(), gate.clone());
            // QEMU's names with debug-threads=on; a short distinct name otherwise.
            let name = if debug_threads {
                format!("CPU {i}/KVM")
            } else {
                format!("vcpu{i}")
            };
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let _guard = PanicReporter(&shared.control);
                    // The only threads allowed KVM_RUN (a no-op with -sandbox off).
                    if let Err(e) = vu_sandbox::confine_thread(&super::confine::vcpu_syscalls()) {
                        shared
                            .control
                            .request(VmRequest::fatal(VcpuFault::Confine { vcpu: i, source: e }));
                        return;
                    }
                    if let Some(t) = qmp.vcpu_tids.get(i) {
                        // SAFETY: gettid has no preconditions.
                        t.store(unsafe { libc::gettid() }, Ordering::Release);
                    }
                    thread_loop(&gate, &vcpu, &shared);
                })
                .map_err(|source| VmmError::Io {
                    what: "spawning a vCPU thread",
                    source,
                })?;
            handles.push(h);
        }
        let threads = VcpuThreads { gate, handles };
        threads.wait_parked();
        Ok(threads)
    }

    fn wait_parked(&self) {
        let n = self.handles.len();
        let mut st = self.gate.lock();
        while st.parked < n && !self.handles.iter().any(|h| h.is_finished()) {
            // A timeout so a thread that died (panicked) without parking is noticed.
            st = self
                .gate
                .cv
                .wait_timeout(st, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets every vCPU run.
    pub(super) fn resume(&self, control: &VmControl) {
        control.clear_stop();
        let mut st = self.gate.lock();
        st.generation += 1;
        drop(st);
        self.gate.cv.notify_all();
    }

    /// Stops every vCPU and returns once all are parked (no guest code runs after this).
    pub(super) fn pause(&self, control: &VmControl) {
        control.set_stop();
        for h in &self.handles {
            if !h.is_finished()
                && let Err(e) = h.kill(SIGRTMIN())
            {
                log::warn!("kicking vCPU thread: {e}");
            }
        }
        self.wait_parked();
    }

    /// Stops and joins every thread.
    pub(super) fn exit(self, control: &VmControl) {
        self.pause(control);
        self.gate.lock().exit = true;
        self.gate.cv.notify_all();
        for h in self.handles {
            if h.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }
}

fn thread_loop(gate: &Gate, vcpu: &Mutex<Vcpu>, shared: &VcpuShared) {
    let mut seen = 0;
    loop {
        {
            let mut st = gate.lock();
            st.parked += 1;
            gate.cv.notify_all();
            while !st.exit && st.generation == seen {
                st = gate.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.parked -= 1;
            if st.exit {
                return;
            }
            seen = st.generation;
        }
        vcpu.lock().unwrap_or_else(|e| e.into_inner()).run(shared);
    }
}

/// Turns a panicking vCPU thread into a fatal request, so the main thread does not wait forever.
struct PanicReporter<'a>(&'a VmControl);

impl Drop for PanicReporter<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.request(VmRequest::fatal(VcpuFault::Panicked));
        }
    }
}

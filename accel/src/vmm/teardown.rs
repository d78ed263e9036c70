//! Deferred VM teardown: keep the kernel's VM destruction off the exit path.
//!
//! Destroying a KVM VM (the last reference to its fd going away) is slow on some hosts: 12-30 ms
//! on this project's `kvm_pvm` host, paid synchronously by whoever drops the last reference,
//! i.e. by accel's exit, before its parent sees it exit. Registering the VM fd in an io_uring
//! fixed-file table gives the ring a reference; when the process exits, the ring is torn down by
//! the kernel's io_uring exit work on a kworker, so the VM is destroyed there, after accel has
//! already been reaped. All resources are still released; only the waiting moves. (QEMU gets
//! the same effect from the io_uring instance its main loop holds.)
//!
//! If io_uring is unavailable (old kernel, `kernel.io_uring_disabled`, seccomp), nothing
//! changes: teardown is synchronous as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// `IORING_REGISTER_FILES` from <linux/io_uring.h>.
const IORING_REGISTER_FILES: libc::c_uint = 2;

/// `struct io_uring_params` is 120 bytes; all-zero asks for defaults.
#[repr(C)]
struct IoUringParams([u32; 30]);

/// Rings kept open until the process exits (one per VM ever created by this process).
static RINGS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Gives the kernel's io_uring exit work a reference to `vm_fd`, so the VM is destroyed
/// asynchronously after the process exits. Best effort: failures are logged at debug level.
pub fn defer_release(vm_fd: &impl AsRawFd) {
    match ring_holding(vm_fd.as_raw_fd()) {
        Ok(ring) => RINGS.lock().unwrap_or_else(|e| e.into_inner()).push(ring),
        Err(e) => {
            log::debug!("deferred VM teardown unavailable (io_uring: {e}); exit waits for it")
        }
    }
}

fn ring_holding(fd: RawFd) -> std::io::Result<OwnedFd> {
    let mut params = IoUringParams([0; 30]);
    // SAFETY: io_uring_setup reads and writes exactly one io_uring_params, which `params` is
    // (120 bytes, zeroed as the ABI requires); it returns a new fd or -1.
    let ring = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            &mut params as *mut IoUringParams,
        )
    };
    if ring < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ring` is a freshly created fd that nothing else owns.
    let ring = unsafe { OwnedFd::from_raw_fd(ring as RawFd) };
    let files: [RawFd; 1] = [fd];
    // SAFETY: IORING_REGISTER_FILES reads `nr_args` (1) fds from the array we pass, which lives
    // across the call; the kernel takes its own reference to each file.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_FILES,
            files.as_ptr(),
            1 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_file_alive_after_its_fd_is_closed() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let ring = match ring_holding(w.as_raw_fd()) {
            Ok(ring) => ring,
            // io_uring disabled on this host: the fallback path is what runs.
            Err(e) => return eprintln!("io_uring unavailable: {e}"),
        };
        drop(w);
        // The ring still holds the write end, so the read end sees no EOF yet.
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&r),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap(),
            0
        );
        drop(ring);
        // Closing the ring drops its reference (asynchronously): EOF arrives.
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
        assert_eq!(n, 1);
    }
}

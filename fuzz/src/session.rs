//! One vhost-user connection per input, served by `vu_daemon::serve_stream` (what the backend
//! programs run per frontend: a fresh backend, `VhostUserDaemon`, its worker threads), with
//! forged messages and file descriptors.
//!
//! Input: `mem_len u16, memory[mem_len]`, then chunks `h u8, len u16, bytes[len]` to the end:
//! - `memory`: contents of the memfd ([`MEM_SIZE`] bytes) offered as guest RAM;
//! - each chunk is one `sendmsg` of `bytes` carrying `h & 3` fds: for fd `i`, bit `2 + i` of
//!   `h` picks a fresh eventfd (1) or the memfd (0). Message boundaries are the fuzzer's
//!   business: chunks may split or join messages.
//!
//! The frontend end is shut down for writing after the last chunk (the backend sees
//! end-of-file) and drained by a thread, so the backend's replies never block it.

use std::io::{IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use vmm_sys_util::eventfd::EventFd;
use vu_daemon::VhostUserDevice;

use crate::Reader;

/// Size of the memfd a forged memory table can map.
pub const MEM_SIZE: usize = 0x10000;
/// vhost-user's limit on fds per message.
const MAX_FDS: u8 = 3;

enum Fd {
    Mem,
    Event(EventFd),
}

/// Serves one connection whose frontend sends what `data` says; returns when the backend
/// closed it (end-of-file or a protocol error).
pub fn run<D: VhostUserDevice>(device: &D, data: &[u8]) {
    crate::hang_watch();
    let mut r = Reader::new(data);
    let mem_len = usize::from(r.u16());
    let memory = r.bytes(mem_len.min(MEM_SIZE));
    let memfd: OwnedFd = memfd_create("fuzz-guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd");
    let mut file = std::fs::File::from(memfd);
    file.set_len(MEM_SIZE as u64).expect("memfd size");
    file.write_all(memory).expect("memfd contents");

    let mut chunks = Vec::new();
    while !r.is_empty() {
        let h = r.u8();
        let len = usize::from(r.u16());
        let bytes = r.bytes(len);
        let fds: Vec<Fd> = (0..(h & 3).min(MAX_FDS))
            .map(|i| {
                if h & (4 << i) != 0 {
                    Fd::Event(fresh_eventfd())
                } else {
                    Fd::Mem
                }
            })
            .collect();
        chunks.push((bytes, fds));
    }

    let (mut frontend, backend_end) = UnixStream::pair().expect("socketpair");
    std::thread::scope(|s| {
        s.spawn(|| {
            for (bytes, fds) in &chunks {
                let raw: Vec<RawFd> = fds
                    .iter()
                    .map(|f| match f {
                        Fd::Mem => file.as_raw_fd(),
                        Fd::Event(e) => e.as_raw_fd(),
                    })
                    .collect();
                // fds ride on at least one byte; a zero-length chunk carries none.
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() || bytes.is_empty() {
                    &[]
                } else {
                    &cmsg
                };
                let iov = [IoSlice::new(bytes)];
                // The backend may hang up at any point: stop sending then (no SIGPIPE).
                if sendmsg::<()>(
                    frontend.as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .is_err()
                {
                    break;
                }
            }
            let _ = frontend.shutdown(Shutdown::Write);
            // Replies (and any fds in them, which the kernel closes) until the backend closes.
            let mut buf = [0u8; 4096];
            while matches!(frontend.read(&mut buf), Ok(n) if n > 0) {}
        });
        // Ok(Disconnected / Dropped) or an error creating the backend: all fine here.
        let _ = vu_daemon::serve_stream(device, backend_end);
    });
}

/// An eventfd that is already signalled: as a kick fd it makes the worker look at its ring
/// as soon as the queue is enabled.
fn fresh_eventfd() -> EventFd {
    let e = EventFd::new(0).expect("eventfd");
    e.write(1).expect("eventfd write");
    e
}

//! One vhost-user connection per input, served by `vu_daemon::serve_stream` (what the backend
//! programs run per frontend: a fresh backend and `VhostUserDaemon` with its worker threads,
//! requests handled on the calling thread), with forged messages and file descriptors.
//!
//! Input: `mem_len u16, memory[mem_len]`, then chunks `h u8, len u16, bytes[len]` to the end:
//! - `memory`: contents of the memfd ([`MEM_SIZE`] bytes) offered as guest RAM;
//! - each chunk is one `sendmsg` of `bytes` carrying `h & 3` fds: for fd `i`, bit `2 + i` of
//!   `h` picks a fresh eventfd (1) or the memfd (0). Message boundaries are the fuzzer's
//!   business: chunks may split or join messages.
//!
//! Everything is sent before the backend starts, then the frontend end is shut down for
//! writing (the backend sees end-of-file after the last chunk). No thread of ours runs beside
//! the backend: thread creation is most of an input's cost on this kind of host. The
//! backend's end is non-blocking, so a backend whose replies fill the socket buffer (the
//! frontend never reads them) gets `EAGAIN` and ends the connection instead of waiting for
//! ever; inputs are at most 16 KiB, and their replies fit the buffer unless they are almost
//! all reply-producing headers.

use std::io::IoSlice;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

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

/// The memfd offered as guest RAM: one per process, its whole contents rewritten by each
/// input (so no input sees what an earlier one or its backend left there).
fn guest_ram(contents: &[u8]) -> &'static std::fs::File {
    static RAM: OnceLock<std::fs::File> = OnceLock::new();
    let file = RAM.get_or_init(|| {
        let fd: OwnedFd = memfd_create("fuzz-guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let file = std::fs::File::from(fd);
        file.set_len(MEM_SIZE as u64).expect("memfd size");
        file
    });
    let mut image = vec![0u8; MEM_SIZE];
    image[..contents.len()].copy_from_slice(contents);
    file.write_all_at(&image, 0).expect("memfd contents");
    file
}

/// Serves one connection whose frontend sent what `data` says; returns when the backend
/// closed it (end-of-file or a protocol error).
pub fn run<D: VhostUserDevice>(device: &D, data: &[u8]) {
    crate::hang_watch();
    let mut r = Reader::new(data);
    let mem_len = usize::from(r.u16());
    let file = guest_ram(r.bytes(mem_len.min(MEM_SIZE)));

    let (frontend, backend_end) = UnixStream::pair().expect("socketpair");
    backend_end.set_nonblocking(true).expect("non-blocking");
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
        // A full socket or too many fds in flight: the rest of the input is not sent.
        if sendmsg::<()>(
            frontend.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .is_err()
        {
            break;
        }
    }
    let _ = frontend.shutdown(Shutdown::Write);
    // Ok(Disconnected / Dropped) or an error creating the backend: all fine here.
    let _ = vu_daemon::serve_stream(device, backend_end);
    // Dropping `frontend` closes the replies and any fds in them.
}

/// An eventfd that is already signalled: as a kick fd it makes the worker look at its ring
/// as soon as the queue is enabled.
fn fresh_eventfd() -> EventFd {
    let e = EventFd::new(0).expect("eventfd");
    e.write(1).expect("eventfd write");
    e
}

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
//! end-of-file). Cost per input: the whole input is queued on the socket before the backend
//! starts (both ends get a send buffer far larger than any input and its replies can fill, so
//! nothing blocks and no frontend thread is needed); the memfd is made once per process and
//! rewritten per input. Where the large buffers cannot be had (`SO_SNDBUFFORCE` needs
//! CAP_NET_ADMIN), a thread sends and drains as the backend goes, as a frontend would.

use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg, setsockopt, sockopt};
use vmm_sys_util::eventfd::EventFd;
use vu_daemon::VhostUserDevice;

use crate::Reader;

/// Size of the memfd a forged memory table can map.
pub const MEM_SIZE: usize = 0x10000;
/// vhost-user's limit on fds per message.
const MAX_FDS: u8 = 3;
/// Send buffer of each end: an input is at most 16 KiB (fuzz.sh's `-max_len`), so at most
/// ~5,500 chunks and ~1,400 replies, each costing the sender about 1 KiB of buffer.
const SOCKET_BUFFER: usize = 64 << 20;

/// The guest RAM memfd, created once; its contents are rewritten for each input.
fn memfd() -> &'static std::fs::File {
    static FILE: OnceLock<std::fs::File> = OnceLock::new();
    FILE.get_or_init(|| {
        let fd: OwnedFd = memfd_create("fuzz-guest-ram", MFdFlags::MFD_CLOEXEC).expect("memfd");
        std::fs::File::from(fd)
    })
}

/// Serves one connection whose frontend sends what `data` says; returns when the backend
/// closed it (end-of-file or a protocol error).
pub fn run<D: VhostUserDevice>(device: &D, data: &[u8]) {
    crate::hang_watch();
    let mut r = Reader::new(data);
    let mem_len = usize::from(r.u16());
    let memory = r.bytes(mem_len.min(MEM_SIZE));
    // The same guest RAM for every input: the input's bytes, zeros after them (the previous
    // connection's backend may have written anywhere in it).
    static ZEROS: [u8; MEM_SIZE] = [0; MEM_SIZE];
    let file = memfd();
    file.set_len(MEM_SIZE as u64).expect("memfd size");
    file.write_all_at(memory, 0).expect("memfd contents");
    file.write_all_at(&ZEROS[memory.len()..], memory.len() as u64)
        .expect("memfd contents");

    let mut chunks = Vec::new();
    while !r.is_empty() {
        let h = r.u8();
        let len = usize::from(r.u16());
        chunks.push((h, r.bytes(len)));
    }

    let (frontend, backend_end) = UnixStream::pair().expect("socketpair");
    let big = [&frontend, &backend_end]
        .iter()
        .all(|s| setsockopt(s, sockopt::SndBufForce, &SOCKET_BUFFER).is_ok());
    if big {
        send_all(&frontend, file, &chunks);
        let _ = frontend.shutdown(Shutdown::Write);
        // Ok(Disconnected / Dropped) or an error creating the backend: all fine here. The
        // replies stay queued on `frontend` and go with it.
        let _ = vu_daemon::serve_stream(device, backend_end);
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            send_all(&frontend, file, &chunks);
            let _ = frontend.shutdown(Shutdown::Write);
            // Replies (and any fds in them, which the kernel closes) until the backend closes.
            let mut buf = [0u8; 4096];
            while matches!((&frontend).read(&mut buf), Ok(n) if n > 0) {}
        });
        let _ = vu_daemon::serve_stream(device, backend_end);
    });
}

/// Sends each chunk with its fds; stops when the backend hung up.
fn send_all(frontend: &UnixStream, memfd: &std::fs::File, chunks: &[(u8, &[u8])]) {
    for &(h, bytes) in chunks {
        // Each eventfd is closed here once sent: the message in flight holds the file.
        let events: Vec<Option<EventFd>> = (0..(h & 3).min(MAX_FDS))
            .map(|i| (h & (4 << i) != 0).then(fresh_eventfd))
            .collect();
        let raw: Vec<RawFd> = events
            .iter()
            .map(|e| e.as_ref().map_or(memfd.as_raw_fd(), |e| e.as_raw_fd()))
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
}

/// An eventfd that is already signalled: as a kick fd it makes the worker look at its ring
/// as soon as the queue is enabled.
fn fresh_eventfd() -> EventFd {
    let e = EventFd::new(0).expect("eventfd");
    e.write(1).expect("eventfd write");
    e
}

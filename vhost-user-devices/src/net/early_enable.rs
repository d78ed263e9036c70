//! A vhost-user message relay in front of the daemon, for one QEMU quirk.
//!
//! QEMU's virtio-net (7.2 and later) sends `SET_VRING_ENABLE` when the *guest* negotiates
//! features (`peer_attach`), before the frontend ever sends `SET_FEATURES` to the backend,
//! and never sends it again for net devices. The `vhost` crate's backend request handler
//! rejects `SET_VRING_ENABLE` until `VHOST_USER_F_PROTOCOL_FEATURES` has been acked by
//! `SET_FEATURES`, and that error ends the connection.
//!
//! The relay passes every message through unchanged (file descriptors included) except
//! `SET_VRING_ENABLE` before the first `SET_FEATURES`: it answers those itself (an ack when
//! the frontend asked for one), remembers the last state per ring, and replays them to the
//! backend right after `SET_FEATURES`, which is what the frontend meant.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// Header flags: protocol version 1, reply, need-reply.
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest message body accepted from the frontend (the biggest real one is a memory table).
const MAX_BODY: usize = 4096;
/// Most file descriptors one message carries.
const MAX_FDS: usize = 8;

/// One message from the frontend.
struct Message {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.body.len());
        v.extend_from_slice(&self.request.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.body);
        v
    }
}

/// Reads one message (header with its file descriptors, then the body); `None` at EOF.
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; 12];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS just gave this process these descriptors; nothing else
                // owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Ok(None);
    }
    (&*sock).read_exact(&mut hdr[got..])?;
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message {request} with a {size}-byte body"),
        ));
    }
    let mut body = vec![0u8; size];
    (&*sock).read_exact(&mut body)?;
    Ok(Some(Message {
        request,
        flags,
        body,
        fds,
    }))
}

fn write_message(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    (&*sock).write_all(&bytes[sent..])
}

/// Relays frontend → backend messages until the frontend hangs up, applying the early
/// enable fix. Backend → frontend bytes are copied by [`copy_replies`].
pub fn relay_requests(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut features_seen = false;
    let mut early: BTreeMap<u32, u32> = BTreeMap::new();
    while let Some(msg) = read_message(front)? {
        if !features_seen && msg.request == SET_VRING_ENABLE && msg.body.len() == 8 {
            let index = u32::from_le_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
            let num = u32::from_le_bytes([msg.body[4], msg.body[5], msg.body[6], msg.body[7]]);
            log::debug!("early SET_VRING_ENABLE({index}, {num}) held until SET_FEATURES");
            early.insert(index, num);
            if msg.flags & FLAG_NEED_REPLY != 0 {
                let ack = Message {
                    request: SET_VRING_ENABLE,
                    flags: FLAG_VERSION | FLAG_REPLY,
                    body: 0u64.to_le_bytes().to_vec(),
                    fds: Vec::new(),
                };
                write_message(front, &ack.bytes(), &[])?;
            }
            continue;
        }
        write_message(back, &msg.bytes(), &msg.fds)?;
        if msg.request == SET_FEATURES && !features_seen {
            features_seen = true;
            for (index, num) in std::mem::take(&mut early) {
                let mut body = index.to_le_bytes().to_vec();
                body.extend_from_slice(&num.to_le_bytes());
                let replay = Message {
                    request: SET_VRING_ENABLE,
                    flags: FLAG_VERSION,
                    body,
                    fds: Vec::new(),
                };
                write_message(back, &replay.bytes(), &[])?;
            }
        }
    }
    Ok(())
}

/// Copies backend → frontend bytes (replies carry no descriptors: no protocol feature that
/// would make them is offered) until the backend closes.
pub fn copy_replies(back: &UnixStream, front: &UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match (&*back).read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        (&*front).write_all(&buf[..n])?;
    }
}

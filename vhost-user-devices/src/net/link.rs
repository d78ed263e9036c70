//! Where frames go and come from: a [`Link`] is one non-blocking fd per queue pair carrying
//! whole frames, each preceded by a 12-byte `virtio_net_hdr_v1`.
//!
//! - tap mode: the tap's queue fds (IFF_VNET_HDR with TUNSETVNETHDRSZ 12),
//! - peer mode: one end of a `SOCK_SEQPACKET` socketpair per queue pair; the other end belongs
//!   to the peer device, so a frame one side transmits is a frame the other side receives.
//!   Nothing needs privileges; a full socket buffer (the other guest is not receiving) drops
//!   the frame on the sending side, counted as `tx_dropped`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socketpair, sockopt};

use super::tap;

/// Socket buffer of a peer-mode wire: room for a burst of 64 KiB frames.
const PEER_SOCKET_BUFFER: usize = 4 << 20;

/// What kind of link a device has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Tap,
    Peer,
}

/// One device's side of the wire: an fd per queue pair.
#[derive(Debug)]
pub struct Link {
    kind: LinkKind,
    fds: Vec<OwnedFd>,
}

impl Link {
    /// The queue fds of tap `name` (see [`tap::open_tap`]).
    pub fn tap(name: &str, queue_pairs: u16) -> Result<Self, tap::TapError> {
        Ok(Link {
            kind: LinkKind::Tap,
            fds: tap::open_tap(name, queue_pairs)?,
        })
    }

    /// Tap queue fds inherited from the parent (see [`tap::adopt_tap_fds`]).
    pub fn tap_fds(fds: &[std::os::fd::RawFd]) -> Result<Self, tap::TapError> {
        Ok(Link {
            kind: LinkKind::Tap,
            fds: tap::adopt_tap_fds(fds)?,
        })
    }

    /// Two links wired back to back: what one transmits on queue pair `i`, the other receives
    /// on queue pair `i`.
    pub fn peer_pair(queue_pairs: u16) -> io::Result<(Self, Self)> {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..queue_pairs {
            let (x, y) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            )?;
            for s in [&x, &y] {
                setsockopt(s, sockopt::SndBuf, &PEER_SOCKET_BUFFER)?;
                setsockopt(s, sockopt::RcvBuf, &PEER_SOCKET_BUFFER)?;
            }
            a.push(x);
            b.push(y);
        }
        Ok((
            Link {
                kind: LinkKind::Peer,
                fds: a,
            },
            Link {
                kind: LinkKind::Peer,
                fds: b,
            },
        ))
    }

    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// Queue pairs this link has fds for.
    pub fn queue_pairs(&self) -> u16 {
        u16::try_from(self.fds.len()).unwrap_or(u16::MAX)
    }

    /// The fd of queue pair `pair`.
    pub fn fd(&self, pair: u16) -> Option<&OwnedFd> {
        self.fds.get(usize::from(pair))
    }

    /// Applies the guest's receive offloads (tap only; peer links carry no offloads).
    pub fn set_offload(&self, acked_features: u64) -> io::Result<()> {
        if self.kind != LinkKind::Tap {
            return Ok(());
        }
        let flags = tap::offload_flags(acked_features);
        for fd in &self.fds {
            tap::set_offload(fd, flags)?;
        }
        Ok(())
    }
}

/// Reads one frame (header included) into `buf`; `None` when nothing is waiting.
pub fn recv_frame(fd: impl AsFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(&fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes one frame (header included); false when the link is full (the frame is dropped).
pub fn send_frame(fd: impl AsFd, frame: &[u8]) -> io::Result<bool> {
    loop {
        match nix::unistd::write(&fd, frame) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) | Err(Errno::ENOBUFS) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_links_carry_frames_both_ways_and_never_block() {
        let (a, b) = Link::peer_pair(2).unwrap();
        assert_eq!(a.queue_pairs(), 2);
        let mut buf = vec![0u8; 100];
        assert_eq!(recv_frame(b.fd(1).unwrap(), &mut buf).unwrap(), None);
        assert!(send_frame(a.fd(1).unwrap(), b"hello").unwrap());
        assert_eq!(recv_frame(b.fd(1).unwrap(), &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(recv_frame(b.fd(0).unwrap(), &mut buf).unwrap(), None);
        // Fill the wire: the sender sees "full", never blocks.
        let big = vec![0u8; 60000];
        let mut sent = 0;
        while send_frame(a.fd(0).unwrap(), &big).unwrap() {
            sent += 1;
            assert!(sent < 10_000, "wire never filled up");
        }
        assert!(sent > 0);
    }
}

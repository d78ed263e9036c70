//! Tap interfaces (`/dev/net/tun`, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR): one fd per queue pair
//! (IFF_MULTI_QUEUE when there are several), every frame preceded by a 12-byte
//! `virtio_net_hdr_v1`, offloads set with TUNSETOFFLOAD from the guest's acked features.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vu_spec::net::{
    NET_HDR_SIZE, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
};

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union's first 2 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name '{0}' is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error(
        "cannot attach to tap '{name}' (TUNSETIFF): {source}; create it first \
         (ip tuntap add dev {name} mode tap{mq}) or run with CAP_NET_ADMIN"
    )]
    SetIff {
        name: String,
        mq: &'static str,
        source: io::Error,
    },
    #[error("--tap-fd {fd}: {reason}")]
    Fd { fd: RawFd, reason: String },
    #[error("tap '{name}': {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Opens queue fds of tap `name` (created if it does not exist and we may): `queues` of them,
/// non-blocking, with 12-byte virtio-net headers and no offloads yet.
pub fn open_tap(name: &str, queues: u16) -> Result<Vec<OwnedFd>, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::Name(name.into()));
    }
    let multi = queues > 1;
    let first = match open_queue(name, multi) {
        // A persistent tap created with `multi_queue` takes only multi-queue opens.
        Err(TapError::SetIff { source, .. })
            if !multi && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            return Ok(vec![open_queue(name, true)?]);
        }
        r => r?,
    };
    let mut fds = vec![first];
    for _ in 1..queues {
        fds.push(open_queue(name, multi)?);
    }
    Ok(fds)
}

/// Takes over tap queue fds inherited from the parent (`--tap-fd`, as libvirt passes them to
/// QEMU's `-netdev tap,fd=`): each must be an open tap with IFF_VNET_HDR; it is made
/// non-blocking and close-on-exec, with 12-byte headers and no offloads yet.
pub fn adopt_tap_fds(fds: &[RawFd]) -> Result<Vec<OwnedFd>, TapError> {
    let mut out = Vec::new();
    for (i, &fd) in fds.iter().enumerate() {
        let bad = |reason: String| TapError::Fd { fd, reason };
        if fd < 0 || fds[..i].contains(&fd) {
            return Err(bad("not a distinct file descriptor".into()));
        }
        // SAFETY: F_GETFD reads the flags of an fd number, open or not.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(bad(format!("{}", io::Error::last_os_error())));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a struct ifreq into `req`, which has its layout and lives
        // across the call.
        let rc = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(bad(format!(
                "not an attached tap (TUNGETIFF: {})",
                io::Error::last_os_error()
            )));
        }
        let flags = i32::from(req.flags);
        if flags & libc::IFF_TAP == 0 || flags & libc::IFF_VNET_HDR == 0 {
            return Err(bad(
                "not a tap opened with IFF_TAP|IFF_VNET_HDR (vnet_hdr)".into()
            ));
        }
        let name_len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..name_len]).into_owned();
        // SAFETY: the fd was inherited for this device and nothing else in this process owns
        // it (checked distinct above); the OwnedFd closes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl flag updates on the fd just taken over.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        configure(&owned, &name)?;
        out.push(owned);
    }
    Ok(out)
}

fn open_queue(name: &str, multi_queue: bool) -> Result<OwnedFd, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let fd: OwnedFd = file.into();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    req.flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back) a struct ifreq; `req` has its layout and size
    // (40 bytes on x86_64) and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(TapError::SetIff {
            name: name.into(),
            mq: if multi_queue { " multi_queue" } else { "" },
            source: io::Error::last_os_error(),
        });
    }
    configure(&fd, name)?;
    Ok(fd)
}

/// 12-byte virtio-net headers, no offloads until the guest acks some.
fn configure(fd: &OwnedFd, name: &str) -> Result<(), TapError> {
    let hdr = NET_HDR_SIZE as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr as *const _) };
    if rc < 0 {
        return Err(TapError::Ioctl {
            name: name.into(),
            what: "TUNSETVNETHDRSZ",
            source: io::Error::last_os_error(),
        });
    }
    set_offload(fd, 0).map_err(|source| TapError::Ioctl {
        name: name.into(),
        what: "TUNSETOFFLOAD",
        source,
    })
}

/// TUN_F_* flags for what the guest accepted to receive (its GUEST_* features).
pub fn offload_flags(acked: u64) -> libc::c_uint {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let mut f = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        f |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            f |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            f |= libc::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) && f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            f |= libc::TUN_F_TSO_ECN;
        }
        if has(VIRTIO_NET_F_GUEST_UFO) {
            f |= libc::TUN_F_UFO;
        }
    }
    f
}

/// Tells the tap which offloaded (partial-checksum, GSO) frames it may hand us.
pub fn set_offload(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_guest_features() {
        assert_eq!(offload_flags(0), 0);
        let csum = 1u64 << VIRTIO_NET_F_GUEST_CSUM;
        let tso4 = 1u64 << VIRTIO_NET_F_GUEST_TSO4;
        let ecn = 1u64 << VIRTIO_NET_F_GUEST_ECN;
        // TSO without checksum offload is meaningless.
        assert_eq!(offload_flags(tso4), 0);
        assert_eq!(offload_flags(csum), libc::TUN_F_CSUM);
        assert_eq!(
            offload_flags(csum | tso4 | ecn),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN
        );
    }

    #[test]
    fn bad_names_rejected() {
        assert!(matches!(open_tap("", 1), Err(TapError::Name(_))));
        assert!(matches!(
            open_tap("a-very-long-tap-name", 1),
            Err(TapError::Name(_))
        ));
    }
}

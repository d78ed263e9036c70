//! A backend that does not offer REPLY_ACK (older DPDK, SPDK, some libvhost-user builds): the
//! session must neither refuse it nor wait for acknowledgements it never sends, and must put
//! a GET_FEATURES round trip (QEMU's barrier) after the requests whose effect the caller
//! relies on.
//!
//! The backend is scripted on the raw socket (no vhost crate on its side) so that the test
//! sees every message exactly as sent, flags included.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vu_frontend::{FrontendOptions, FrontendSession, VringGeometry};

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const GET_CONFIG: u32 = 24;
const SET_CONFIG: u32 = 25;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// A made-up device feature, to see SET_FEATURES carry it.
const DEVICE_FEATURE: u64 = 1 << 5;
const CONFIG_LEN: usize = 16;

/// One request as the backend received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    request: u32,
    flags: u32,
}

fn config_byte(i: usize) -> u8 {
    0xa0 ^ i as u8
}

fn reply(s: &mut UnixStream, request: u32, body: &[u8]) {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg).expect("reply");
}

/// Serves one connection until the frontend hangs up; replies only to requests that always
/// have a reply, never to NEED_REPLY (REPLY_ACK is not offered).
fn serve(listener: UnixListener, log: Arc<Mutex<Vec<Seen>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        loop {
            let mut hdr = [0u8; 12];
            if s.read_exact(&mut hdr).is_err() {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
            let (request, flags, size) = (word(0), word(4), word(8));
            // Payload (fds sent with it are dropped by the plain read).
            let mut body = vec![0u8; size as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            log.lock().unwrap().push(Seen { request, flags });
            match request {
                GET_FEATURES => {
                    let f = VIRTIO_F_VERSION_1 | F_PROTOCOL_FEATURES | DEVICE_FEATURE;
                    reply(&mut s, request, &f.to_le_bytes());
                }
                GET_PROTOCOL_FEATURES => {
                    let p = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG;
                    reply(&mut s, request, &p.bits().to_le_bytes());
                }
                GET_QUEUE_NUM => reply(&mut s, request, &1u64.to_le_bytes()),
                GET_VRING_BASE => {
                    // vhost_vring_state: index, num (the next avail index).
                    let mut b = body[..4].to_vec();
                    b.extend_from_slice(&7u32.to_le_bytes());
                    reply(&mut s, request, &b);
                }
                GET_CONFIG => {
                    // offset, size, flags, then the bytes; this backend answers from offset 0
                    // whatever was asked, like libvhost-user.
                    let len = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
                    let mut b = body[..12].to_vec();
                    b.extend((0..len).map(config_byte));
                    reply(&mut s, request, &b);
                }
                _ => {}
            }
        }
    })
}

fn memfd_mem(base: u64, size: usize) -> GuestMemoryMmap {
    let fd =
        nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(size as u64).expect("ftruncate");
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(base),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("mmap")
}

/// The request following the first `request` after position `from`.
fn next_after(log: &[Seen], request: u32, from: usize) -> (usize, Option<u32>) {
    let i = from
        + log[from..]
            .iter()
            .position(|m| m.request == request)
            .unwrap_or_else(|| panic!("request {request} never sent: {log:?}"));
    (i, log.get(i + 1).map(|m| m.request))
}

#[test]
fn backend_without_reply_ack_is_served_with_get_features_barriers() {
    let dir = tempfile_dir();
    let path = dir.join("no-ack.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let log = Arc::new(Mutex::new(Vec::new()));
    let backend = serve(listener, log.clone());

    // A frontend that waited for acks this backend never sends would stop here: the
    // watchdog turns that into an error after 5 s instead of a hang.
    let opts = FrontendOptions {
        reply_timeout: Some(Duration::from_secs(5)),
        ..FrontendOptions::default()
    };
    let mut s = FrontendSession::connect_with(&path, Duration::from_secs(5), opts)
        .expect("a backend without REPLY_ACK is accepted");
    assert!(
        !s.protocol_features()
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
    );
    assert_eq!(s.device_features(), VIRTIO_F_VERSION_1 | DEVICE_FEATURE);

    let mem = memfd_mem(0x10_0000, 0x10_0000);
    s.set_features(VIRTIO_F_VERSION_1 | DEVICE_FEATURE)
        .expect("features");
    s.set_mem_table(&mem).expect("memory table");
    let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    let ring = VringGeometry {
        size: 16,
        desc: GuestAddress(0x10_0000),
        avail: GuestAddress(0x10_1000),
        used: GuestAddress(0x10_2000),
    };
    s.setup_vring(0, ring, 0, &call, &kick).expect("vring");
    s.enable_vring(0, true).expect("enable");
    let cfg = s.get_config(0, CONFIG_LEN as u32).expect("config");
    assert_eq!(cfg, (0..CONFIG_LEN).map(config_byte).collect::<Vec<_>>());
    s.set_config(4, &[1, 2]).expect("config write");
    assert_eq!(s.stop_vring(0).expect("stop"), 7);
    s.reset().expect("reset");
    drop(s);
    backend.join().expect("backend thread");

    let log = log.lock().unwrap().clone();
    // Nothing asked for an acknowledgement the backend never offered.
    for m in &log {
        assert_eq!(
            m.flags & FLAG_NEED_REPLY,
            0,
            "NEED_REPLY sent: {m:?} in {log:?}"
        );
    }
    let requests: Vec<u32> = log.iter().map(|m| m.request).collect();
    assert_eq!(
        &requests[..5],
        &[
            3, // SET_OWNER
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ],
        "handshake: {requests:?}"
    );
    // The barrier follows each request whose effect the caller relies on.
    let (i, next) = next_after(&log, SET_MEM_TABLE, 0);
    assert_eq!(
        next,
        Some(GET_FEATURES),
        "after SET_MEM_TABLE: {requests:?}"
    );
    let (j, _) = next_after(&log, SET_VRING_NUM, i);
    assert_eq!(
        &requests[j..j + 6],
        &[
            SET_VRING_NUM,
            SET_VRING_BASE,
            SET_VRING_ADDR,
            SET_VRING_CALL,
            SET_VRING_KICK,
            GET_FEATURES
        ],
        "ring start: {requests:?}"
    );
    let (k, next) = next_after(&log, SET_VRING_ENABLE, j);
    assert_eq!(
        next,
        Some(GET_FEATURES),
        "after SET_VRING_ENABLE: {requests:?}"
    );
    let (_, next) = next_after(&log, SET_CONFIG, k);
    assert_eq!(next, Some(GET_FEATURES), "after SET_CONFIG: {requests:?}");
    assert!(requests.contains(&SET_FEATURES));
    assert!(requests.contains(&GET_VRING_BASE));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vu-frontend-no-ack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

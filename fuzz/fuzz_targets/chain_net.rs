//! Guest rings and memory against vhost-user-net's transmit and receive paths (see
//! `ring.rs`); the input's host bytes are a frame arriving from the link before the kick.
#![no_main]

use std::sync::{Arc, OnceLock};

use vhost_user_devices::net::backend::{NetBackend, Shared};
use vhost_user_devices::net::link::{Link, recv_frame, send_frame};
use vhost_user_devices::net::rxtx::NetStats;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static LINKS: OnceLock<(Arc<Shared>, Link)> = OnceLock::new();
    let (shared, peer) = LINKS.get_or_init(|| {
        let config = accel_fuzz::devices::net_config();
        let (ours, peer) = Link::peer_pair(config.queue_pairs).expect("links");
        let shared = Arc::new(Shared {
            link: ours,
            mac: config.mac,
            queue_size: config.queue_size,
            mtu: 1500,
            stats: NetStats::default(),
        });
        (shared, peer)
    });
    let input = accel_fuzz::ring::RingInput::parse(data);
    let backend = NetBackend::new(shared.clone());
    let (pair, _) = accel_fuzz::ring::thread_queues(&backend, &input);
    let pair = u16::try_from(pair).unwrap_or(0);
    if !input.host.is_empty()
        && let Some(fd) = peer.fd(pair)
    {
        let _ = send_frame(fd, input.host);
    }
    accel_fuzz::ring::run(&backend, &input);
    // Frames either way must not carry over to the next input.
    let mut buf = vec![0u8; 1 << 16];
    for link in [peer, &shared.link] {
        for p in 0..link.queue_pairs() {
            if let Some(fd) = link.fd(p) {
                while let Ok(Some(_)) = recv_frame(fd, &mut buf) {}
            }
        }
    }
});

//! The vsock muxer against a guest that does not take its rx buffers and host clients that
//! never finish: control packets (RST, REQUEST, RESPONSE) are never dropped however many
//! wait, and half-open connections expire.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost_user_devices::vsock::muxer::MAX_PENDING_CONTROL;
use vu_spec::vsock::{VSOCK_OP_REQUEST, VSOCK_OP_RST, VSOCK_OP_RW};
use vu_testkit::driver::vsock::{RX_BUFFERS, VsockDriver};

mod common;
use common::VsockSetup as Setup;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn control_packets_are_never_dropped() {
    let s = Setup::start("nodrop", 1, Duration::from_secs(600));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    // The guest stops taking rx buffers. RW for connections that do not exist: each one is
    // answered with an RST (the first RX_BUFFERS land in the posted buffers, the rest wait).
    let junk = RX_BUFFERS + MAX_PENDING_CONTROL - 40;
    for port in 0..junk as u32 {
        let h = d.header(10_000 + port, 7, VSOCK_OP_RW);
        d.send(h, b"x").unwrap();
    }
    // Then many host clients ask for guest ports: one REQUEST each.
    let hosts = 700usize;
    let mut clients = Vec::with_capacity(hosts);
    for port in 0..hosts as u32 {
        let mut c = UnixStream::connect(&s.uds).unwrap();
        c.write_all(format!("CONNECT {}\n", 20_000 + port).as_bytes())
            .unwrap();
        clients.push(c);
    }
    // Now the guest reads everything: every RST and every REQUEST arrives.
    let mut rsts = HashSet::new();
    let mut requests = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (rsts.len() < junk || requests.len() < hosts) && Instant::now() < deadline {
        let Some((h, _)) = d.try_recv(Duration::from_secs(3)).unwrap() else {
            break;
        };
        match h.op {
            VSOCK_OP_RST => assert!(rsts.insert(h.dst_port), "RST twice"),
            VSOCK_OP_REQUEST => assert!(requests.insert(h.dst_port), "REQUEST twice"),
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(
        (rsts.len(), requests.len()),
        (junk, hosts),
        "control packets lost"
    );
}

#[test]
fn host_client_without_connect_line_expires() {
    let s = Setup::start("silent", 1, Duration::from_secs(1));
    let _d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONN").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the muxer must close a client that never finishes its CONNECT line");
    assert!(rest.is_empty());
    assert!(t0.elapsed() < TIMEOUT);
}

#[test]
fn host_connection_the_guest_never_answers_expires() {
    let s = Setup::start("noanswer", 1, Duration::from_secs(1));
    let mut d = VsockDriver::connect(&s.sock, TIMEOUT).unwrap();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 80\n").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (h, _) = d.recv(TIMEOUT).unwrap();
    assert_eq!(({ h.op }, { h.dst_port }), (VSOCK_OP_REQUEST, 80));
    let local = h.src_port;
    // No RESPONSE: the host client is closed and the guest told to forget the connection.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the muxer must close a connection the guest never answered");
    assert!(rest.is_empty());
    let (h, _) = d.recv(TIMEOUT).unwrap();
    assert_eq!(
        ({ h.op }, { h.src_port }, { h.dst_port }),
        (VSOCK_OP_RST, local, 80)
    );
}

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempdir::TempDir;

use super::*;

const THR: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const LSR: u64 = 5;
const LSR_DR: u8 = 0x01;
const IER_RDA: u8 = 0x01;

fn irq() -> (EventFd, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let copy = evt.try_clone().unwrap();
    (evt, copy)
}

fn tmp() -> TempDir {
    TempDir::new_with_prefix("/tmp/accel-serial-").unwrap()
}

fn reg(dev: &mut SerialDevice, offset: u64) -> u8 {
    let mut b = [0u8];
    dev.read(offset, &mut b);
    b[0]
}

fn send_str(dev: &mut SerialDevice, s: &[u8]) {
    for &b in s {
        dev.write(THR, &[b]);
    }
}

/// Reads `n` received bytes the way a polling guest driver does (LSR.DR, then RBR).
fn guest_receive(dev: &mut SerialDevice, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "received only {got:?}");
        if reg(dev, LSR) & LSR_DR != 0 {
            got.push(reg(dev, THR));
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

fn connect_when_listening(path: PathBuf) -> thread::JoinHandle<UnixStream> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => return s,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn output_to_file() {
    let dir = tmp();
    let path = dir.as_path().join("serial.log");
    std::fs::write(&path, b"old contents that must go").unwrap();
    let (evt, _) = irq();
    let mut dev = SerialDevice::new(&SerialConfig::File(path.clone()), evt).unwrap();
    send_str(&mut dev, b"hello, serial\r\n");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello, serial\r\n");
}

#[test]
fn unopenable_file_error_names_the_path() {
    let path = PathBuf::from("/nonexistent-dir-accel/serial.log");
    let (evt, _) = irq();
    let err = SerialDevice::new(&SerialConfig::File(path), evt)
        .err()
        .unwrap();
    assert!(matches!(err, SerialError::OpenFile { .. }));
    assert!(
        err.to_string()
            .contains("/nonexistent-dir-accel/serial.log"),
        "{err}"
    );
}

#[test]
fn null_discards_and_thr_interrupt_fires() {
    let (evt, irq_seen) = irq();
    let mut dev = SerialDevice::new(&SerialConfig::Null, evt).unwrap();
    dev.write(IER, &[0x02]); // THR empty interrupt: raised at once (THR is empty)
    assert!(irq_seen.read().unwrap() >= 1);
    assert_eq!(reg(&mut dev, IIR) & 0x0f, 0x02, "THR empty pending");
    assert_eq!(
        reg(&mut dev, IIR) & 0x0f,
        0x01,
        "reading IIR acknowledged it"
    );
    send_str(&mut dev, b"x");
    assert!(
        irq_seen.read().unwrap() >= 1,
        "raised again after a byte went out"
    );
}

#[test]
fn unix_server_wait_output_and_input() {
    let dir = tmp();
    let path = dir.as_path().join("ttyS0.sock");
    let client = connect_when_listening(path.clone());
    let (evt, irq_seen) = irq();
    let cfg = SerialConfig::UnixServer {
        path: path.clone(),
        wait: true,
    };
    let mut dev = SerialDevice::new(&cfg, evt).unwrap();
    let mut client = client.join().unwrap();

    // Guest -> client: the first bytes already reach the client accepted by `wait`.
    send_str(&mut dev, b"boot log\n");
    assert_eq!(read_exact_timeout(&mut client, 9), b"boot log\n");

    // Client -> guest, with the receive interrupt.
    dev.write(IER, &[IER_RDA]);
    let _ = irq_seen.read();
    client.write_all(b"ls\r").unwrap();
    assert_eq!(guest_receive(&mut dev, 3), b"ls\r");
    assert!(irq_seen.read().unwrap() >= 1);

    drop(dev);
    assert!(!path.exists(), "socket file removed on drop");
    // The server closed our connection.
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn unix_server_nowait_drops_output_without_client_and_serves_reconnects() {
    let dir = tmp();
    let path = dir.as_path().join("ttyS0.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (evt, _) = irq();
    let cfg = SerialConfig::UnixServer {
        path: path.clone(),
        wait: false,
    };
    let mut dev = SerialDevice::new(&cfg, evt).unwrap();
    // No client: output is dropped, promptly.
    let start = Instant::now();
    send_str(&mut dev, &[b'.'; 4096]);
    assert!(start.elapsed() < Duration::from_secs(2));

    for round in 0..2u8 {
        let mut client = UnixStream::connect(&path).unwrap();
        // Input proves the server attached this client; then output reaches it.
        client.write_all(&[b'a' + round]).unwrap();
        assert_eq!(guest_receive(&mut dev, 1), [b'a' + round]);
        send_str(&mut dev, b"ok");
        assert_eq!(read_exact_timeout(&mut client, 2), b"ok");
        // Nothing from before the connection was buffered for it.
        client.set_nonblocking(true).unwrap();
        let mut extra = [0u8; 1];
        assert!(client.read(&mut extra).is_err());
    }
}

#[test]
fn input_larger_than_the_fifo_arrives_complete_and_in_order() {
    let dir = tmp();
    let path = dir.as_path().join("ttyS0.sock");
    let client = connect_when_listening(path.clone());
    let (evt, _) = irq();
    let cfg = SerialConfig::UnixServer { path, wait: true };
    let mut dev = SerialDevice::new(&cfg, evt).unwrap();
    let mut client = client.join().unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).unwrap();
    // Let the FIFO fill up before the guest starts reading.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(guest_receive(&mut dev, data.len()), data);
}

#[test]
fn a_client_that_never_reads_does_not_block_the_vcpu() {
    let dir = tmp();
    let path = dir.as_path().join("ttyS0.sock");
    let client = connect_when_listening(path.clone());
    let (evt, _) = irq();
    let cfg = SerialConfig::UnixServer { path, wait: true };
    let mut dev = SerialDevice::new(&cfg, evt).unwrap();
    let mut client = client.join().unwrap();
    let start = Instant::now();
    // Far more than a unix socket buffers.
    for _ in 0..(1 << 20) / 64 {
        send_str(&mut dev, &[b'z'; 64]);
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    // The client is still served once it reads again.
    client.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while client.read(&mut buf).is_ok() {}
    client.set_nonblocking(false).unwrap();
    send_str(&mut dev, b"\nEND");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tail = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while !tail.ends_with(b"\nEND") {
        assert!(Instant::now() < deadline);
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
        tail.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn socket_path_that_is_not_a_socket_is_refused() {
    let dir = tmp();
    let path = dir.as_path().join("precious.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let (evt, _) = irq();
    let cfg = SerialConfig::UnixServer {
        path: path.clone(),
        wait: false,
    };
    let err = SerialDevice::new(&cfg, evt).err().unwrap();
    assert!(
        matches!(
            err,
            SerialError::Bind {
                source: vu_spec::unix::BindError::NotASocket,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

/// `-chardev pipe,path=P` (QEMU's pipe backend): with named pipes P.in and P.out, guest output
/// goes to P.out and what a host process writes into P.in reaches the guest.
#[test]
fn pipe_backend_uses_path_in_and_path_out() {
    let dir = tmp();
    let base = dir.as_path().join("vm");
    for suffix in [".in", ".out"] {
        let p = format!("{}{suffix}", base.display());
        nix::unistd::mkfifo(p.as_str(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let (evt, _copy) = irq();
    let mut dev = SerialDevice::new(&SerialConfig::Pipe(base.clone()), evt).unwrap();
    // A host reader of P.out, opened read-write so it never waits for the writer.
    let mut out = std::fs::File::options()
        .read(true)
        .write(true)
        .open(format!("{}.out", base.display()))
        .unwrap();
    send_str(&mut dev, b"to-host");
    let mut got = [0u8; 7];
    out.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-host");
    let mut input = std::fs::File::options()
        .write(true)
        .open(format!("{}.in", base.display()))
        .unwrap();
    input.write_all(b"to-guest").unwrap();
    assert_eq!(guest_receive(&mut dev, 8), b"to-guest");
}

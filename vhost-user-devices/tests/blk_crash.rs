//! Crash recovery of `vhost-user-blk` with in-flight tracking (INFLIGHT_SHMFD), at the protocol
//! level: the userspace driver keeps many requests in flight (large ones on the backend's I/O
//! threads, so they complete out of order), the backend process is killed with SIGKILL right
//! after the first completions, restarted, and the driver reconnects. Every request must
//! complete exactly once (no used entry for a head that is not in flight), with status OK, and
//! the image must hold exactly what was written; reads return the right bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::Bytes;
use vu_spec::blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vu_testkit::driver::DriverOptions;
use vu_testkit::driver::blk::{BlkDriver, BlkSlot};

mod common;
use common::{KillOnDrop, TestDir, wait_for};

const EXE: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const TIMEOUT: Duration = Duration::from_secs(30);
/// Image: 64 MiB; the first 8 MiB are pre-filled and only read, writes go above.
const IMAGE: u64 = 64 << 20;
const READ_AREA: u64 = 8 << 20;
const BIG: u32 = 1 << 20;
const SMALL: u32 = 4096;
/// Requests per round: alternating big and small, writes and reads.
const PER_ROUND: usize = 24;
const ROUNDS: usize = 6;

fn byte_at(round: usize, req: usize, off: u64) -> u8 {
    ((off / 512) as u8) ^ (round as u8).wrapping_mul(37) ^ (req as u8).wrapping_mul(11) ^ 0x5a
}

fn read_area_byte(off: u64) -> u8 {
    (off % 253) as u8 ^ (off >> 16) as u8
}

/// Starts the backend; it is SIGKILLed and reaped on drop (also when a test fails).
fn spawn(sock: &Path, image: &Path, log: &Path) -> KillOnDrop {
    let _ = std::fs::remove_file(sock);
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(EXE)
        .args(["--socket-path".as_ref(), sock.as_os_str()])
        .args(["--image".as_ref(), image.as_os_str()])
        .args(["--direct-io", "--num-queues", "1"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn vhost-user-blk");
    wait_for(sock);
    KillOnDrop(child)
}

struct Req {
    slot: BlkSlot,
    write: bool,
    len: u32,
    /// Byte offset in the image.
    offset: u64,
    done: bool,
}

#[test]
fn sigkill_with_requests_in_flight_completes_each_exactly_once() {
    let dir = TestDir::new("vub-crash-inflight");
    let (sock, image, log) = (dir.join("s"), dir.join("img"), dir.join("log"));
    let mut content = vec![0u8; IMAGE as usize];
    for (i, b) in content[..READ_AREA as usize].iter_mut().enumerate() {
        *b = read_area_byte(i as u64);
    }
    std::fs::write(&image, &content).expect("image");

    let mut backend = spawn(&sock, &image, &log);
    let opts = DriverOptions {
        queue_size: 128,
        mem_size: 128 << 20,
        ..Default::default()
    };
    let mut blk = BlkDriver::connect(&sock, TIMEOUT, opts).expect("connect");
    assert!(
        blk.driver().session().inflight_buffer().is_some(),
        "the backend offers INFLIGHT_SHMFD and the session took a buffer"
    );

    let mut kills = 0;
    let mut write_base = READ_AREA;
    for round in 0..ROUNDS {
        let mut reqs = Vec::new();
        for i in 0..PER_ROUND {
            let len = if i % 2 == 0 { BIG } else { SMALL };
            let write = i % 3 != 2;
            let slot = blk.alloc_slot(len).expect("slot");
            let offset = if write {
                let o = write_base;
                write_base += u64::from(len);
                let data: Vec<u8> = (0..u64::from(len))
                    .map(|b| byte_at(round, i, o + b))
                    .collect();
                blk.driver()
                    .memory()
                    .write_slice(&data, slot.data_addr())
                    .expect("fill");
                o
            } else {
                (i as u64 * 65536) % (READ_AREA - u64::from(BIG))
            };
            let t = if write {
                VIRTIO_BLK_T_OUT
            } else {
                VIRTIO_BLK_T_IN
            };
            blk.submit_slot(0, &slot, t, offset / 512, len, false, i as u64)
                .expect("submit");
            reqs.push(Req {
                slot,
                write,
                len,
                offset,
                done: false,
            });
        }
        blk.driver().kick(0).expect("kick");

        let mut done = 0;
        let collect = |blk: &mut BlkDriver, reqs: &mut Vec<Req>, done: &mut usize| {
            while let Some(c) = blk.driver().poll_used(0).expect("poll") {
                let r = &mut reqs[c.token as usize];
                assert!(!r.done, "request {} completed twice", c.token);
                r.done = true;
                *done += 1;
            }
        };
        // Kill as soon as the first requests complete: the others are queued or running on
        // the I/O threads.
        let deadline = Instant::now() + TIMEOUT;
        while done == 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing completed"
            );
            blk.driver().wait_any(TIMEOUT).expect("wait");
            collect(&mut blk, &mut reqs, &mut done);
        }
        drop(backend);
        kills += 1;
        collect(&mut blk, &mut reqs, &mut done);
        backend = spawn(&sock, &image, &log);
        blk.driver().reconnect(TIMEOUT).expect("reconnect");
        if round % 3 == 2 {
            // Killed again while recovering (resubmitted requests running).
            drop(backend);
            kills += 1;
            backend = spawn(&sock, &image, &log);
            blk.driver()
                .reconnect(TIMEOUT)
                .expect("reconnect after a kill during recovery");
        }
        let deadline = Instant::now() + TIMEOUT;
        while done < PER_ROUND {
            assert!(
                Instant::now() < deadline,
                "round {round}: {done} of {PER_ROUND} requests completed"
            );
            blk.driver().wait_any(Duration::from_secs(1)).expect("wait");
            collect(&mut blk, &mut reqs, &mut done);
        }
        for (i, r) in reqs.iter().enumerate() {
            let status = blk.slot_status(&r.slot).expect("status");
            assert_eq!(status, VIRTIO_BLK_S_OK as u8, "round {round} request {i}");
            if !r.write {
                let got = blk
                    .driver()
                    .read(r.slot.data_addr(), r.len as usize)
                    .expect("read back");
                let want: Vec<u8> = (0..u64::from(r.len))
                    .map(|b| read_area_byte(r.offset + b))
                    .collect();
                assert!(got == want, "round {round}: read {i} returned wrong bytes");
            }
        }
        for r in reqs {
            blk.free_slot(r.slot);
        }
    }
    let stats = blk.driver().queue(0).expect("queue").stats();
    assert_eq!(stats.spurious, 0, "used entries for heads not in flight");

    // The image holds every write exactly.
    let img = File::open(&image).expect("open image");
    let mut offset = READ_AREA;
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            if i % 3 == 2 {
                continue;
            }
            let len = if i % 2 == 0 { BIG } else { SMALL };
            let mut got = vec![0u8; len as usize];
            img.read_exact_at(&mut got, offset).expect("read image");
            let bad =
                (0..u64::from(len)).find(|&b| got[b as usize] != byte_at(round, i, offset + b));
            assert_eq!(bad, None, "round {round} write {i}: image differs");
            offset += u64::from(len);
        }
    }
    drop(backend);

    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let resubmitted: usize = log
        .lines()
        .filter_map(|l| l.split("resubmitting ").nth(1))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    eprintln!("{kills} kills, {resubmitted} requests resubmitted");
    assert!(
        resubmitted > 0,
        "no restart found a request in flight ({kills} kills): the test did not test anything"
    );
    assert!(!log.contains("panicked"), "backend log:\n{log}");
}

/// A hostile frontend's in-flight buffers: wrong size, too many queues, an unsealed file are
/// refused (vhost-user-backend then ends that connection); a well-formed buffer full of
/// garbage (bogus version, heads, flags, counters) is read at the next ring start. The backend
/// neither panics nor stops serving: the next frontend reads and writes normally.
#[test]
fn hostile_inflight_buffers_leave_the_backend_serving() {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::vhost_user::message::VhostUserInflight;

    let dir = TestDir::new("vub-crash-hostile");
    let (sock, image, log) = (dir.join("s"), dir.join("img"), dir.join("log"));
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let mut backend = spawn(&sock, &image, &log);
    let opts = DriverOptions {
        queue_size: 16,
        ..Default::default()
    };
    let connect = || {
        let mut blk = BlkDriver::connect(&sock, TIMEOUT, opts.clone()).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("connect: {e}\n{log}")
        });
        let good = blk
            .driver()
            .session()
            .inflight_buffer()
            .expect("in-flight buffer");
        let got = blk
            .driver()
            .session()
            .raw_frontend()
            .get_inflight_fd(&good)
            .expect("GET_INFLIGHT_FD");
        (blk, got)
    };

    let (mut blk, (desc, _)) = connect();
    let plain = tempfile_of(desc.mmap_size, &dir);
    let too_big = VhostUserInflight {
        mmap_size: desc.mmap_size + 4096,
        ..desc
    };
    let many = VhostUserInflight {
        num_queues: 9,
        mmap_size: desc.mmap_size * 9,
        ..desc
    };
    let bad = [(too_big, None), (many, None), (desc, Some(&plain))];
    for (i, (bad, file)) in bad.into_iter().enumerate() {
        let (_, sealed) = connect_file(&mut blk, &desc);
        let fd = file.map_or(sealed.as_raw_fd(), |f| f.as_raw_fd());
        let fe = blk.driver().session().raw_frontend();
        assert!(
            fe.set_inflight_fd(&bad, fd).is_err(),
            "bad buffer {i} accepted"
        );
        drop(blk);
        blk = connect().0;
    }

    // Garbage in a well-formed buffer, read by two ring restarts (unknown version, then
    // version 1 with every flag, head and counter bogus).
    let (d, file) = connect_file(&mut blk, &desc);
    let mut garbage: Vec<u8> = (0..d.mmap_size).map(|i| (i * 7 + 1) as u8).collect();
    file.write_all_at(&garbage, 0).expect("scribble");
    let fe = blk.driver().session().raw_frontend();
    fe.set_inflight_fd(&d, file.as_raw_fd())
        .expect("a well-formed buffer is accepted");
    for version in [0x0909u16, 1] {
        garbage[8..10].copy_from_slice(&version.to_le_bytes());
        file.write_all_at(&garbage, 0).expect("scribble");
        let s = blk.driver().session();
        if s.stop_vring(0).is_err() || s.resume_vring(0).is_err() {
            break;
        }
        let _ = blk.driver().kick(0);
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(blk);

    let mut blk = connect().0;
    blk.write(0, 8, &[0xabu8; 4096]).expect("write");
    assert_eq!(blk.read(0, 8, 4096).expect("read"), vec![0xabu8; 4096]);
    assert!(
        backend.0.try_wait().expect("try_wait").is_none(),
        "backend died\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(backend);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(log.matches("SET_INFLIGHT_FD refused").count(), 3, "{log}");
}

/// A fresh sealed buffer from the backend (GET_INFLIGHT_FD as `desc` describes).
fn connect_file(
    blk: &mut BlkDriver,
    desc: &vhost::vhost_user::message::VhostUserInflight,
) -> (vhost::vhost_user::message::VhostUserInflight, File) {
    use vhost::vhost_user::VhostUserFrontend;
    blk.driver()
        .session()
        .raw_frontend()
        .get_inflight_fd(desc)
        .expect("GET_INFLIGHT_FD")
}

/// An unsealed file of `len` bytes.
fn tempfile_of(len: u64, dir: &TestDir) -> File {
    let f = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("plain"))
        .expect("plain file");
    f.set_len(len).expect("size");
    f
}

/// RESET_DEVICE (negotiated by the session, sent by `reset`): the backend forgets its rings'
/// state (the next avail index reads 0 again) and the session its in-flight buffer; the
/// connection stays usable.
#[test]
fn reset_device_forgets_ring_and_inflight_state() {
    use vhost::VhostBackend;
    use vhost::vhost_user::VhostUserProtocolFeatures;

    let dir = TestDir::new("vub-crash-reset");
    let (sock, image, log) = (dir.join("s"), dir.join("img"), dir.join("log"));
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let _backend = spawn(&sock, &image, &log);
    let mut blk = BlkDriver::connect(&sock, TIMEOUT, DriverOptions::default()).expect("connect");
    for i in 0..3u64 {
        blk.write(0, i * 8, &[i as u8; 4096]).expect("write");
    }
    let s = blk.driver().session();
    assert!(
        s.protocol_features()
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
    );
    assert_eq!(s.stop_vring(0).expect("GET_VRING_BASE"), 3);
    s.resume_vring(0).expect("resume");
    s.reset().expect("reset (RESET_DEVICE)");
    assert!(s.inflight_buffer().is_none());
    let base = s.raw_frontend().get_vring_base(0).expect("GET_VRING_BASE");
    assert_eq!(base, 0, "ring state survived RESET_DEVICE");
    assert!(s.check_alive());
}

//! Crash recovery of `vhost-user-blk` with in-flight tracking (INFLIGHT_SHMFD), at the protocol
//! level: the userspace driver keeps many requests in flight (large ones on the backend's I/O
//! threads, so they complete out of order), the backend process is killed with SIGKILL right
//! after the first completions, restarted, and the driver reconnects. Every request must
//! complete exactly once (no used entry for a head that is not in flight), with status OK, and
//! the image must hold exactly what was written; reads return the right bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::devices::blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use protocol::driver::DriverOptions;
use protocol::driver::blk::{BlkDriver, BlkSlot};
use vm_memory::Bytes;

mod common;
use common::{Scratch, wait_for};

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

fn spawn(sock: &Path, image: &Path, log: &Path) -> Child {
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
    child
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
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
    let dir = Scratch::new("vub-crash", "inflight");
    let (sock, image, log) = (dir.path("s"), dir.path("img"), dir.path("log"));
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
        kill9(&mut backend);
        kills += 1;
        collect(&mut blk, &mut reqs, &mut done);
        backend = spawn(&sock, &image, &log);
        blk.driver().reconnect(TIMEOUT).expect("reconnect");
        if round % 3 == 2 {
            // Killed again while recovering (resubmitted requests running).
            kill9(&mut backend);
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
    kill9(&mut backend);

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

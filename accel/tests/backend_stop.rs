//! accel's virtio-pci function against a real `vhost-user-blk` process that is stopped
//! (SIGSTOP), then killed while stopped and replaced, without booting a guest: the test makes
//! the accesses a vCPU would (BAR 0 reads and writes under the device lock).
//!
//! Builds vhost-user-blk first if it is out of date (see `support::workspace_bin`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::cli::{CliAction, parse};
use accel::devices::bus::Bus;
use accel::pci::PciDevice;
use accel::pci::interrupts::{InterruptError, InterruptRouter};
use accel::pci::msix::MsiMessage;
use accel::virtio::setup::setup_with_router;
use accel::vmm::memory::GuestRam;
use nix::sys::signal::Signal;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

/// Interrupt plumbing that goes nowhere (no KVM here).
struct NoRouter;

impl InterruptRouter for NoRouter {
    fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        Ok(24)
    }
    fn set_msi_route(&self, _gsi: u32, _msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), InterruptError> {
        Ok(())
    }
    fn register_ioevent(&self, _fd: &EventFd, _addr: u64) -> Result<(), InterruptError> {
        Ok(())
    }
    fn unregister_ioevent(&self, _fd: &EventFd, _addr: u64) -> Result<(), InterruptError> {
        Ok(())
    }
}

// The tests' shared helpers, by path: a dev-dependency on vu-testkit would bring the bench
// client's clap and serde_json into `cargo tree -p accel`.
#[path = "../../protocol/testkit/src/support.rs"]
#[allow(dead_code)]
mod support;
use support::{KillOnDrop, TestDir, expect_path, workspace_bin};

/// vhost-user-blk, built first (never a stale binary).
fn blk_binary() -> PathBuf {
    workspace_bin(&["vhost-user-devices"], "vhost-user-blk")
}

fn start_blk(sock: &Path, image: &Path, log: &Path) -> KillOnDrop {
    let _ = std::fs::remove_file(sock);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(blk_binary())
        .arg("--socket-path")
        .arg(sock)
        .arg("--image")
        .arg(image)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn vhost-user-blk");
    let child = KillOnDrop(child);
    expect_path(sock, Duration::from_secs(10));
    child
}

/// SIGSTOP, then waits until every thread of the process is stopped.
fn stop(p: &KillOnDrop) {
    let pid = p.pid();
    p.signal(Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let all_stopped = tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "backend did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for_log(log: &Path, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const HDR: u64 = 0x20_0000;
const DATA: u64 = 0x20_1000;
const STATUS: u64 = 0x20_2000;

/// One blk device (`reconnect=1`) over a real backend process, driven as a vCPU would.
struct Rig {
    _dir: TestDir,
    sock: PathBuf,
    image: PathBuf,
    log: PathBuf,
    ram: GuestRam,
    /// Keeps the monitor running.
    _setup: accel::virtio::PciSetup,
    dev: Arc<std::sync::Mutex<accel::virtio::device::VirtioPciDevice>>,
    ctl: accel::virtio::control::ControlHandle,
}

impl Rig {
    fn new(tag: &str) -> (Rig, KillOnDrop) {
        let dir = TestDir::new(tag);
        let (sock, image, log) = (
            dir.join("blk.sock"),
            dir.join("disk.img"),
            dir.join("blk.log"),
        );
        std::fs::write(&image, vec![0x5au8; 1 << 20]).unwrap();
        let backend = start_blk(&sock, &image, &log);
        let args: Vec<String> = [
            "-m",
            "64",
            "-object",
            "memory-backend-memfd,id=mem,size=64M,share=on",
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=c0,path={},reconnect=1", sock.display()),
            "-device",
            "vhost-user-blk-pci,chardev=c0,num-queues=1",
            "-kernel",
            "/dev/null",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Ok(CliAction::Run(config)) = parse(&args) else {
            panic!("command line");
        };
        let ram = GuestRam::new(&config.memory).expect("guest RAM");
        let memory = (*ram.memory.memory()).clone();
        let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let setup = setup_with_router(&config, Arc::new(NoRouter), memory, &pio, &mmio)
            .expect("device setup");
        let dev = setup.plugged[0].device.clone();
        let ctl = dev.lock().unwrap().control();
        let rig = Rig {
            _dir: dir,
            sock,
            image,
            log,
            ram,
            _setup: setup,
            dev,
            ctl,
        };
        (rig, backend)
    }

    fn r(&self, off: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        self.dev.lock().unwrap().read_bar(0, off, &mut d[..len]);
        u64::from_le_bytes(d)
    }

    fn w(&self, off: u64, v: u64, len: usize) {
        self.dev
            .lock()
            .unwrap()
            .write_bar(0, off, &v.to_le_bytes()[..len]);
    }

    /// Queue 0 (128 entries, rings at DESC/AVAIL/USED), VERSION_1, DRIVER_OK.
    fn bring_up(&self) {
        self.w(0x14, 0x03, 1);
        self.w(0x08, 1, 4);
        self.w(0x0c, 1, 4);
        self.w(0x14, 0x0b, 1);
        self.w(0x16, 0, 2);
        self.w(0x20, DESC, 8);
        self.w(0x28, AVAIL, 8);
        self.w(0x30, USED, 8);
        self.w(0x1c, 1, 2);
        self.w(0x14, 0x0f, 1);
    }

    /// Puts a read of sector 0 on queue 0 and kicks it.
    fn queue_read(&self) {
        let mem = self.ram.memory.memory();
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = DESC + 16 * i;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        mem.write_obj([0u64; 2], GuestAddress(HDR)).unwrap(); // VIRTIO_BLK_T_IN, sector 0
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        desc(0, HDR, 16, 1, 1);
        desc(1, DATA, 512, 1 | 2, 2);
        desc(2, STATUS, 1, 2, 0);
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0] = head 0
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // idx = 1
        self.dev.lock().unwrap().kick_all();
    }

    /// Waits for that read's completion; checks status and bytes.
    fn read_completes(&self) {
        let mem = self.ram.memory.memory();
        let deadline = Instant::now() + Duration::from_secs(30);
        while mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != 1 {
            assert!(
                Instant::now() < deadline,
                "the read queued while the backend was stopped never completed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0, "S_OK");
        let mut sector = [0u8; 512];
        mem.read_slice(&mut sector, GuestAddress(DATA)).unwrap();
        assert!(sector.iter().all(|&b| b == 0x5a), "the disk's bytes");
    }

    /// Waits for device_status to read 0 after a reset, as a driver does.
    fn reset_done(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.r(0x14, 1) != 0 {
            assert!(Instant::now() < deadline, "reset never completed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Brings the device up on a live backend, stops the backend, then makes the accesses a
    /// guest would while it is stopped: 200 capacity reads, writethrough (wce = 0), a reset
    /// (which reads back as pending: the backend has not stopped the rings). None may wait
    /// for the backend.
    fn stop_and_use(&self, backend: &KillOnDrop) {
        self.bring_up();
        assert!(self.ctl.flush(Duration::from_secs(30)), "activation");
        assert_eq!(self.r(0x14, 1), 0x0f);
        assert_eq!(self.r(0x2000, 8), 2048, "capacity");
        stop(backend);
        let t0 = Instant::now();
        for _ in 0..200 {
            assert_eq!(self.r(0x2000, 8), 2048, "capacity while stopped");
        }
        self.w(0x2020, 0, 1);
        assert_eq!(self.r(0x2020, 1), 0);
        self.w(0x14, 0, 1);
        assert_ne!(
            self.r(0x14, 1),
            0,
            "the reset waits for the stopped backend"
        );
        let spent = t0.elapsed();
        eprintln!("while stopped: 200 config reads, a config write, a reset: {spent:?}");
        // Before the fix the first read alone waited 5 s for GET_CONFIG's reply.
        assert!(spent < Duration::from_secs(4), "{spent:?}");
        assert!(
            !self.ctl.flush(Duration::from_secs(3)),
            "the control thread waits for a stopped backend"
        );
        assert_eq!(self.r(0x14, 1), 0x0f, "not declared dead by a timer");
    }

    /// After the backend is back: the queued work went through; a new bring-up and a read.
    fn check_caught_up(&self) {
        assert!(
            wait_for_log(&self.log, "writethrough", Duration::from_secs(30)),
            "the guest's cache mode never reached the backend:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        assert!(self.ctl.flush(Duration::from_secs(30)));
        assert_eq!(self.r(0x2000, 8), 2048);
        assert_eq!(self.r(0x2020, 1), 0, "the cache mode");
        self.reset_done();
        self.bring_up();
        assert!(self.ctl.flush(Duration::from_secs(30)));
        assert_eq!(self.r(0x14, 1), 0x0f, "no NEEDS_RESET");
        self.queue_read();
        self.read_completes();
    }
}

/// A stopped backend, then SIGCONT: what was queued while it was stopped (config write,
/// reset) goes through in order, no reconnect needed; the device then works.
#[test]
fn stopped_backend_blocks_no_vcpu_access_and_catches_up_after_sigcont() {
    let (rig, backend) = Rig::new("backend-sigcont");
    rig.stop_and_use(&backend);
    backend.signal(Signal::SIGCONT);
    rig.check_caught_up();
    assert_eq!(
        std::fs::read_to_string(&rig.log)
            .unwrap_or_default()
            .matches("frontend connected")
            .count(),
        1,
        "no reconnect"
    );
}

/// A stopped backend killed while stopped: its hang-up ends the control thread's wait (the
/// reset completes), the next activation and a read request wait while the backend is away,
/// the monitor reconnects to a new process, the parked activation and the guest's cache
/// mode reach it, and the read (kicked before the backend existed) completes.
#[test]
fn stopped_then_killed_backend_is_replaced_and_catches_up() {
    let (rig, backend) = Rig::new("backend-stopkill");
    rig.stop_and_use(&backend);
    drop(backend);
    // Gone: the reset completes; the next activation and a read wait for the reconnect.
    rig.reset_done();
    rig.bring_up();
    rig.queue_read();
    assert!(rig.ctl.flush(Duration::from_secs(30)));
    assert_eq!(
        rig.r(0x14, 1),
        0x0f,
        "no NEEDS_RESET while the reconnect is pending"
    );
    let _backend2 = start_blk(&rig.sock, &rig.image, &rig.log);
    assert!(
        wait_for_log(&rig.log, "writethrough", Duration::from_secs(30)),
        "the guest's cache mode never reached the new backend"
    );
    rig.read_completes();
    assert_eq!(rig.r(0x14, 1), 0x0f);
}

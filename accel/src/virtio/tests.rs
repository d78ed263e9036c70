//! Transport tests against a recording interrupt router and a fake device model.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::backend::{ActiveQueue, BackendError, VirtioBackend};
use super::device::*;
use crate::devices::bus::Bus;
use crate::devices::bus::BusDevice;
use crate::pci::config::capabilities;
use crate::pci::interrupts::{InterruptError, InterruptRouter};
use crate::pci::msix::MsiMessage;
use crate::pci::{PciConfigIo, PciDevice, PciRoot};

#[derive(Default)]
struct RouterLog {
    next_gsi: u32,
    routes: Vec<(u32, Option<MsiMessage>)>,
    irqfds: Vec<u32>,
    ioevents: Vec<(u64, bool)>,
}

#[derive(Default)]
struct FakeRouter(Mutex<RouterLog>);

impl InterruptRouter for FakeRouter {
    fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut l = self.0.lock().unwrap();
        l.next_gsi += 1;
        Ok(23 + l.next_gsi)
    }
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        self.0.lock().unwrap().routes.push((gsi, msg));
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.0.lock().unwrap().irqfds.push(gsi);
        Ok(())
    }
    fn register_ioevent(&self, _fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.0.lock().unwrap().ioevents.push((addr, true));
        Ok(())
    }
    fn unregister_ioevent(&self, _fd: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.0.lock().unwrap().ioevents.push((addr, false));
        Ok(())
    }
}

/// (index, size, desc, driver, device) of an activated queue.
type QueueRecord = (u16, u16, u64, u64, u64);

/// Holds the fake backend's requests while closed (a stopped backend process).
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
    fn pass(&self) {
        let mut c = self.closed.lock().unwrap();
        while *c {
            c = self.opened.wait(c).unwrap();
        }
    }
}

#[derive(Default)]
struct FakeBackend {
    config: Vec<u8>,
    activated: Vec<(u64, Vec<QueueRecord>)>,
    resumed: usize,
    resets: usize,
    /// Copies of the activated queues' kick fds (the backend's ends).
    kicks: Vec<EventFd>,
    calls: Vec<u16>,
    fail_activate: bool,
    /// Requests fail as if the process had hung up.
    gone: bool,
    gate: Arc<Gate>,
}

impl FakeBackend {
    fn request(&self) -> Result<(), BackendError> {
        self.gate.pass();
        if self.gone {
            return Err(BackendError::Gone(vu_frontend::Error::BackendGone {
                op: "TEST",
                detail: "hung up".into(),
            }));
        }
        Ok(())
    }
}

impl VirtioBackend for FakeBackend {
    fn device_features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX | (1 << 30) | (1 << 34) | 0x46
    }
    fn fetch_config(&mut self, size: u32) -> Result<Vec<u8>, BackendError> {
        Ok(self.config[..size as usize].to_vec())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        self.request()?;
        let o = offset as usize;
        self.config[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn activate(
        &mut self,
        features: u64,
        queues: &[ActiveQueue<'_>],
        resume: bool,
    ) -> Result<(), BackendError> {
        self.request()?;
        if self.fail_activate {
            return Err(BackendError::Failed(vu_frontend::Error::State("no")));
        }
        let q = queues
            .iter()
            .map(|q| (q.index, q.size, q.desc, q.driver, q.device))
            .collect();
        self.activated.push((features, q));
        self.kicks = queues.iter().map(|q| q.kick.try_clone().unwrap()).collect();
        self.resumed += usize::from(resume);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        self.request()?;
        self.resets += 1;
        Ok(())
    }
    fn set_queue_call(&mut self, index: u16, _call: &EventFd) -> Result<(), BackendError> {
        self.request()?;
        self.calls.push(index);
        Ok(())
    }
}

const BAR: u64 = 0xc000_0000;

struct Rig {
    mmio: Arc<Bus>,
    io: PciConfigIo,
    router: Arc<FakeRouter>,
    backend: Arc<Mutex<FakeBackend>>,
    dev: Arc<Mutex<VirtioPciDevice>>,
}

fn rig() -> Rig {
    rig_with(None, None)
}

/// A rig whose device has `vectors=` and `tx_queue_size=` (odd queues) set.
fn rig_with(msix_vectors: Option<u16>, odd_queue_size: Option<u16>) -> Rig {
    let mmio = Arc::new(Bus::new());
    let root = Arc::new(PciRoot::new(mmio.clone(), Arc::new(Bus::new())).unwrap());
    let router = Arc::new(FakeRouter::default());
    let backend = Arc::new(Mutex::new(FakeBackend {
        config: (0..16).collect(),
        ..Default::default()
    }));
    let addr = root.allocate_mmio(BAR0_SIZE).unwrap();
    assert_eq!(addr, BAR);
    let dev = VirtioPciDevice::new(
        "blk0".into(),
        VirtioPciParams {
            virtio_id: 2,
            class: crate::pci::config::ClassCode {
                class: 1,
                subclass: 0x80,
                prog_if: 0,
            },
            num_queues: 2,
            queue_size: 128,
            config_size: 16,
            control_queue_pairs: None,
            odd_queue_size,
            msix_vectors,
            packed: false,
        },
        addr,
        router.clone(),
        backend.clone(),
    )
    .unwrap();
    assert_eq!(root.add_device(Some(3), dev.clone()).unwrap(), 3);
    Rig {
        mmio,
        io: PciConfigIo::new(root),
        router,
        backend,
        dev,
    }
}

impl Rig {
    fn cfg_read(&mut self, reg: u32) -> u32 {
        self.io
            .write(0, &(0x8000_0000u32 | (3 << 11) | (reg << 2)).to_le_bytes());
        let mut d = [0u8; 4];
        self.io.read(4, &mut d);
        u32::from_le_bytes(d)
    }
    fn cfg_write(&mut self, reg: u32, off: u64, data: &[u8]) {
        self.io
            .write(0, &(0x8000_0000u32 | (3 << 11) | (reg << 2)).to_le_bytes());
        self.io.write(4 + off, data);
    }
    fn r(&self, off: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        assert!(self.mmio.read(BAR + off, &mut d[..len]));
        u64::from_le_bytes(d)
    }
    fn w(&self, off: u64, v: u64, len: usize) {
        assert!(self.mmio.write(BAR + off, &v.to_le_bytes()[..len]));
    }
    /// Waits for the control thread to run what the guest's accesses queued.
    fn flush(&self) {
        let ctl = self.dev.lock().unwrap().control();
        assert!(ctl.flush(std::time::Duration::from_secs(10)));
    }
}

#[test]
fn identity_and_capabilities() {
    let mut r = rig();
    assert_eq!(r.cfg_read(0), 0x1042_1af4);
    assert_eq!(r.cfg_read(2), 0x0180_0001);
    assert_eq!(r.cfg_read(11), 0x1100_1af4);
    let dev = r.dev.lock().unwrap();
    let caps = capabilities(|p| dev.config().read_byte(p));
    let ids: Vec<u8> = caps.iter().map(|c| c.1).collect();
    assert_eq!(ids, vec![0x09, 0x09, 0x09, 0x09, 0x09, 0x11]);
    let types: Vec<u8> = caps[..4]
        .iter()
        .map(|&(off, _)| dev.config().read_byte(off + 3))
        .collect();
    assert_eq!(types, vec![1, 3, 2, 4]);
    assert_eq!(dev.config().read_byte(caps[4].0 + 3), 5, "PCI_CFG window");
    // Notify cap: offset 0x3000, length 2 queues * 4, multiplier 4.
    let (notify, _) = caps[2];
    let word = |o: usize| dev.config().read_reg((notify + o) / 4);
    assert_eq!(word(8), 0x3000);
    assert_eq!(word(12), 8);
    assert_eq!(word(16), NOTIFY_OFF_MULTIPLIER);
    // MSI-X: 3 vectors, table in BAR0 at 0x8000, PBA at 0xc000.
    let (m, _) = caps[5];
    assert_eq!(dev.config().read_reg(m / 4) >> 16, 2);
    assert_eq!(dev.config().read_reg(m / 4 + 1), 0x8000);
    assert_eq!(dev.config().read_reg(m / 4 + 2), 0xc000);
}

#[test]
fn driver_bring_up_reset_and_msix_routes() {
    let mut r = rig();
    // Memory decoding on: BAR0 appears and both notify addresses become ioeventfds.
    r.cfg_write(1, 0, &[0x06, 0x00]);
    assert_eq!(
        r.router.0.lock().unwrap().ioevents,
        vec![(BAR + 0x3000, true), (BAR + 0x3004, true)],
        "registered once, at creation"
    );
    assert_eq!(r.router.0.lock().unwrap().irqfds, vec![24, 25, 26]);
    // Features: transport mask drops bits 30 and 34.
    r.w(0x00, 0, 4);
    assert_eq!(r.r(0x04, 4), 0x2000_0046);
    r.w(0x00, 1, 4);
    assert_eq!(r.r(0x04, 4), 1);
    r.w(0x14, 0x03, 1);
    r.w(0x08, 0, 4);
    r.w(0x0c, 0x46, 4);
    // Without VERSION_1 FEATURES_OK does not stick.
    r.w(0x14, 0x0b, 1);
    assert_eq!(r.r(0x14, 1), 0x03);
    r.w(0x08, 1, 4);
    r.w(0x0c, 1, 4);
    r.w(0x14, 0x0b, 1);
    assert_eq!(r.r(0x14, 1), 0x0b);
    // Device config goes to the backend.
    assert_eq!(r.r(0x2004, 4), 0x0706_0504);
    r.w(0x2000, 0xaa, 1);
    assert_eq!(r.r(0x2000, 1), 0xaa, "a config write reads back at once");
    r.flush();
    assert_eq!(r.backend.lock().unwrap().config[0], 0xaa);
    assert_eq!(r.r(0x2010, 4), 0, "past config_size");
    // MSI-X: enable, program vector 1, unmask: a route appears.
    let msix_cap = {
        let dev = r.dev.lock().unwrap();
        capabilities(|p| dev.config().read_byte(p))[5].0 as u32
    };
    r.cfg_write(msix_cap / 4, 3, &[0x80]);
    r.w(0x8010, 0xfee0_0000, 4);
    r.w(0x8018, 0x4022, 4);
    r.w(0x801c, 0, 4);
    let routes = r.router.0.lock().unwrap().routes.clone();
    assert_eq!(
        routes.last(),
        Some(&(
            25,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x4022
            })
        ))
    );
    // Queue 1 on vector 1; queue 0 stays disabled.
    r.w(0x16, 1, 2);
    assert_eq!(r.r(0x18, 2), 128);
    r.w(0x18, 64, 2);
    r.w(0x1a, 3, 2);
    assert_eq!(r.r(0x1a, 2), 0xffff, "only vectors 0..3 exist");
    r.w(0x10, 7, 2);
    assert_eq!(r.r(0x10, 2), 0xffff);
    r.w(0x1a, 1, 2);
    assert_eq!(r.r(0x1a, 2), 1);
    r.w(0x20, 0x10_0000, 8);
    r.w(0x28, 0x10_1000, 8);
    r.w(0x30, 0x10_2000, 8);
    r.w(0x1c, 1, 2);
    r.w(0x14, 0x0f, 1);
    assert_eq!(r.r(0x14, 1), 0x0f);
    r.flush();
    assert_eq!(
        r.backend.lock().unwrap().activated,
        vec![(
            F_VERSION_1 | 0x46,
            vec![(1, 64, 0x10_0000, 0x10_1000, 0x10_2000)]
        )]
    );
    // A notify write that reaches this process is counted and forwarded.
    r.w(0x3004, 1, 2);
    assert_eq!(
        r.dev
            .lock()
            .unwrap()
            .stats()
            .notify_exits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Function mask removes every route.
    r.cfg_write(msix_cap / 4, 3, &[0xc0]);
    assert_eq!(r.router.0.lock().unwrap().routes.last(), Some(&(26, None)));
    // Reset.
    r.w(0x14, 0, 1);
    r.flush();
    assert_eq!(r.r(0x14, 1), 0);
    assert_eq!(r.backend.lock().unwrap().resets, 1);
    // The kick fd is the backend's to read: the reset left its count alone (the kick after
    // activation and the notify write). Draining it here raced with the backend's ring
    // thread, whose read after epoll then failed with EAGAIN.
    assert_eq!(r.backend.lock().unwrap().kicks[0].read().unwrap(), 2);
    r.w(0x16, 1, 2);
    assert_eq!(r.r(0x1c, 2), 0);
    assert_eq!(r.r(0x18, 2), 128);
}

#[test]
fn failed_activation_sets_needs_reset_and_interrupts() {
    let mut r = rig();
    r.cfg_write(1, 0, &[0x02, 0x00]);
    r.backend.lock().unwrap().fail_activate = true;
    r.w(0x10, 0, 2); // config vector 0
    r.w(0x08, 1, 4);
    r.w(0x0c, 1, 4);
    r.w(0x14, 0x0b, 1);
    r.w(0x14, 0x0f, 1);
    r.flush();
    assert_eq!(r.r(0x14, 1), 0x0f | 0x40);
    assert_eq!(r.r(0x1000, 1), 2, "ISR config bit");
    assert_eq!(r.r(0x1000, 1), 0, "cleared on read");
    assert_eq!(r.r(0x15, 1), 1, "config generation bumped");
    let stats = r.dev.lock().unwrap().stats();
    assert_eq!(stats.injected.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Reset clears it (once the backend has carried it out).
    r.w(0x14, 0, 1);
    r.flush();
    assert_eq!(r.r(0x14, 1), 0);
}

#[test]
fn bar_move_moves_ioeventfds_and_platform_reset_unmaps() {
    let mut r = rig();
    assert_eq!(r.router.0.lock().unwrap().ioevents.len(), 2);
    // Sizing with decoding off, then decode on and off again: no ioeventfd churn.
    r.cfg_write(4, 0, &0xffff_ffffu32.to_le_bytes());
    r.cfg_write(4, 0, &(BAR as u32).to_le_bytes());
    r.cfg_write(1, 0, &[0x02, 0x00]);
    r.cfg_write(1, 0, &[0x00, 0x00]);
    assert_eq!(r.router.0.lock().unwrap().ioevents.len(), 2);
    r.cfg_write(1, 0, &[0x02, 0x00]);
    r.cfg_write(4, 0, &0xd000_0000u32.to_le_bytes());
    let log = r.router.0.lock().unwrap().ioevents.clone();
    assert_eq!(
        log,
        vec![
            (BAR + 0x3000, true),
            (BAR + 0x3004, true),
            (BAR + 0x3000, false),
            (BAR + 0x3004, false),
            (0xd000_3000, true),
            (0xd000_3004, true),
        ]
    );
    let mut d = [0u8; 2];
    assert!(r.mmio.read(0xd000_0012, &mut d));
    assert_eq!(u16::from_le_bytes(d), 2, "num_queues");
    r.dev.lock().unwrap().reset();
    assert_eq!(r.dev.lock().unwrap().config().command(), 0);
}

#[test]
fn pci_cfg_capability_reaches_bar0_without_decoding() {
    let mut r = rig();
    let cap = {
        let dev = r.dev.lock().unwrap();
        capabilities(|p| dev.config().read_byte(p))[4].0 as u32
    };
    // num_queues (common cfg 0x12, 2 bytes) through the window, memory decoding off.
    r.cfg_write(cap / 4 + 2, 0, &0x12u32.to_le_bytes());
    r.cfg_write(cap / 4 + 3, 0, &2u32.to_le_bytes());
    assert_eq!(r.cfg_read(cap / 4 + 4), 2);
    // A write through it: queue_select = 1, then read back the selected queue index.
    r.cfg_write(cap / 4 + 2, 0, &0x16u32.to_le_bytes());
    r.cfg_write(cap / 4 + 4, 0, &1u32.to_le_bytes());
    r.cfg_write(cap / 4 + 2, 0, &0x1eu32.to_le_bytes());
    assert_eq!(r.cfg_read(cap / 4 + 4), 1, "queue_notify_off of queue 1");
    // Misaligned or odd lengths do nothing.
    r.cfg_write(cap / 4 + 3, 0, &3u32.to_le_bytes());
    assert_eq!(r.cfg_read(cap / 4 + 4), 0);
}

/// BAR 0 accesses as a vCPU makes them.
#[derive(Clone)]
struct Bar0(Arc<Bus>);

impl Bar0 {
    fn r(&self, off: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        assert!(self.0.read(BAR + off, &mut d[..len]));
        u64::from_le_bytes(d)
    }
    fn w(&self, off: u64, v: u64, len: usize) {
        assert!(self.0.write(BAR + off, &v.to_le_bytes()[..len]));
    }
    /// A driver's bring-up of queue 0 (vector 0, VERSION_1 only) up to DRIVER_OK.
    fn bring_up(&self) {
        self.w(0x14, 0x03, 1);
        self.w(0x08, 1, 4);
        self.w(0x0c, 1, 4);
        self.w(0x14, 0x0b, 1);
        self.w(0x16, 0, 2);
        self.w(0x1a, 0, 2);
        self.w(0x20, 0x10_0000, 8);
        self.w(0x28, 0x10_1000, 8);
        self.w(0x30, 0x10_2000, 8);
        self.w(0x1c, 1, 2);
        self.w(0x14, 0x0f, 1);
    }
}

/// Runs `f` on another thread; fails if it does not finish in time (it blocked on the
/// backend, as a vCPU would).
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("guest accesses blocked on a backend that does not answer")
}

/// A backend that stops answering (its requests block) never blocks the guest's accesses:
/// config reads come from the cache, DRIVER_OK / reset / vector moves / config writes are
/// queued, the queue stays bounded however much the guest does, and everything runs once
/// the backend answers again.
#[test]
fn stuck_backend_blocks_no_guest_access_and_catches_up() {
    let mut r = rig();
    r.cfg_write(1, 0, &[0x06, 0x00]);
    let gate = r.backend.lock().unwrap().gate.clone();
    gate.set(true);
    let bar = Bar0(r.mmio.clone());
    let ctl = r.dev.lock().unwrap().control();
    let max_queued = within(move || {
        bar.bring_up();
        let mut max_queued = 0;
        for i in 0..1000u64 {
            // Config reads from the cache, config writes, vector moves, resets and
            // re-activations: none may wait for the backend.
            assert_eq!(bar.r(0x2004, 4), 0x0706_0504);
            bar.w(0x2008, i & 0xff, 1);
            assert_eq!(bar.r(0x2008, 1), i & 0xff);
            bar.w(0x16, 0, 2);
            bar.w(0x1a, i % 2, 2);
            if i % 10 == 9 {
                bar.w(0x14, 0, 1);
                assert_ne!(bar.r(0x14, 1), 0, "the reset waits for the stuck backend");
                bar.bring_up();
            }
            max_queued = max_queued.max(ctl.queued());
        }
        assert_eq!(bar.r(0x14, 1), 0x0f);
        bar.w(0x16, 0, 2);
        bar.w(0x1a, 1, 2);
        max_queued
    });
    // Config writes, reset, activation, one call fd, config writes.
    assert!(max_queued <= 5, "queue grew to {max_queued}");
    gate.set(false);
    r.flush();
    let b = r.backend.lock().unwrap();
    assert_eq!(
        b.config[8],
        (999 & 0xff) as u8,
        "the last config write landed"
    );
    assert!(b.resets >= 1);
    assert!(!b.activated.is_empty());
    assert_eq!(
        b.activated.last().unwrap().1,
        vec![(0, 128, 0x10_0000, 0x10_1000, 0x10_2000)]
    );
    assert_eq!(b.calls.last(), Some(&0));
    drop(b);
    assert_eq!(r.r(0x14, 1), 0x0f, "no NEEDS_RESET for a slow backend");
}

/// Requests that find the backend gone wait for the reconnect and run then (the activation
/// resumed from the used rings), without NEEDS_RESET; a guest reset while the reconnect is
/// pending drops what the old device life queued.
#[test]
fn requests_for_a_gone_backend_replay_after_reconnect() {
    let mut r = rig();
    r.cfg_write(1, 0, &[0x06, 0x00]);
    r.backend.lock().unwrap().gone = true;
    Bar0(r.mmio.clone()).bring_up();
    r.flush();
    assert_eq!(
        r.r(0x14, 1),
        0x0f,
        "gone with reconnect pending: no NEEDS_RESET"
    );
    // A reset and a new bring-up while the backend is away.
    r.w(0x14, 0, 1);
    r.flush();
    assert_eq!(
        r.r(0x14, 1),
        0,
        "nothing to stop on a gone backend: reset done"
    );
    Bar0(r.mmio.clone()).bring_up();
    r.w(0x16, 0, 2);
    r.w(0x1a, 1, 2);
    r.w(0x2003, 0x5a, 1);
    r.flush();
    assert!(r.backend.lock().unwrap().activated.is_empty());
    assert_eq!(r.r(0x2003, 1), 0x5a, "config writes read back while away");
    // The new backend's config differs (a resized disk): the guest gets a config change.
    r.backend.lock().unwrap().config[12] = 0xee;
    let generation = r.r(0x15, 1);
    let injected = r
        .dev
        .lock()
        .unwrap()
        .stats()
        .injected
        .load(std::sync::atomic::Ordering::Relaxed);
    r.backend.lock().unwrap().gone = false;
    r.dev.lock().unwrap().backend_reconnected();
    r.flush();
    let b = r.backend.lock().unwrap();
    assert_eq!(
        b.activated.len(),
        1,
        "one activation: the one after the reset"
    );
    assert_eq!(b.resumed, 1);
    assert_eq!(b.calls, vec![0], "the vector move made while away");
    assert_eq!(b.config[3], 0x5a, "the config write made while away");
    drop(b);
    assert_eq!(r.r(0x200c, 1), 0xee, "config fetched again");
    assert_eq!(r.r(0x2003, 1), 0x5a);
    assert_ne!(r.r(0x15, 1), generation, "config generation moved");
    let after = r
        .dev
        .lock()
        .unwrap()
        .stats()
        .injected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > injected, "queue vectors raised after the reconnect");
    assert_eq!(r.r(0x14, 1), 0x0f);
}

/// `vectors=5` sizes the MSI-X table; `tx_queue_size=256` sizes the odd (transmit) queues
/// while the even ones keep `queue_size` (`rx_queue_size`).
#[test]
fn vectors_and_per_direction_queue_sizes_reach_the_guest() {
    let r = rig_with(Some(5), Some(256));
    {
        let dev = r.dev.lock().unwrap();
        let caps = capabilities(|p| dev.config().read_byte(p));
        let (m, _) = caps[5];
        assert_eq!(
            dev.config().read_reg(m / 4) >> 16 & 0x7ff,
            4,
            "table size - 1"
        );
    }
    let mut r = r;
    r.cfg_write(1, 0, &[0x06, 0x00]);
    // common cfg: queue_select at 0x16, queue_size at 0x18.
    r.w(0x16, 0, 2);
    assert_eq!(r.r(0x18, 2), 128);
    r.w(0x16, 1, 2);
    assert_eq!(r.r(0x18, 2), 256);
}

//! A userspace virtio driver over a vhost-user [`FrontendSession`]: it plays the guest.
//!
//! The driver owns its "guest memory" (a memfd shared with the backend), lays out split
//! virtqueues in it, allocates request buffers there, submits descriptor chains (direct,
//! indirect, or forged on purpose), kicks, and collects completions, honouring
//! `VIRTIO_RING_F_EVENT_IDX` both ways. It is device-agnostic; device helpers sit on top
//! ([`blk`]).
//!
//! ```no_run
//! # use std::time::Duration;
//! # use vu_testkit::driver::{Driver, DriverOptions, Segment};
//! # use vu_frontend::FrontendSession;
//! # fn demo() -> vu_testkit::driver::Result<()> {
//! let session = FrontendSession::connect("/tmp/dev.sock", Duration::from_secs(5))?;
//! let mut drv = Driver::new(session, DriverOptions::default())?;
//! let buf = drv.alloc(4096, 8)?;
//! drv.submit(0, &[Segment::writable(buf.addr, 4096)], false, 7)?;
//! drv.notify(0)?;
//! let done = drv.wait(0, Duration::from_secs(5))?;
//! assert_eq!(done.token, 7);
//! # Ok(()) }
//! ```

pub mod blk;
pub mod console;
mod error;
mod memory;
pub mod net;
pub mod rng;
mod virtqueue;
pub mod vsock;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vu_frontend::FrontendSession;

pub use error::{Error, Result};
pub use memory::{Allocator, Buffer, memfd_memory};
pub use virtqueue::{Completion, QueueStats, RawDesc, RawNext, Segment, SplitQueue};

/// Transport-independent virtio features the driver understands.
pub const DRIVER_RING_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// Device-specific feature bits (0 to 23).
pub const DEVICE_FEATURE_MASK: u64 = (1 << 24) - 1;

/// How to set up a [`Driver`].
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Virtio features to accept if the device offers them; only device-specific bits and
    /// [`DRIVER_RING_FEATURES`] can ever be accepted.
    pub features: u64,
    /// Features without which [`Driver::new`] fails.
    pub required_features: u64,
    /// Descriptors per queue (power of two).
    pub queue_size: u16,
    /// Queues to set up; 0 means every queue the session offers.
    pub num_queues: usize,
    /// Guest-physical base of the driver memory (non-zero by default, so address translation
    /// bugs show).
    pub mem_base: GuestAddress,
    /// Size of the driver memory in bytes.
    pub mem_size: u64,
    /// Forging (a hostile frontend): shrink the memfd to this many bytes after mapping it and
    /// before SET_MEM_TABLE, so the table describes a region larger than its file. Keep rings
    /// and buffers the driver itself touches below this size.
    pub forge_file_size: Option<u64>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            features: u64::MAX,
            required_features: 1 << VIRTIO_F_VERSION_1,
            queue_size: 256,
            num_queues: 1,
            mem_base: GuestAddress(0x4000_0000),
            mem_size: 64 << 20,
            forge_file_size: None,
        }
    }
}

/// A userspace virtio driver: session + shared memory + running queues.
pub struct Driver {
    session: FrontendSession,
    mem: GuestMemoryMmap,
    alloc: Allocator,
    queues: Vec<SplitQueue>,
    features: u64,
}

impl Driver {
    /// Connects to the backend at `path` (retrying up to `timeout` while it starts) and sets
    /// the driver up as [`new`](Self::new) does.
    pub fn connect(
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
        opts: DriverOptions,
    ) -> Result<Self> {
        Self::new(FrontendSession::connect(path, timeout)?, opts)
    }

    /// Negotiates features, creates the shared memory, sets up and enables the queues.
    pub fn new(mut session: FrontendSession, opts: DriverOptions) -> Result<Self> {
        let offered = session.device_features();
        let missing = opts.required_features & !offered;
        if missing != 0 {
            return Err(Error::MissingFeatures { missing });
        }
        // Never accept a transport feature this driver does not implement (packed rings,
        // in-order, notification data, ...), whatever `opts.features` says.
        let features = offered & opts.features & (DEVICE_FEATURE_MASK | DRIVER_RING_FEATURES);
        session.set_features(features)?;

        let mem = memfd_memory(opts.mem_base, opts.mem_size)?;
        if let Some(size) = opts.forge_file_size {
            shrink_file(&mem, size)?;
        }
        let mut alloc = Allocator::new(opts.mem_base, opts.mem_size);
        session.set_mem_table(&mem)?;

        let num_queues = match opts.num_queues {
            0 => session.num_queues(),
            n => n,
        };
        if num_queues > session.num_queues() {
            return Err(Error::QueueIndex {
                index: num_queues - 1,
                num_queues: session.num_queues(),
            });
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(num_queues);
        for index in 0..num_queues {
            let q = SplitQueue::new(index, opts.queue_size, event_idx, &mem, &mut alloc)?;
            session.setup_vring(index, q.geometry(), 0, q.call_fd(), q.kick_fd())?;
            session.enable_vring(index, true)?;
            queues.push(q);
        }
        Ok(Driver {
            session,
            mem,
            alloc,
            queues,
            features,
        })
    }

    /// The vhost-user session (config space, raw requests, reconnect).
    pub fn session(&mut self) -> &mut FrontendSession {
        &mut self.session
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether virtio feature bit `bit` was negotiated.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    /// The shared memory (read and write buffers through `vm_memory::Bytes`).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Number of queues set up.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Allocates a buffer in the shared memory.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<Buffer> {
        self.alloc.alloc(len, align)
    }

    /// Frees a buffer from [`alloc`](Self::alloc).
    pub fn free(&mut self, buf: Buffer) {
        self.alloc.free(buf)
    }

    /// Copies `data` into shared memory at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<()> {
        Ok(self.mem.write_slice(data, addr)?)
    }

    /// Reads `len` bytes of shared memory at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, addr)?;
        Ok(v)
    }

    /// Queue `index` (geometry, fds, stats).
    pub fn queue(&self, index: usize) -> Result<&SplitQueue> {
        let num_queues = self.queues.len();
        self.queues
            .get(index)
            .ok_or(Error::QueueIndex { index, num_queues })
    }

    fn parts(
        &mut self,
        index: usize,
    ) -> Result<(&mut SplitQueue, &GuestMemoryMmap, &mut Allocator)> {
        let num_queues = self.queues.len();
        let q = self
            .queues
            .get_mut(index)
            .ok_or(Error::QueueIndex { index, num_queues })?;
        Ok((q, &self.mem, &mut self.alloc))
    }

    /// Makes a chain available on queue `q` (direct, or in an indirect table) without kicking.
    /// `token` comes back in the [`Completion`]. Returns the head descriptor index.
    pub fn submit(
        &mut self,
        q: usize,
        segs: &[Segment],
        indirect: bool,
        token: u64,
    ) -> Result<u16> {
        let (queue, mem, alloc) = self.parts(q)?;
        queue.add_chain(mem, alloc, segs, indirect, token)
    }

    /// Makes a forged chain available on queue `q` (not indirect), kicks the queue and waits
    /// up to `timeout` for the next completion.
    pub fn submit_raw_and_wait(
        &mut self,
        q: usize,
        descs: &[RawDesc],
        token: u64,
        timeout: Duration,
    ) -> Result<Completion> {
        self.submit_raw(q, descs, false, token)?;
        self.kick(q)?;
        self.wait(q, timeout)
    }

    /// Makes a forged chain available on queue `q` (see [`RawDesc`]), without kicking.
    pub fn submit_raw(
        &mut self,
        q: usize,
        descs: &[RawDesc],
        indirect: bool,
        token: u64,
    ) -> Result<u16> {
        let (queue, mem, alloc) = self.parts(q)?;
        queue.add_raw(mem, alloc, descs, indirect, token)
    }

    /// Kicks queue `q` if the device wants to hear about new chains; returns whether it did.
    pub fn notify(&mut self, q: usize) -> Result<bool> {
        let (queue, mem, _) = self.parts(q)?;
        queue.notify(mem)
    }

    /// Kicks queue `q` unconditionally.
    pub fn kick(&mut self, q: usize) -> Result<()> {
        self.parts(q)?.0.kick_now()
    }

    /// Pops one completion from queue `q`, if any.
    pub fn poll_used(&mut self, q: usize) -> Result<Option<Completion>> {
        let (queue, mem, alloc) = self.parts(q)?;
        queue.pop_used(mem, alloc)
    }

    /// Polling mode for queue `q`: ask the device not to signal completions.
    pub fn disable_interrupts(&mut self, q: usize) -> Result<()> {
        let (queue, mem, _) = self.parts(q)?;
        queue.disable_interrupts(mem)
    }

    /// Waits up to `timeout` for the next completion on queue `q`, sleeping on its call fd.
    pub fn wait(&mut self, q: usize, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.poll_used(q)? {
                return Ok(c);
            }
            let (queue, mem, _) = self.parts(q)?;
            if queue.enable_interrupts(mem)? {
                continue;
            }
            if !wait_fds(&[queue], deadline)? {
                return Err(Error::Timeout { queue: q, timeout });
            }
        }
    }

    /// Waits up to `timeout` until some queue has a completion to pop; returns false on
    /// timeout. Pop them with [`poll_used`](Self::poll_used).
    pub fn wait_any(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = false;
            for q in &mut self.queues {
                pending |= q.enable_interrupts(&self.mem)?;
            }
            if pending {
                return Ok(true);
            }
            let qs: Vec<&SplitQueue> = self.queues.iter().collect();
            if !wait_fds(&qs, deadline)? {
                return Ok(false);
            }
        }
    }

    /// Forging (a hostile guest): writes `idx` as queue `q`'s avail index, without kicking,
    /// e.g. more than a queue size ahead of what the device has seen.
    pub fn forge_avail_idx(&mut self, q: usize, idx: u16) -> Result<()> {
        let avail = self.queue(q)?.geometry().avail;
        self.mem.write_obj(idx.to_le(), GuestAddress(avail.0 + 2))?;
        Ok(())
    }

    /// Forging (a hostile frontend): stops queue `q` (GET_VRING_BASE) and sets it up again
    /// with its avail ring at `avail` (e.g. guest address 0, with `mem_base` 0), from base 0,
    /// enabled. The driver's own bookkeeping of `q` is left as it was.
    pub fn forge_avail_ring(&mut self, q: usize, avail: GuestAddress) -> Result<()> {
        self.session.stop_vring(q)?;
        let queue = self.queues.get(q).ok_or(Error::QueueIndex {
            index: q,
            num_queues: self.queues.len(),
        })?;
        let mut geometry = queue.geometry();
        geometry.avail = avail;
        self.session
            .setup_vring(q, geometry, 0, queue.call_fd(), queue.kick_fd())?;
        self.session.enable_vring(q, true)?;
        Ok(())
    }

    /// Reconnects the session after the backend died and came back (rings restart from the
    /// used index, see [`FrontendSession::reconnect`]), then kicks every queue with requests
    /// in flight.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<()> {
        self.session.reconnect(timeout)?;
        for q in &mut self.queues {
            if q.in_flight() > 0 {
                q.kick_now()?;
            }
        }
        Ok(())
    }
}

/// Truncates the memfd behind `mem`'s first region to `size` bytes (see
/// [`DriverOptions::forge_file_size`]).
fn shrink_file(mem: &GuestMemoryMmap, size: u64) -> Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let region = mem
        .iter()
        .next()
        .ok_or_else(|| Error::Memory("no region".into()))?;
    let file = region
        .file_offset()
        .ok_or_else(|| Error::Memory("region has no file".into()))?
        .file();
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("ftruncate memfd to {size:#x}: {e}")))
}

/// Sleeps until one of the queues' call fds fires (draining it) or `deadline` passes.
/// Returns false on timeout.
fn wait_fds(queues: &[&SplitQueue], deadline: Instant) -> Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let timeout =
        PollTimeout::try_from(left.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX);
    let mut fds: Vec<PollFd> = queues
        .iter()
        .map(|q| {
            // SAFETY: the fd belongs to the queue's EventFd, which `queues` borrows for the
            // whole lifetime of `fds`.
            let fd = unsafe { BorrowedFd::borrow_raw(q.call_fd().as_raw_fd()) };
            PollFd::new(fd, PollFlags::POLLIN)
        })
        .collect();
    let n = match poll(&mut fds, timeout) {
        Ok(n) => n,
        Err(nix::errno::Errno::EINTR) => return Ok(true),
        Err(e) => return Err(Error::EventFd(e.into())),
    };
    if n == 0 {
        return Ok(false);
    }
    for q in queues {
        // Non-blocking: EAGAIN just means this fd was not the one that fired.
        let _ = q.call_fd().read();
    }
    Ok(true)
}

#[cfg(test)]
mod tests;

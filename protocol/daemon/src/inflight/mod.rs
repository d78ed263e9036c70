//! In-flight I/O tracking for split rings (vhost-user `INFLIGHT_SHMFD`), so that a restarted
//! backend resumes a ring without losing or repeating requests.
//!
//! The frontend keeps a shared buffer across backend restarts (the backend allocates it on
//! `GET_INFLIGHT_FD`; the frontend hands it to every new backend with `SET_INFLIGHT_FD`).
//! Per queue, in the layout of the vhost-user specification ("Inflight I/O tracking") and of
//! libvhost-user, so that QEMU and C backends interoperate:
//!
//! ```text
//! queue region (queue_region_size(queue_size) bytes, 64-byte aligned):
//!   0  features u64 | 8 version u16 | 10 desc_num u16 | 12 last_batch_head u16 | 14 used_idx u16
//!   16 + 16*i: descriptor i { inflight u8, padding [u8; 5], next u16, counter u64 }
//! ```
//!
//! The backend marks a head in flight with a growing counter when it takes it from the avail
//! ring, and completes it in three steps under the ring lock: `last_batch_head = head`, the
//! used entry and used index are published, then `inflight = 0` and `used_idx` = the new used
//! index. At the next ring start ([`Tracker::start`]) a `used_idx` that lags the ring's means
//! the backend died between the last two steps: `last_batch_head` is cleared. The heads still
//! in flight are resubmitted in counter order and the ring continues at `used + in flight`.
//!
//! Everything in the buffer is the frontend's to scribble on: sizes are checked before
//! mapping, the file must be sealed against shrinking (no SIGBUS later), and heads, versions
//! and flags read from it are validated; nothing here panics on its content.

mod chain;

pub use chain::read_chain;

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// Layout version written into a fresh queue region.
pub const INFLIGHT_VERSION: u16 = 1;
/// Queue region header: features, version, desc_num, last_batch_head, used_idx.
const HEADER_SIZE: u64 = 16;
/// One descriptor's state.
const DESC_STATE_SIZE: u64 = 16;
const ALIGNMENT: u64 = 64;
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
/// Offset of `counter` in a descriptor's state.
const OFF_COUNTER: usize = 8;

/// Bytes per queue for `queue_size` descriptors (libvhost-user's `vu_inflight_queue_size`).
pub fn queue_region_size(queue_size: u16) -> u64 {
    let raw = DESC_STATE_SIZE * u64::from(queue_size) + 2;
    raw.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// A GET/SET_INFLIGHT_FD the backend refuses, or a region it cannot use.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("{0} queues asked for, 1 to {1} supported")]
    NumQueues(u16, u16),
    #[error("queue size {0} asked for, 1 to {1} supported")]
    QueueSize(u16, u16),
    #[error("mmap_size {got} does not match {num_queues} queue(s) of {queue_size} ({want} bytes)")]
    MmapSize {
        got: u64,
        want: u64,
        num_queues: u16,
        queue_size: u16,
    },
    #[error("the buffer ends past its file ({0} bytes)")]
    FileTooSmall(u64),
    #[error("the buffer's file is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    #[error("cannot create the buffer: {0}")]
    Create(std::io::Error),
    #[error("cannot map the buffer: {0}")]
    Map(String),
    #[error("queue {queue}: ring of {ring} entries, buffer made for {region}")]
    RingSize { queue: u16, ring: u16, region: u16 },
    #[error("queue {0} is not in the buffer")]
    NoQueue(u16),
    #[error("queue {queue}: unknown layout version {version}")]
    Version { queue: u16, version: u16 },
    #[error("queue {queue}: {in_flight} requests in flight but only {outstanding} on the ring")]
    Inconsistent {
        queue: u16,
        in_flight: usize,
        outstanding: u16,
    },
}

impl From<InflightError> for std::io::Error {
    fn from(e: InflightError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    }
}

/// Checks a frontend's `num_queues`/`queue_size` against the backend's limits; the buffer size.
fn checked_size(
    msg: &VhostUserInflight,
    max_queues: u16,
    max_queue_size: u16,
) -> Result<u64, InflightError> {
    if msg.num_queues == 0 || msg.num_queues > max_queues {
        return Err(InflightError::NumQueues(msg.num_queues, max_queues));
    }
    if msg.queue_size == 0 || msg.queue_size > max_queue_size {
        return Err(InflightError::QueueSize(msg.queue_size, max_queue_size));
    }
    Ok(queue_region_size(msg.queue_size) * u64::from(msg.num_queues))
}

/// GET_INFLIGHT_FD: a zeroed, sealed memfd for the queues `msg` describes, and its description.
pub fn allocate(
    msg: &VhostUserInflight,
    max_queues: u16,
    max_queue_size: u16,
) -> Result<(VhostUserInflight, File), InflightError> {
    let size = checked_size(msg, max_queues, max_queue_size)?;
    let create = |e: nix::Error| InflightError::Create(e.into());
    let fd = memfd_create(
        c"vhost-inflight",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(create)?;
    let file = File::from(fd);
    file.set_len(size).map_err(InflightError::Create)?;
    let seals = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(create)?;
    let reply = VhostUserInflight {
        mmap_size: size,
        mmap_offset: 0,
        num_queues: msg.num_queues,
        queue_size: msg.queue_size,
    };
    Ok((reply, file))
}

/// What a ring start found in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads still in flight, oldest first: run them again before anything new.
    pub resubmit: Vec<u16>,
    /// Where the ring continues: used index + number in flight.
    pub next_avail: u16,
}

/// A mapped buffer (SET_INFLIGHT_FD) and the per-queue bookkeeping of one connection.
/// All calls for one queue must be made under that queue's ring lock.
pub struct Tracker {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
    /// Next counter per queue.
    counters: Vec<AtomicU64>,
    /// Per queue: tracking works (set by a successful `start`).
    active: Vec<AtomicBool>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl Tracker {
    /// SET_INFLIGHT_FD: validates `msg` against the limits and `file`, then maps it.
    pub fn map(
        msg: &VhostUserInflight,
        file: File,
        max_queues: u16,
        max_queue_size: u16,
    ) -> Result<Self, InflightError> {
        let want = checked_size(msg, max_queues, max_queue_size)?;
        if msg.mmap_size != want {
            return Err(InflightError::MmapSize {
                got: msg.mmap_size,
                want,
                num_queues: msg.num_queues,
                queue_size: msg.queue_size,
            });
        }
        let len = file.metadata().map_err(InflightError::Create)?.len();
        if msg
            .mmap_offset
            .checked_add(want)
            .is_none_or(|end| end > len)
        {
            return Err(InflightError::FileTooSmall(len));
        }
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(InflightError::NotSealed);
        }
        let size = usize::try_from(want).map_err(|e| InflightError::Map(e.to_string()))?;
        let map = MmapRegion::from_file(FileOffset::new(file, msg.mmap_offset), size)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        let tracker = Tracker {
            map,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
            counters: (0..msg.num_queues).map(|_| AtomicU64::new(0)).collect(),
            active: (0..msg.num_queues)
                .map(|_| AtomicBool::new(false))
                .collect(),
        };
        for q in 0..msg.num_queues {
            tracker.store16(tracker.base(q) + OFF_DESC_NUM, msg.queue_size);
        }
        Ok(tracker)
    }

    fn base(&self, queue: u16) -> usize {
        (u64::from(queue) * queue_region_size(self.queue_size)) as usize
    }

    fn desc(&self, queue: u16, head: u16) -> usize {
        self.base(queue) + (HEADER_SIZE + u64::from(head) * DESC_STATE_SIZE) as usize
    }

    // The offsets below are within the mapping by construction (queue < num_queues and
    // head < queue_size are checked by every caller), so the accesses cannot fail; a failure
    // would only lose tracking, never memory safety.
    fn load16(&self, off: usize) -> u16 {
        let v: u16 = self
            .map
            .as_volatile_slice()
            .load(off, Ordering::Acquire)
            .unwrap_or(0);
        u16::from_le(v)
    }

    fn store16(&self, off: usize, v: u16) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v.to_le(), off, Ordering::Release);
    }

    fn load8(&self, off: usize) -> u8 {
        self.map
            .as_volatile_slice()
            .load(off, Ordering::Acquire)
            .unwrap_or(0)
    }

    fn store8(&self, off: usize, v: u8) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v, off, Ordering::Release);
    }

    fn load64(&self, off: usize) -> u64 {
        let v: u64 = self
            .map
            .as_volatile_slice()
            .load(off, Ordering::Acquire)
            .unwrap_or(0);
        u64::from_le(v)
    }

    fn store64(&self, off: usize, v: u64) {
        let _ = self
            .map
            .as_volatile_slice()
            .store(v.to_le(), off, Ordering::Release);
    }

    fn tracking(&self, queue: u16, head: u16) -> bool {
        head < self.queue_size
            && self
                .active
                .get(usize::from(queue))
                .is_some_and(|a| a.load(Ordering::Acquire))
    }

    /// Ring start of `queue` (`ring_size` entries, used and avail indices `ring_used` and
    /// `ring_avail` as the ring shows them): repairs the buffer after a crash and says what to
    /// resubmit. `Ok(None)` for a fresh buffer (the ring continues where SET_VRING_BASE put
    /// it). After an error the queue runs untracked.
    pub fn start(
        &self,
        queue: u16,
        ring_size: u16,
        ring_used: u16,
        ring_avail: u16,
    ) -> Result<Option<Recovery>, InflightError> {
        let active = self
            .active
            .get(usize::from(queue))
            .ok_or(InflightError::NoQueue(queue))?;
        active.store(false, Ordering::Release);
        if ring_size > self.queue_size || ring_size == 0 {
            return Err(InflightError::RingSize {
                queue,
                ring: ring_size,
                region: self.queue_size,
            });
        }
        let base = self.base(queue);
        let version = self.load16(base + OFF_VERSION);
        let recovery = match version {
            0 => {
                self.store16(base + OFF_VERSION, INFLIGHT_VERSION);
                self.store16(base + OFF_USED_IDX, ring_used);
                for head in 0..self.queue_size {
                    self.store8(self.desc(queue, head), 0);
                }
                self.counters[usize::from(queue)].store(0, Ordering::Relaxed);
                None
            }
            INFLIGHT_VERSION => {
                let r = self.recover(queue, ring_size, ring_used);
                // The driver has `avail - used` requests outstanding; more in flight means the
                // buffer does not describe this ring (resuming from it would skip requests).
                let outstanding = ring_avail.wrapping_sub(ring_used);
                if r.resubmit.len() > usize::from(outstanding) {
                    return Err(InflightError::Inconsistent {
                        queue,
                        in_flight: r.resubmit.len(),
                        outstanding,
                    });
                }
                Some(r)
            }
            version => return Err(InflightError::Version { queue, version }),
        };
        active.store(true, Ordering::Release);
        Ok(recovery)
    }

    fn recover(&self, queue: u16, ring_size: u16, ring_used: u16) -> Recovery {
        let base = self.base(queue);
        if self.load16(base + OFF_USED_IDX) != ring_used {
            // Died after publishing the used entry of `last_batch_head`, before clearing it.
            let head = self.load16(base + OFF_LAST_BATCH_HEAD);
            if head < self.queue_size {
                self.store8(self.desc(queue, head), 0);
            }
            self.store16(base + OFF_USED_IDX, ring_used);
        }
        let mut in_flight: Vec<(u64, u16)> = Vec::new();
        for head in 0..self.queue_size {
            let off = self.desc(queue, head);
            match self.load8(off) {
                0 => {}
                1 if head < ring_size => in_flight.push((self.load64(off + OFF_COUNTER), head)),
                // Garbage, or a head the ring cannot have: forget it.
                _ => self.store8(off, 0),
            }
        }
        in_flight.sort_unstable();
        let next = in_flight.last().map_or(0, |(c, _)| c.wrapping_add(1));
        self.counters[usize::from(queue)].store(next, Ordering::Relaxed);
        Recovery {
            next_avail: ring_used.wrapping_add(in_flight.len() as u16),
            resubmit: in_flight.into_iter().map(|(_, h)| h).collect(),
        }
    }

    /// `head` was taken from the avail ring of `queue`.
    pub fn get(&self, queue: u16, head: u16) {
        if !self.tracking(queue, head) {
            return;
        }
        let counter = self.counters[usize::from(queue)].fetch_add(1, Ordering::Relaxed);
        let off = self.desc(queue, head);
        self.store64(off + OFF_COUNTER, counter);
        self.store8(off, 1);
    }

    /// About to publish the used entry of `head` (call before adding it to the used ring).
    pub fn pre_put(&self, queue: u16, head: u16) {
        if self.tracking(queue, head) {
            self.store16(self.base(queue) + OFF_LAST_BATCH_HEAD, head);
        }
    }

    /// The used entry of `head` is published and the used index is now `used_idx`.
    pub fn post_put(&self, queue: u16, head: u16, used_idx: u16) {
        if self.tracking(queue, head) {
            self.store8(self.desc(queue, head), 0);
            self.store16(self.base(queue) + OFF_USED_IDX, used_idx);
        }
    }

    /// Number of heads of `queue` marked in flight (for tests and logs).
    pub fn in_flight(&self, queue: u16) -> usize {
        if queue >= self.num_queues {
            return 0;
        }
        (0..self.queue_size)
            .filter(|&h| self.load8(self.desc(queue, h)) == 1)
            .count()
    }
}

#[cfg(test)]
mod tests;

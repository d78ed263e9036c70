//! A driver-side split virtqueue (virtio 1.2 §2.7) living in the driver's shared memory.
//!
//! Layout: descriptor table (16-byte aligned), avail ring with `used_event` (2-byte aligned),
//! used ring with `avail_event` (4-byte aligned): the spec's minimum alignments, so backends
//! are exercised with rings that do not start on page boundaries.

use std::sync::atomic::{Ordering, fence};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::error::{Error, Result};
use super::memory::{Allocator, Buffer};
use vu_frontend::VringGeometry;

/// One buffer of a descriptor chain built by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VRING_DESC_F_WRITE`) rather than device-readable.
    pub device_writes: bool,
}

impl Segment {
    /// A buffer the device reads (driver → device).
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Segment {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes (device → driver).
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Segment {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// The `next` field of a forged descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawNext {
    /// `next` = 0 (meaningful only without `VRING_DESC_F_NEXT`).
    Zero,
    /// The descriptor at this position of the same forged chain (lets tests build loops).
    Rel(usize),
    /// This literal table index (may point outside the chain or the table).
    Abs(u16),
}

/// A descriptor written verbatim: flags are NOT adjusted (set `VRING_DESC_F_NEXT` yourself),
/// so tests can forge malformed chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Buffer address (guest-physical; may be outside memory on purpose).
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Where `next` points.
    pub next: RawNext,
}

impl RawDesc {
    pub const fn new(addr: u64, len: u32, flags: u16, next: RawNext) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }
}

/// A used-ring entry matched with the request it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index.
    pub head: u16,
    /// Bytes the device reports having written.
    pub len: u32,
    /// The caller's token given at submission.
    pub token: u64,
}

/// Counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains made available.
    pub submitted: u64,
    /// Kicks actually sent.
    pub kicks: u64,
    /// Kicks the device asked us not to send (EVENT_IDX / NO_NOTIFY).
    pub kicks_suppressed: u64,
    /// Completions returned.
    pub completed: u64,
    /// Used entries naming a head that was not in flight (ignored).
    pub spurious: u64,
}

struct InFlight {
    descs: Vec<u16>,
    indirect: Option<Buffer>,
    token: u64,
}

/// Driver state of one split virtqueue.
pub struct SplitQueue {
    index: usize,
    geometry: VringGeometry,
    event_idx: bool,
    free: Vec<u16>,
    avail_idx: u16,
    notified_idx: u16,
    last_used: u16,
    inflight: Vec<Option<InFlight>>,
    interrupts: bool,
    call: EventFd,
    kick: EventFd,
    stats: QueueStats,
}

const DESC_SIZE: u64 = 16;

impl SplitQueue {
    /// Allocates and zeroes the rings of a `size`-entry queue, and its call/kick event fds.
    pub(crate) fn new(
        index: usize,
        size: u16,
        event_idx: bool,
        mem: &GuestMemoryMmap,
        alloc: &mut Allocator,
    ) -> Result<Self> {
        let (dl, al, ul) = VringGeometry::part_sizes(size);
        let desc = alloc.alloc(dl, 16)?;
        let avail = alloc.alloc(al, 2)?;
        let used = alloc.alloc(ul, 4)?;
        for b in [desc, avail, used] {
            let len = usize::try_from(b.len).map_err(|_| Error::Memory("ring size".into()))?;
            mem.write_slice(&vec![0u8; len], b.addr)?;
        }
        let geometry = VringGeometry {
            size,
            desc: desc.addr,
            avail: avail.addr,
            used: used.addr,
        };
        Ok(SplitQueue {
            index,
            geometry,
            event_idx,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            inflight: (0..size).map(|_| None).collect(),
            interrupts: true,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            stats: QueueStats::default(),
        })
    }

    /// Ring addresses (guest-physical).
    pub fn geometry(&self) -> VringGeometry {
        self.geometry
    }

    /// The fd the backend signals completions on.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// The fd the driver kicks the backend with.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|f| f.is_some()).count()
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    fn avail_ring_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.geometry.avail.0 + 4 + 2 * u64::from(slot))
    }

    fn used_event_addr(&self) -> GuestAddress {
        self.avail_ring_addr(self.geometry.size)
    }

    fn used_idx_addr(&self) -> GuestAddress {
        GuestAddress(self.geometry.used.0 + 2)
    }

    fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.geometry.used.0 + 4 + 8 * u64::from(self.geometry.size))
    }

    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        table: GuestAddress,
        i: u16,
        d: Descriptor,
    ) -> Result<()> {
        mem.write_obj(d, GuestAddress(table.0 + DESC_SIZE * u64::from(i)))?;
        Ok(())
    }

    fn take_slots(&mut self, n: usize) -> Result<Vec<u16>> {
        if n > self.free.len() {
            return Err(Error::QueueFull {
                queue: self.index,
                needed: n,
                free: self.free.len(),
            });
        }
        let at = self.free.len() - n;
        let mut slots = self.free.split_off(at);
        slots.reverse();
        Ok(slots)
    }

    /// Makes a chain of well-formed descriptors available (not kicked: see
    /// [`notify`](Self::notify)). With `indirect`, the chain goes into an indirect table
    /// allocated in driver memory and takes one ring descriptor. Returns the head index.
    pub(crate) fn add_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        alloc: &mut Allocator,
        segs: &[Segment],
        indirect: bool,
        token: u64,
    ) -> Result<u16> {
        let n = segs.len();
        if n == 0 {
            return Err(Error::InvalidChain("empty chain"));
        }
        let raw: Vec<RawDesc> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut flags = if s.device_writes {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                let next = if i + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                    RawNext::Rel(i + 1)
                } else {
                    RawNext::Zero
                };
                RawDesc {
                    addr: s.addr.0,
                    len: s.len,
                    flags,
                    next,
                }
            })
            .collect();
        self.add_raw(mem, alloc, &raw, indirect, token)
    }

    /// Makes a forged chain available, descriptors written verbatim (see [`RawDesc`]). With
    /// `indirect`, they go into an indirect table (`Rel` indices then index that table) and
    /// the ring gets one `VRING_DESC_F_INDIRECT` descriptor. Returns the head index.
    pub(crate) fn add_raw(
        &mut self,
        mem: &GuestMemoryMmap,
        alloc: &mut Allocator,
        descs: &[RawDesc],
        indirect: bool,
        token: u64,
    ) -> Result<u16> {
        let n = descs.len();
        if n == 0 {
            return Err(Error::InvalidChain("empty chain"));
        }
        if n > usize::from(u16::MAX) {
            return Err(Error::InvalidChain("chain longer than 65535"));
        }
        let resolve = |next: RawNext, slots: &dyn Fn(usize) -> u16| -> Result<u16> {
            match next {
                RawNext::Zero => Ok(0),
                RawNext::Abs(i) => Ok(i),
                RawNext::Rel(i) if i < n => Ok(slots(i)),
                RawNext::Rel(_) => Err(Error::InvalidChain("relative next beyond the chain")),
            }
        };
        let (head, descs_used, table) = if indirect {
            let table = alloc.alloc(DESC_SIZE * n as u64, 16)?;
            let written = descs.iter().enumerate().try_for_each(|(i, d)| {
                let next = resolve(d.next, &|j| j as u16)?;
                let desc = Descriptor::new(d.addr, d.len, d.flags, next);
                self.write_desc(mem, table.addr, i as u16, desc)
            });
            let slot = written.and_then(|()| self.take_slots(1));
            let slot = match slot {
                Ok(s) => s,
                Err(e) => {
                    alloc.free(table);
                    return Err(e);
                }
            };
            let outer = Descriptor::new(
                table.addr.0,
                (DESC_SIZE * n as u64) as u32,
                VRING_DESC_F_INDIRECT as u16,
                0,
            );
            self.write_desc(mem, self.geometry.desc, slot[0], outer)?;
            (slot[0], slot, Some(table))
        } else {
            let slots = self.take_slots(n)?;
            for (i, d) in descs.iter().enumerate() {
                let next = match resolve(d.next, &|j| slots[j]) {
                    Ok(v) => v,
                    Err(e) => {
                        self.free.extend(slots.iter().rev());
                        return Err(e);
                    }
                };
                let desc = Descriptor::new(d.addr, d.len, d.flags, next);
                self.write_desc(mem, self.geometry.desc, slots[i], desc)?;
            }
            (slots[0], slots, None)
        };
        self.inflight[usize::from(head)] = Some(InFlight {
            descs: descs_used,
            indirect: table,
            token,
        });
        self.publish(mem, head)?;
        Ok(head)
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<()> {
        let slot = self.avail_idx % self.geometry.size;
        mem.store(head.to_le(), self.avail_ring_addr(slot), Ordering::Relaxed)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and ring entry are visible before the new index.
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.geometry.avail.0 + 2),
            Ordering::Release,
        )?;
        self.stats.submitted += 1;
        Ok(())
    }

    /// Kicks the device if it wants a notification for the chains made available since the
    /// last call (EVENT_IDX `avail_event`, or `VRING_USED_F_NO_NOTIFY`). Returns whether a
    /// kick was sent.
    pub(crate) fn notify(&mut self, mem: &GuestMemoryMmap) -> Result<bool> {
        let new = self.avail_idx;
        let old = self.notified_idx;
        if new == old {
            return Ok(false);
        }
        self.notified_idx = new;
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let event = u16::from_le(mem.load::<u16>(self.avail_event_addr(), Ordering::Acquire)?);
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = u16::from_le(mem.load::<u16>(self.geometry.used, Ordering::Acquire)?);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if need {
            self.kick_now()?;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        Ok(need)
    }

    /// Kicks unconditionally.
    pub(crate) fn kick_now(&mut self) -> Result<()> {
        self.kick.write(1).map_err(Error::EventFd)?;
        self.stats.kicks += 1;
        Ok(())
    }

    /// The device's used index.
    pub(crate) fn used_idx(&self, mem: &GuestMemoryMmap) -> Result<u16> {
        Ok(u16::from_le(
            mem.load::<u16>(self.used_idx_addr(), Ordering::Acquire)?,
        ))
    }

    /// True if the used ring has entries not yet popped.
    pub(crate) fn has_used(&self, mem: &GuestMemoryMmap) -> Result<bool> {
        Ok(self.used_idx(mem)? != self.last_used)
    }

    /// Pops the next completion, recycling its descriptors (and indirect table).
    pub(crate) fn pop_used(
        &mut self,
        mem: &GuestMemoryMmap,
        alloc: &mut Allocator,
    ) -> Result<Option<Completion>> {
        loop {
            if self.used_idx(mem)? == self.last_used {
                return Ok(None);
            }
            let slot = u64::from(self.last_used % self.geometry.size);
            let at = GuestAddress(self.geometry.used.0 + 4 + 8 * slot);
            let id = u32::from_le(mem.read_obj::<u32>(at)?);
            let len = u32::from_le(mem.read_obj::<u32>(GuestAddress(at.0 + 4))?);
            self.last_used = self.last_used.wrapping_add(1);
            if self.event_idx && self.interrupts {
                mem.store(
                    self.last_used.to_le(),
                    self.used_event_addr(),
                    Ordering::Release,
                )?;
            }
            let entry = usize::try_from(id)
                .ok()
                .and_then(|i| self.inflight.get_mut(i))
                .and_then(Option::take);
            let Some(f) = entry else {
                log::warn!(
                    "queue {}: used entry for head {id} not in flight",
                    self.index
                );
                self.stats.spurious += 1;
                continue;
            };
            self.free.extend(f.descs.iter().rev());
            if let Some(t) = f.indirect {
                alloc.free(t);
            }
            self.stats.completed += 1;
            return Ok(Some(Completion {
                head: id as u16,
                len,
                token: f.token,
            }));
        }
    }

    /// Asks for completion notifications again; returns true if completions are already
    /// pending (the caller must pop them instead of sleeping).
    pub(crate) fn enable_interrupts(&mut self, mem: &GuestMemoryMmap) -> Result<bool> {
        self.interrupts = true;
        if self.event_idx {
            mem.store(
                self.last_used.to_le(),
                self.used_event_addr(),
                Ordering::Release,
            )?;
        } else {
            mem.store(0u16, self.geometry.avail, Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        self.has_used(mem)
    }

    /// Asks the device not to signal completions (polling mode); a hint, the device may
    /// still signal.
    pub(crate) fn disable_interrupts(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        self.interrupts = false;
        mem.store(
            (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
            self.geometry.avail,
            Ordering::Release,
        )?;
        if self.event_idx {
            // An event index just behind us is crossed again only after 65535 completions.
            let ev = self.last_used.wrapping_sub(1);
            mem.store(ev.to_le(), self.used_event_addr(), Ordering::Release)?;
        }
        Ok(())
    }
}

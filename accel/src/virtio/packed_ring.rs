//! The device side of a packed virtqueue (virtio 1.2 §2.8), for the one queue accel serves
//! itself (virtio-net's control queue) when the guest negotiated VIRTIO_F_RING_PACKED; the
//! backends serve their own rings. virtio-queue handles split rings only.
//!
//! A buffer is available when its first descriptor's AVAIL flag equals the driver's wrap
//! counter and its USED flag does not. A chain is consecutive ring slots linked by NEXT, or
//! one slot pointing at a table of indirect descriptors; its id is the last descriptor's.
//! The device returns it by writing one descriptor (id, written length, AVAIL = USED = the
//! device's wrap counter) at its next used slot and skipping as many slots as the chain had.
//! Notifications are always sent after a pass that used buffers (the driver's event
//! suppression may make one spurious; that is allowed).

use std::sync::atomic::{Ordering, fence};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes of one packed descriptor: addr (le64), len (le32), id (le16), flags (le16).
const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;
/// Most descriptors an indirect table may hold (bounds guest-driven work per chain).
const MAX_INDIRECT: u32 = 1024;

/// One buffer segment of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    pub write: bool,
}

/// A chain taken from the ring.
#[derive(Debug, PartialEq, Eq)]
pub struct PackedChain {
    pub id: u16,
    pub segments: Vec<Segment>,
    /// Ring slots the chain used (what its used descriptor skips).
    slots: u16,
    /// The chain was cut short (ran past the ring, an unreadable or oversized table).
    pub malformed: bool,
}

/// The device's position in one packed ring.
#[derive(Debug)]
pub struct PackedRing {
    desc: GuestAddress,
    size: u16,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
}

struct RawDesc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

impl PackedRing {
    /// A fresh ring of `size` descriptors at `desc` (both wrap counters start at 1).
    pub fn new(desc: GuestAddress, size: u16) -> Self {
        PackedRing {
            desc,
            size: size.max(1),
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
        }
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The ring's descriptors all lie in `mem`.
    pub fn is_valid<M: GuestMemoryBackend>(&self, mem: &M) -> bool {
        let len = u64::from(self.size) * DESC_SIZE;
        self.desc.0.checked_add(len - 1).is_some_and(|last| {
            mem.address_in_range(self.desc) && mem.address_in_range(GuestAddress(last))
        })
    }

    fn read_desc<M: GuestMemoryBackend>(mem: &M, at: GuestAddress) -> Option<RawDesc> {
        let mut b = [0u8; DESC_SIZE as usize];
        mem.read_slice(&mut b, at).ok()?;
        Some(RawDesc {
            addr: u64::from_le_bytes(b[0..8].try_into().ok()?),
            len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        })
    }

    fn slot(&self, i: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + u64::from(i) * DESC_SIZE)
    }

    fn is_available(&self, flags: u16) -> bool {
        (flags & F_AVAIL != 0) == self.avail_wrap && (flags & F_USED != 0) != self.avail_wrap
    }

    /// The next available chain, if the driver made one available.
    pub fn pop<M: GuestMemoryBackend>(&mut self, mem: &M) -> Option<PackedChain> {
        let head = Self::read_desc(mem, self.slot(self.next_avail))?;
        if !self.is_available(head.flags) {
            return None;
        }
        // The descriptor's other fields are read after its flags said it is ours.
        fence(Ordering::Acquire);
        let mut chain = PackedChain {
            id: 0,
            segments: Vec::new(),
            slots: 0,
            malformed: false,
        };
        let mut d = Self::read_desc(mem, self.slot(self.next_avail))?;
        loop {
            chain.slots += 1;
            self.next_avail += 1;
            if self.next_avail >= self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
            chain.id = d.id;
            if d.flags & F_INDIRECT != 0 {
                chain.malformed |= !Self::read_indirect(mem, &d, &mut chain.segments);
            } else {
                chain.segments.push(Segment {
                    addr: GuestAddress(d.addr),
                    len: d.len,
                    write: d.flags & F_WRITE != 0,
                });
            }
            if d.flags & F_NEXT == 0 {
                break;
            }
            // A chain may not be longer than the ring.
            if chain.slots >= self.size {
                chain.malformed = true;
                break;
            }
            match Self::read_desc(mem, self.slot(self.next_avail)) {
                Some(next) => d = next,
                None => {
                    chain.malformed = true;
                    break;
                }
            }
        }
        Some(chain)
    }

    /// The segments of an indirect table (consecutive descriptors; false if unusable).
    fn read_indirect<M: GuestMemoryBackend>(mem: &M, d: &RawDesc, out: &mut Vec<Segment>) -> bool {
        let n = d.len / DESC_SIZE as u32;
        if !d.len.is_multiple_of(DESC_SIZE as u32) || n == 0 || n > MAX_INDIRECT {
            return false;
        }
        for i in 0..u64::from(n) {
            let Some(e) = Self::read_desc(mem, GuestAddress(d.addr.wrapping_add(i * DESC_SIZE)))
            else {
                return false;
            };
            if e.flags & F_INDIRECT != 0 {
                return false;
            }
            out.push(Segment {
                addr: GuestAddress(e.addr),
                len: e.len,
                write: e.flags & F_WRITE != 0,
            });
        }
        true
    }

    /// Returns `chain` to the driver with `written` bytes written.
    pub fn add_used<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        chain: &PackedChain,
        written: u32,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let at = self.slot(self.next_used);
        mem.write_obj(written.to_le(), GuestAddress(at.0 + 8))?;
        mem.write_obj(chain.id.to_le(), GuestAddress(at.0 + 12))?;
        let flags = if self.used_wrap { F_AVAIL | F_USED } else { 0 };
        // The id and length are visible before the flags hand the slot back.
        fence(Ordering::Release);
        mem.write_obj(flags.to_le(), GuestAddress(at.0 + 14))?;
        let next = u32::from(self.next_used) + u32::from(chain.slots);
        if next >= u32::from(self.size) {
            self.used_wrap = !self.used_wrap;
        }
        self.next_used = (next % u32::from(self.size)) as u16;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    type Mem = GuestMemoryMmap<()>;

    const RING: u64 = 0x1000;
    const TABLE: u64 = 0x3000;

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &Mem, at: u64, addr: u64, len: u32, id: u16, flags: u16) {
        mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
        mem.write_obj(id.to_le(), GuestAddress(at + 12)).unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(at + 14)).unwrap();
    }

    fn flags_at(mem: &Mem, slot: u64) -> u16 {
        mem.read_obj(GuestAddress(RING + slot * 16 + 14)).unwrap()
    }

    /// What a driver with wrap counter `wrap` marks available.
    fn avail(wrap: bool) -> u16 {
        if wrap { F_AVAIL } else { F_USED }
    }

    #[test]
    fn chains_indirect_tables_and_wrap_around() {
        let m = mem();
        let mut r = PackedRing::new(GuestAddress(RING), 4);
        assert!(r.is_valid(&m));
        assert_eq!(r.pop(&m), None, "nothing available yet");
        // Slot 0-1: a two-descriptor chain, id 7.
        put(&m, RING, 0x8000, 2, 9, avail(true) | F_NEXT);
        put(&m, RING + 16, 0x8100, 1, 7, avail(true) | F_WRITE);
        let c = r.pop(&m).unwrap();
        assert_eq!(c.id, 7);
        assert!(!c.malformed);
        assert_eq!(
            c.segments,
            [
                Segment {
                    addr: GuestAddress(0x8000),
                    len: 2,
                    write: false
                },
                Segment {
                    addr: GuestAddress(0x8100),
                    len: 1,
                    write: true
                },
            ]
        );
        r.add_used(&m, &c, 1).unwrap();
        assert_eq!(flags_at(&m, 0), F_AVAIL | F_USED);
        assert_eq!(m.read_obj::<u16>(GuestAddress(RING + 12)).unwrap(), 7);
        assert_eq!(m.read_obj::<u32>(GuestAddress(RING + 8)).unwrap(), 1);
        // Slot 2: an indirect table of two, id 3.
        put(&m, TABLE, 0x9000, 4, 0, 0);
        put(&m, TABLE + 16, 0x9100, 1, 0, F_WRITE);
        put(&m, RING + 32, TABLE, 32, 3, avail(true) | F_INDIRECT);
        let c = r.pop(&m).unwrap();
        assert_eq!((c.id, c.segments.len(), c.malformed), (3, 2, false));
        r.add_used(&m, &c, 1).unwrap();
        assert_eq!(flags_at(&m, 2), F_AVAIL | F_USED);
        // Slots 3 and 0 (after the wrap, the driver's counter is 0): one chain, id 5.
        put(&m, RING + 48, 0x8000, 2, 1, avail(true) | F_NEXT);
        put(&m, RING, 0x8100, 1, 5, avail(false) | F_WRITE);
        let c = r.pop(&m).unwrap();
        assert_eq!((c.id, c.segments.len(), c.malformed), (5, 2, false));
        r.add_used(&m, &c, 0).unwrap();
        // Used at slot 3 with the old counter; the next used slot is 1 with the new one.
        assert_eq!(flags_at(&m, 3), F_AVAIL | F_USED);
        assert_eq!((r.next_used, r.used_wrap), (1, false));
        assert_eq!(
            r.pop(&m),
            None,
            "slot 1 still carries the first lap's flags"
        );
    }

    #[test]
    fn hostile_chains_are_bounded() {
        let m = mem();
        let mut r = PackedRing::new(GuestAddress(RING), 4);
        // Every slot says NEXT: the chain stops at the ring's size, malformed.
        for i in 0..4 {
            put(&m, RING + i * 16, 0x8000, 1, 0, avail(true) | F_NEXT);
        }
        let c = r.pop(&m).unwrap();
        assert!(c.malformed);
        assert_eq!(c.slots, 4);
        // An indirect table with a bad length, and a nested indirect one.
        let mut r = PackedRing::new(GuestAddress(RING), 4);
        put(&m, RING, TABLE, 17, 1, avail(true) | F_INDIRECT);
        assert!(r.pop(&m).unwrap().malformed);
        put(&m, TABLE, 0x9000, 16, 0, F_INDIRECT);
        put(&m, RING + 16, TABLE, 16, 2, avail(true) | F_INDIRECT);
        assert!(r.pop(&m).unwrap().malformed);
        // A ring outside memory is not valid.
        assert!(!PackedRing::new(GuestAddress(0xfff8), 4).is_valid(&m));
    }
}

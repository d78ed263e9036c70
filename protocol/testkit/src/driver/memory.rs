//! The driver's "guest memory": one memfd mapped MAP_SHARED (so a backend can map it too),
//! and a first-fit allocator with coalescing for rings and buffers inside it.

use std::collections::BTreeMap;
use std::fs::File;

use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};

/// A range of driver memory handed out by [`Allocator::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical start address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

impl Buffer {
    /// The address `offset` bytes into the buffer.
    pub fn at(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.addr.0 + offset)
    }
}

/// First-fit free-list allocator over one contiguous guest-physical range.
#[derive(Debug)]
pub struct Allocator {
    /// Free ranges: start -> length, never adjacent (coalesced on free).
    free: BTreeMap<u64, u64>,
    base: u64,
    end: u64,
}

impl Allocator {
    /// An allocator owning `base..base+size`.
    pub fn new(base: GuestAddress, size: u64) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(base.0, size);
        }
        Allocator {
            free,
            base: base.0,
            end: base.0 + size,
        }
    }

    /// Allocates `len` bytes (at least 1) aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<Buffer> {
        let len = len.max(1);
        let align = align.max(1);
        if !align.is_power_of_two() {
            return Err(Error::OutOfMemory { len, align });
        }
        let found = self.free.iter().find_map(|(&start, &flen)| {
            let aligned = start.checked_add(align - 1)? & !(align - 1);
            let pad = aligned - start;
            (flen >= pad.checked_add(len)?).then_some((start, flen, aligned))
        });
        let (start, flen, aligned) = found.ok_or(Error::OutOfMemory { len, align })?;
        self.free.remove(&start);
        if aligned > start {
            self.free.insert(start, aligned - start);
        }
        let tail = start + flen - (aligned + len);
        if tail > 0 {
            self.free.insert(aligned + len, tail);
        }
        Ok(Buffer {
            addr: GuestAddress(aligned),
            len,
        })
    }

    /// Returns a buffer; neighbouring free ranges are merged. Freeing a range that is not
    /// (entirely) allocated is ignored with a warning.
    pub fn free(&mut self, buf: Buffer) {
        let (mut start, mut len) = (buf.addr.0, buf.len.max(1));
        if start < self.base
            || start.saturating_add(len) > self.end
            || self.overlaps_free(start, len)
        {
            log::warn!("driver allocator: ignoring bad free of {start:#x}+{len:#x}");
            return;
        }
        if let Some((&pstart, &plen)) = self.free.range(..start).next_back()
            && pstart + plen == start
        {
            self.free.remove(&pstart);
            start = pstart;
            len += plen;
        }
        if let Some(nlen) = self.free.remove(&(start + len)) {
            len += nlen;
        }
        self.free.insert(start, len);
    }

    fn overlaps_free(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        // Free ranges are disjoint and sorted: only the last one starting before `end` can
        // reach into `start..end`.
        self.free
            .range(..end)
            .next_back()
            .is_some_and(|(&s, &l)| s + l > start)
    }

    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }
}

/// Creates `size` bytes of memfd-backed memory at guest-physical `base`, mapped MAP_SHARED.
pub fn memfd_memory(base: GuestAddress, size: u64) -> Result<GuestMemoryMmap> {
    let fd = memfd_create(c"vu-driver-mem", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| Error::Memory(format!("memfd_create: {e}")))?;
    let file = File::from(fd);
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("ftruncate memfd to {size:#x}: {e}")))?;
    let len = usize::try_from(size).map_err(|_| Error::Memory("size too large".into()))?;
    GuestMemoryMmap::from_ranges_with_files([(base, len, Some(FileOffset::new(file, 0)))])
        .map_err(|e| Error::Memory(format!("mmap memfd: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_and_coalesces() {
        let mut a = Allocator::new(GuestAddress(0x1000), 0x10000);
        let b1 = a.alloc(10, 1).expect("b1");
        assert_eq!(b1.addr.0, 0x1000);
        let b2 = a.alloc(0x100, 0x1000).expect("b2");
        assert_eq!(b2.addr.0, 0x2000);
        let b3 = a.alloc(0x10, 16).expect("b3");
        assert_eq!(b3.addr.0, 0x1010, "fills the alignment gap first");
        assert!(a.alloc(0x10000, 1).is_err());
        a.free(b2);
        a.free(b1);
        a.free(b3);
        assert_eq!(a.free_bytes(), 0x10000);
        assert_eq!(a.alloc(0x10000, 1).expect("all").addr.0, 0x1000);
    }

    #[test]
    fn ignores_double_and_foreign_frees() {
        let mut a = Allocator::new(GuestAddress(0), 0x1000);
        let b = a.alloc(0x100, 1).expect("b");
        a.free(b);
        a.free(b);
        a.free(Buffer {
            addr: GuestAddress(0x2000),
            len: 1,
        });
        assert_eq!(a.free_bytes(), 0x1000);
    }

    #[test]
    fn memfd_memory_is_file_backed() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = memfd_memory(GuestAddress(0x4000_0000), 0x10000).expect("mem");
        assert!(mem.iter().all(|r| r.file_offset().is_some()));
        mem.write_slice(b"abc", GuestAddress(0x4000_0010))
            .expect("write");
        let mut out = [0u8; 3];
        mem.read_slice(&mut out, GuestAddress(0x4000_0010))
            .expect("read");
        assert_eq!(&out, b"abc");
    }
}

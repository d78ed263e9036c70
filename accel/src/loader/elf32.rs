//! ELF32 kernels with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), as QEMU's `-kernel`
//! loads them: every `PT_LOAD` segment is copied to its physical address (`p_paddr`), the rest
//! of its memory size is zeroed, and the guest starts at the note's 32-bit entry in PVH mode.
//!
//! Everything read from the file is bounded: at most [`MAX_PHDRS`] program headers, segments
//! inside the file and inside guest memory at or above `highmem_start`, notes inside their
//! segment. Errors are linux-loader's ELF errors, so a caller treats both classes alike.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::elf::{Error as ElfError, PvhBootCapability};
use linux_loader::loader::{Error, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// Xen's ELF note type for the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// More program headers than any kernel has.
const MAX_PHDRS: u16 = 64;
/// Bytes copied per guest write.
const CHUNK: usize = 1 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One program header (the fields used here).
#[derive(Clone, Copy, Debug)]
struct Phdr {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn elf(e: ElfError) -> Error {
    Error::Elf(e)
}

fn read_at<F: Read + Seek>(
    f: &mut F,
    offset: u64,
    buf: &mut [u8],
    e: ElfError,
) -> Result<(), Error> {
    f.seek(SeekFrom::Start(offset))
        .map_err(|_| elf(ElfError::SeekProgramHeader))?;
    f.read_exact(buf).map_err(|_| elf(e))
}

/// Whether `head` (the file's first bytes) is a 32-bit little-endian ELF.
pub fn is_elf32(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") && head.get(4) == Some(&1)
}

/// Loads the ELF32 kernel `kernel` into `mem`; see the module documentation.
pub fn load<M: GuestMemoryBackend, F: Read + Seek>(
    mem: &M,
    kernel: &mut F,
    highmem_start: Option<GuestAddress>,
) -> Result<KernelLoaderResult, Error> {
    let file_len = kernel
        .seek(SeekFrom::End(0))
        .map_err(|_| elf(ElfError::SeekElfStart))?;
    let mut ehdr = [0u8; 52];
    read_at(kernel, 0, &mut ehdr, ElfError::ReadElfHeader)?;
    if !is_elf32(&ehdr) {
        return Err(elf(ElfError::InvalidElfMagicNumber));
    }
    if ehdr[5] != 1 {
        return Err(elf(ElfError::BigEndianElfOnLittle));
    }
    if !matches!(le16(&ehdr, 18), EM_386 | EM_X86_64) {
        return Err(elf(ElfError::InvalidElfMagicNumber));
    }
    let phoff = u64::from(le32(&ehdr, 28));
    let phentsize = le16(&ehdr, 42);
    let phnum = le16(&ehdr, 44);
    if phentsize != 32 || phnum == 0 || phnum > MAX_PHDRS {
        return Err(elf(ElfError::InvalidProgramHeaderSize));
    }
    if phoff < 52 || phoff + u64::from(phnum) * 32 > file_len {
        return Err(elf(ElfError::InvalidProgramHeaderOffset));
    }
    let mut table = vec![0u8; usize::from(phnum) * 32];
    read_at(kernel, phoff, &mut table, ElfError::ReadProgramHeader)?;
    let phdrs: Vec<Phdr> = table
        .chunks_exact(32)
        .map(|p| Phdr {
            kind: le32(p, 0),
            offset: u64::from(le32(p, 4)),
            paddr: u64::from(le32(p, 12)),
            filesz: u64::from(le32(p, 16)),
            memsz: u64::from(le32(p, 20)),
        })
        .collect();

    let low = highmem_start.map_or(0, |a| a.raw_value());
    let mut load_start = u64::MAX;
    let mut load_end = 0u64;
    for p in phdrs.iter().filter(|p| p.kind == PT_LOAD) {
        let file_end = p
            .offset
            .checked_add(p.filesz)
            .ok_or(elf(ElfError::Overflow))?;
        let mem_end = p
            .paddr
            .checked_add(p.memsz)
            .ok_or(elf(ElfError::Overflow))?;
        if p.filesz > p.memsz || file_end > file_len {
            return Err(elf(ElfError::InvalidProgramHeaderOffset));
        }
        if p.paddr < low || (p.memsz > 0 && !mem.address_in_range(GuestAddress(mem_end - 1))) {
            return Err(elf(ElfError::InvalidProgramHeaderAddress));
        }
        copy_segment(mem, kernel, p)?;
        load_start = load_start.min(p.paddr);
        load_end = load_end.max(mem_end);
    }
    if load_end == 0 {
        return Err(elf(ElfError::InvalidProgramHeaderAddress));
    }
    let entry = pvh_entry(kernel, &phdrs)?.ok_or(elf(ElfError::InvalidPvhNote))?;
    Ok(KernelLoaderResult {
        kernel_load: GuestAddress(load_start),
        kernel_end: load_end,
        setup_header: None,
        pvh_boot_cap: PvhBootCapability::PvhEntryPresent(GuestAddress(u64::from(entry))),
    })
}

/// Copies a `PT_LOAD` segment's file bytes and zeroes the rest of its memory size.
fn copy_segment<M: GuestMemoryBackend, F: Read + Seek>(
    mem: &M,
    kernel: &mut F,
    p: &Phdr,
) -> Result<(), Error> {
    kernel
        .seek(SeekFrom::Start(p.offset))
        .map_err(|_| elf(ElfError::SeekKernelStart))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < p.memsz {
        let n = (p.memsz - done).min(CHUNK as u64) as usize;
        let from_file = p.filesz.saturating_sub(done).min(n as u64) as usize;
        kernel
            .read_exact(&mut buf[..from_file])
            .map_err(|_| elf(ElfError::ReadKernelImage))?;
        buf[from_file..n].fill(0);
        mem.write_slice(&buf[..n], GuestAddress(p.paddr + done))
            .map_err(|_| elf(ElfError::ReadKernelImage))?;
        done += n as u64;
    }
    Ok(())
}

/// The entry of the first `XEN_ELFNOTE_PHYS32_ENTRY` note named "Xen", if any.
fn pvh_entry<F: Read + Seek>(kernel: &mut F, phdrs: &[Phdr]) -> Result<Option<u32>, Error> {
    for p in phdrs.iter().filter(|p| p.kind == PT_NOTE) {
        // Notes are small; a kernel's whole note segment is a few hundred bytes.
        if p.filesz > 64 * 1024 {
            return Err(elf(ElfError::InvalidPvhNote));
        }
        let mut notes = vec![0u8; p.filesz as usize];
        read_at(kernel, p.offset, &mut notes, ElfError::ReadNoteHeader)?;
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let namesz = le32(&notes, at) as usize;
            let descsz = le32(&notes, at + 4) as usize;
            let kind = le32(&notes, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let next = desc_at + descsz.div_ceil(4) * 4;
            if next > notes.len() {
                return Err(elf(ElfError::InvalidPvhNote));
            }
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && &notes[name_at..name_at + namesz] == b"Xen\0" {
                if descsz < 4 {
                    return Err(elf(ElfError::InvalidPvhNote));
                }
                return Ok(Some(le32(&notes, desc_at)));
            }
            at = next;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

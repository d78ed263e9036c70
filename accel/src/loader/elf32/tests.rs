//! ELF32 images built here byte by byte: a `PT_LOAD` segment and a PVH note.

use std::io::Cursor;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const LOAD: u32 = 0x10_0000;
const CODE: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4f, 0xee, 0xf4];

/// An ELF32 with one PT_LOAD (CODE at LOAD, `memsz` bytes) and, with `note`, a PVH note
/// whose entry is LOAD + 0x10.
fn image(memsz: u32, paddr: u32, note: bool) -> Vec<u8> {
    let phnum: u16 = if note { 2 } else { 1 };
    let code_off = 52 + 32 * u32::from(phnum);
    let note_off = code_off + CODE.len() as u32;
    let mut notes = Vec::new();
    for v in [4u32, 4, 18] {
        notes.extend_from_slice(&v.to_le_bytes());
    }
    notes.extend_from_slice(b"Xen\0");
    notes.extend_from_slice(&(LOAD + 0x10).to_le_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    f.extend_from_slice(&52u32.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [52u16, 32, phnum, 40, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |f: &mut Vec<u8>, kind: u32, off: u32, addr: u32, filesz: u32, memsz: u32| {
        for v in [kind, off, addr, addr, filesz, memsz, 5, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut f, 1, code_off, paddr, CODE.len() as u32, memsz);
    if note {
        phdr(
            &mut f,
            4,
            note_off,
            0,
            notes.len() as u32,
            notes.len() as u32,
        );
    }
    f.extend_from_slice(CODE);
    if note {
        f.extend_from_slice(&notes);
    }
    f
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

#[test]
fn loads_segments_and_finds_the_pvh_entry() {
    let m = mem();
    // Dirty the area the segment's zero-filled tail covers.
    m.write_slice(&[0xaa; 64], GuestAddress(u64::from(LOAD)))
        .unwrap();
    let bytes = image(0x40, LOAD, true);
    assert!(is_elf32(&bytes));
    let r = load(&m, &mut Cursor::new(bytes), Some(GuestAddress(0x10_0000))).unwrap();
    assert_eq!(
        r.pvh_boot_cap,
        PvhBootCapability::PvhEntryPresent(GuestAddress(u64::from(LOAD) + 0x10))
    );
    assert_eq!(r.kernel_load, GuestAddress(u64::from(LOAD)));
    assert_eq!(r.kernel_end, u64::from(LOAD) + 0x40);
    let mut got = [0u8; 0x40];
    m.read_slice(&mut got, GuestAddress(u64::from(LOAD)))
        .unwrap();
    assert_eq!(&got[..CODE.len()], CODE);
    assert!(got[CODE.len()..].iter().all(|&b| b == 0), "tail zeroed");
}

#[test]
fn refuses_what_it_cannot_boot() {
    let m = mem();
    let load_one =
        |bytes: Vec<u8>| load(&m, &mut Cursor::new(bytes), Some(GuestAddress(0x10_0000)));
    // No PVH note: nothing says where a 32-bit kernel starts.
    assert_eq!(
        load_one(image(0x40, LOAD, false)).unwrap_err(),
        Error::Elf(ElfError::InvalidPvhNote)
    );
    // A segment beyond guest memory, or below the high-memory start.
    assert_eq!(
        load_one(image(0x40, 0x3ff_fff0, true)).unwrap_err(),
        Error::Elf(ElfError::InvalidProgramHeaderAddress)
    );
    assert_eq!(
        load_one(image(0x40, 0x8000, true)).unwrap_err(),
        Error::Elf(ElfError::InvalidProgramHeaderAddress)
    );
    // ELF64 and truncated files.
    let mut e64 = image(0x40, LOAD, true);
    e64[4] = 2;
    assert!(load_one(e64).is_err());
    let mut cut = image(0x40, LOAD, true);
    cut.truncate(60);
    assert!(load_one(cut).is_err());
}

//! A 32-bit ELF kernel with a PVH note (QEMU's `-kernel` loads both ELF classes). The kernel is
//! built here byte by byte: at its PVH entry (32-bit flat protected mode) it writes "OK\n" to
//! COM1 and 0x2a to an `isa-debug-exit` port, so the VMM exits with (0x2a << 1) | 1 = 85.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{KVM_BOOT_TIMEOUT, TestDir, bin, qemu, run_with_timeout};

const LOAD: u32 = 0x10_0000;
/// mov dx,0x3f8; 'O' 'K' '\n' out; mov dx,0xf4; mov al,0x2a; out; hlt; jmp hlt.
const CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xb0, b'\n', 0xee, 0x66, 0xba,
    0xf4, 0x00, 0xb0, 0x2a, 0xee, 0xf4, 0xeb, 0xfd,
];

/// ELF32 (EM_386) with one PT_LOAD at 1 MiB and a Xen PHYS32_ENTRY note pointing at it.
fn tiny_kernel() -> Vec<u8> {
    let code_off = 52 + 2 * 32;
    let note_off = code_off + CODE.len() as u32;
    let mut notes = Vec::new();
    for v in [4u32, 4, 18] {
        notes.extend_from_slice(&v.to_le_bytes());
    }
    notes.extend_from_slice(b"Xen\0");
    notes.extend_from_slice(&LOAD.to_le_bytes());
    let mut f = b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    for v in [2u16, 3] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for v in [1u32, LOAD, 52, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for v in [52u16, 32, 2, 40, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let n = notes.len() as u32;
    let len = CODE.len() as u32;
    for v in [1, code_off, LOAD, LOAD, len, 0x1000, 5, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for v in [4, note_off, 0, 0, n, n, 4, 4] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(CODE);
    f.extend_from_slice(&notes);
    f
}

fn run(program: &Path, extra: &[&str], kernel: &Path) -> integration_tests::RunOutput {
    run_with_timeout(
        Command::new(program)
            .args(extra)
            .args([
                "-m",
                "128",
                "-display",
                "none",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
            .arg(kernel),
        KVM_BOOT_TIMEOUT + Duration::from_secs(60),
    )
}

#[test]
fn qemu_boots_the_elf32_pvh_kernel() {
    let dir = TestDir::new("elf32-qemu");
    let kernel = dir.join("tiny32.elf");
    std::fs::write(&kernel, tiny_kernel()).unwrap();
    let out = run(&qemu(), &["-accel", "tcg"], &kernel);
    assert_eq!(out.code(), Some(85), "{}", out.both());
    assert!(out.stdout.contains("OK"), "{}", out.both());
}

#[test]
fn accel_boots_the_elf32_pvh_kernel() {
    let dir = TestDir::new("elf32-accel");
    let kernel = dir.join("tiny32.elf");
    std::fs::write(&kernel, tiny_kernel()).unwrap();
    let out = run(&bin("accel"), &["-accel", "kvm"], &kernel);
    assert_eq!(out.code(), Some(85), "{}", out.both());
    assert!(out.stdout.contains("OK"), "{}", out.both());
}

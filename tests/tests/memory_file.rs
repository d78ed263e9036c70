//! File-backed guest RAM as vhost-user docs write it (`-object memory-backend-file,
//! mem-path=...,share=on -numa node,memdev=`): the guest reads a vhost-user-blk disk, which
//! only works if the backend process mapped the file-backed RAM through the fd accel sent in
//! SET_MEM_TABLE; and the disk's bytes end up in the RAM file (the guest's page cache), which
//! shows the file really is guest RAM.

use std::process::Command;

use integration_tests::{
    Backend, KVM_BOOT_TIMEOUT, TestDir, VmCommand, bin, md5_hex, run_with_timeout, xorshift_bytes,
};

const IMAGE_SIZE: usize = 1 << 20;
const PAGE: usize = 4096;

#[test]
fn file_backed_ram_in_dev_shm_is_shared_with_vhost_user_blk() {
    let dir = TestDir::new("mem-file");
    let image = dir.join("disk.img");
    let data = xorshift_bytes(0x6d65_6d66, IMAGE_SIZE);
    std::fs::write(&image, &data).unwrap();
    let sock = dir.join("blk.sock");
    let _backend = Backend::spawn_logged(
        "vhost-user-blk",
        &sock,
        &["--image", image.to_str().unwrap()],
        &dir.join("backend.log"),
    );
    // A file that does not exist yet: accel creates it (and keeps it, as QEMU does).
    let shm = std::path::PathBuf::from(format!("/dev/shm/accel-mem-file-{}", std::process::id()));
    let _ = std::fs::remove_file(&shm);
    let object = format!(
        "memory-backend-file,id=mem,size=128M,mem-path={},share=on,prealloc=on",
        shm.display()
    );
    let mut args = VmCommand::new()
        .mem(128)
        .chardev("c0", &sock)
        .device("vhost-user-blk-pci,chardev=c0")
        .gcmd("echo MD5; md5sum /dev/vda; echo done")
        .accel("kvm")
        .args();
    // The builder's RAM is a memfd: swap in the file backend (same id, same -numa node).
    let memfd = args
        .iter()
        .position(|a| a.starts_with("memory-backend-memfd,"))
        .expect("the builder's memory object");
    args[memfd] = object;
    let out = run_with_timeout(Command::new(bin("accel")).args(&args), KVM_BOOT_TIMEOUT * 4);
    let ram = std::fs::read(&shm);
    let _ = std::fs::remove_file(&shm);
    assert_eq!(out.code(), Some(0), "{}", out.both());
    let md5 = out
        .stdout
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "MD5")
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string);
    assert_eq!(
        md5.as_deref(),
        Some(md5_hex(&data).as_str()),
        "the guest read different bytes\n{}",
        out.both()
    );
    let ram = ram.expect("accel created the mem-path file");
    assert_eq!(ram.len(), 128 << 20);
    // The guest's page cache holds the disk: find its pages in the RAM file.
    let found = (0..IMAGE_SIZE / PAGE)
        .step_by(16)
        .filter(|i| {
            let page = &data[i * PAGE..(i + 1) * PAGE];
            ram.chunks_exact(PAGE).any(|p| p == page)
        })
        .count();
    assert!(
        found > 0,
        "no page of the disk image in the RAM file: it is not the guest's RAM"
    );
    eprintln!(
        "{found} of {} sampled disk pages found in the RAM file",
        IMAGE_SIZE / PAGE / 16
    );
}

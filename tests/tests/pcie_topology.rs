//! A q35 line with PCIe root ports and bridges (what libvirt emits): three root ports in one
//! multi-function slot (00:1c.0-2), a PCIe-to-PCI bridge behind the third with a pci-bridge
//! behind it (libvirt's way to conventional PCI slots on q35), a conventional pci-bridge on
//! pcie.0, and a vhost-user device behind each of them. The guest lists
//! /sys/bus/pci/devices under QEMU 7.2 (TCG, with SeaBIOS numbering the buses) and under
//! accel (which numbers them itself): the topology paths must be the same, both disks must
//! read back their images' bytes, and under accel the kernel must use MMCONFIG (the root
//! port's config file is 4096 bytes, which needs extended config space) without any BAR or
//! bridge window it could not place.
//!
//! The same on `-M pc` (no ECAM: configuration mechanism #1 reaches the buses behind the
//! bridges): two pci-bridges, one behind the other, with devices on each and on bus 0.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{
    Backend, GuestOutput, KVM_BOOT_TIMEOUT, RunOutput, TestDir, VmCommand, md5_hex, xorshift_bytes,
};

const QEMU_TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE_LEN: usize = 1 << 20;

/// The guest's command: extended config space of a root port, the topology, both disks'
/// first 4 KiB, and what the kernel said about MMCONFIG and resource assignment.
const GCMD: &str = "wc -c /sys/bus/pci/devices/0000:00:1c.0/config; ls -l /sys/bus/pci/devices/; \
     head -c 4096 /dev/vda | md5sum; head -c 4096 /dev/vdb | md5sum; \
     dmesg | grep -i -e mmconfig -e space -e assign -e fail";

/// The paths every VMM must give the functions this line places (the root port bus numbers
/// are depth-first: 1c.0 -> 02, 1c.1 -> 03, 1c.2 -> 04 -> 05; the pci-bridge at 00:05.0 is
/// bus 01, numbered first because its slot comes first).
const EXPECTED: &[&str] = &[
    "pci0000:00/0000:00:05.0",
    "pci0000:00/0000:00:05.0/0000:01:02.0",
    "pci0000:00/0000:00:1c.0",
    "pci0000:00/0000:00:1c.0/0000:02:00.0",
    "pci0000:00/0000:00:1c.1",
    "pci0000:00/0000:00:1c.1/0000:03:00.0",
    "pci0000:00/0000:00:1c.2",
    "pci0000:00/0000:00:1c.2/0000:04:00.0",
    "pci0000:00/0000:00:1c.2/0000:04:00.0/0000:05:01.0",
    "pci0000:00/0000:00:1c.2/0000:04:00.0/0000:05:02.0",
    "pci0000:00/0000:00:1c.2/0000:04:00.0/0000:05:02.0/0000:06:03.0",
];

struct Backends {
    _blk1: Backend,
    _blk2: Backend,
    _rng1: Backend,
    _rng2: Backend,
    _rng3: Backend,
    vm: VmCommand,
}

/// Fresh backends in `dir` (each serves one frontend) and the q35 line using them.
fn backends(dir: &TestDir, images: &[Vec<u8>; 2]) -> Backends {
    let img1 = dir.join("disk1.img");
    let img2 = dir.join("disk2.img");
    std::fs::write(&img1, &images[0]).unwrap();
    std::fs::write(&img2, &images[1]).unwrap();
    let blk = |name: &str, img: &std::path::Path| {
        Backend::spawn(
            "vhost-user-blk",
            &dir.join(name),
            &["--image", img.to_str().unwrap()],
        )
    };
    let blk1 = blk("blk1.sock", &img1);
    let blk2 = blk("blk2.sock", &img2);
    let rng1 = Backend::spawn("vhost-user-rng", &dir.join("rng1.sock"), &[] as &[&str]);
    let rng2 = Backend::spawn("vhost-user-rng", &dir.join("rng2.sock"), &[] as &[&str]);
    let rng3 = Backend::spawn("vhost-user-rng", &dir.join("rng3.sock"), &[] as &[&str]);
    let vm = VmCommand::new()
        .machine("q35")
        .device("pcie-root-port,id=rp1,bus=pcie.0,chassis=1,port=0x10,addr=0x1c.0,multifunction=on")
        .device("pcie-root-port,id=rp2,bus=pcie.0,chassis=2,port=0x11,addr=0x1c.1")
        .device("pcie-root-port,id=rp3,bus=pcie.0,chassis=3,port=0x12,addr=0x1c.2")
        .device("pcie-pci-bridge,id=br1,bus=rp3,addr=0")
        .device("pci-bridge,id=br0,bus=pcie.0,chassis_nr=4,addr=0x5")
        .device("pci-bridge,id=br3,bus=br1,chassis_nr=5,addr=0x2")
        .chardev("c1", blk1.socket())
        .device("vhost-user-blk-pci,chardev=c1,bus=rp1,id=blk1")
        .chardev("c2", rng1.socket())
        .device("vhost-user-rng-pci,chardev=c2,bus=rp2,id=rng1")
        .chardev("c3", blk2.socket())
        .device("vhost-user-blk-pci,chardev=c3,bus=br1,addr=1,id=blk2")
        .chardev("c4", rng2.socket())
        .device("vhost-user-rng-pci,chardev=c4,bus=br0,addr=2,id=rng2")
        .chardev("c5", rng3.socket())
        .device("vhost-user-rng-pci,chardev=c5,bus=br3,addr=3,id=rng3")
        .gcmd(GCMD);
    Backends {
        _blk1: blk1,
        _blk2: blk2,
        _rng1: rng1,
        _rng2: rng2,
        _rng3: rng3,
        vm,
    }
}

/// The sysfs paths (`pci0000:00/...`) the guest's `ls -l /sys/bus/pci/devices/` printed,
/// without the host bridge and QEMU's built-in ICH9 functions (00:1f.*), which accel lacks.
fn topology(out: &RunOutput) -> BTreeSet<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(" -> ../../../devices/").map(|(_, p)| p.trim()))
        .filter(|p| *p != "pci0000:00/0000:00:00.0" && !p.starts_with("pci0000:00/0000:00:1f."))
        .map(str::to_string)
        .collect()
}

fn check_disks(out: &RunOutput, images: &[Vec<u8>; 2], vmm: &str) {
    for (i, img) in images.iter().enumerate() {
        let want = format!("{}  -", md5_hex(&img[..4096]));
        assert!(
            out.stdout.lines().any(|l| l.trim() == want),
            "{vmm}: disk {} did not read back its image (want {want})\n{}",
            i + 1,
            out.both()
        );
    }
}

#[test]
fn q35_root_ports_and_bridges_match_qemu() {
    let images = [xorshift_bytes(1, IMAGE_LEN), xorshift_bytes(2, IMAGE_LEN)];

    let qdir = TestDir::new("pcie-topology-qemu");
    let q = backends(&qdir, &images);
    let qemu = q.vm.clone().accel("tcg").run_qemu(QEMU_TIMEOUT);
    drop(q);
    assert_eq!(qemu.guest_rc(), Some(0), "QEMU\n{}", qemu.both());

    let adir = TestDir::new("pcie-topology-accel");
    let a = backends(&adir, &images);
    let accel = a.vm.run_accel(KVM_BOOT_TIMEOUT * 3);
    drop(a);
    assert_eq!(accel.guest_rc(), Some(0), "accel\n{}", accel.both());

    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    let q_topo = topology(&qemu);
    let a_topo = topology(&accel);
    eprintln!("QEMU:  {q_topo:?}\naccel: {a_topo:?}");
    assert_eq!(q_topo, expected, "QEMU's topology\n{}", qemu.both());
    assert_eq!(
        a_topo,
        q_topo,
        "accel's topology differs from QEMU's\n{}",
        accel.both()
    );

    check_disks(&qemu, &images, "QEMU");
    check_disks(&accel, &images, "accel");

    // Extended configuration space through ECAM, announced by MCFG and reserved by ACPI.
    for (vmm, out) in [("QEMU", &qemu), ("accel", &accel)] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim() == "4096 /sys/bus/pci/devices/0000:00:1c.0/config"),
            "{vmm}: the root port has no extended config space (MMCONFIG unused)\n{}",
            out.both()
        );
    }
    assert!(
        accel.stdout.contains(
            "PCI: MMCONFIG at [mem 0xe0000000-0xefffffff] reserved in ACPI motherboard resources"
        ),
        "{}",
        accel.both()
    );
    // Linux kept accel's bus numbers, windows and BARs: nothing it could not place.
    for bad in ["no space", "failed to assign", "can't assign"] {
        assert!(
            !accel.stdout.contains(bad),
            "accel: the guest kernel says '{bad}'\n{}",
            accel.both()
        );
    }
}

/// The guest's command on pc: the topology and both disks.
const PC_GCMD: &str = "ls -l /sys/bus/pci/devices/; head -c 4096 /dev/vda | md5sum; \
     head -c 4096 /dev/vdb | md5sum; dmesg | grep -i -e mmconfig -e space -e assign -e fail";

const PC_EXPECTED: &[&str] = &[
    "pci0000:00/0000:00:03.0",
    "pci0000:00/0000:00:05.0",
    "pci0000:00/0000:00:05.0/0000:01:02.0",
    "pci0000:00/0000:00:05.0/0000:01:07.0",
    "pci0000:00/0000:00:05.0/0000:01:07.0/0000:02:01.0",
];

fn pc_line(dir: &TestDir, images: &[Vec<u8>; 2]) -> (Vec<Backend>, VmCommand) {
    let img1 = dir.join("disk1.img");
    let img2 = dir.join("disk2.img");
    std::fs::write(&img1, &images[0]).unwrap();
    std::fs::write(&img2, &images[1]).unwrap();
    let blk1 = Backend::spawn(
        "vhost-user-blk",
        &dir.join("blk1.sock"),
        &["--image", img1.to_str().unwrap()],
    );
    let blk2 = Backend::spawn(
        "vhost-user-blk",
        &dir.join("blk2.sock"),
        &["--image", img2.to_str().unwrap()],
    );
    let rng = Backend::spawn("vhost-user-rng", &dir.join("rng.sock"), &[] as &[&str]);
    let vm = VmCommand::new()
        .device("pci-bridge,id=br0,bus=pci.0,chassis_nr=1,addr=0x5")
        .device("pci-bridge,id=br1,bus=br0,chassis_nr=2,addr=0x7")
        .chardev("c1", blk1.socket())
        .device("vhost-user-blk-pci,chardev=c1,addr=0x3,id=blk1")
        .chardev("c2", rng.socket())
        .device("vhost-user-rng-pci,chardev=c2,bus=br0,addr=0x2,id=rng1")
        .chardev("c3", blk2.socket())
        .device("vhost-user-blk-pci,chardev=c3,bus=br1,addr=0x1,id=blk2")
        .gcmd(PC_GCMD);
    (vec![blk1, blk2, rng], vm)
}

#[test]
fn pc_nested_pci_bridges_match_qemu() {
    let images = [xorshift_bytes(3, IMAGE_LEN), xorshift_bytes(4, IMAGE_LEN)];

    let qdir = TestDir::new("pci-bridges-qemu");
    let (q_backends, q_vm) = pc_line(&qdir, &images);
    let qemu = q_vm.accel("tcg").run_qemu(QEMU_TIMEOUT);
    drop(q_backends);
    assert_eq!(qemu.guest_rc(), Some(0), "QEMU\n{}", qemu.both());

    let adir = TestDir::new("pci-bridges-accel");
    let (a_backends, a_vm) = pc_line(&adir, &images);
    let accel = a_vm.run_accel(KVM_BOOT_TIMEOUT * 3);
    drop(a_backends);
    assert_eq!(accel.guest_rc(), Some(0), "accel\n{}", accel.both());

    let expected: BTreeSet<String> = PC_EXPECTED.iter().map(|s| s.to_string()).collect();
    // QEMU's pc has the PIIX3 functions at 00:01.x, which accel lacks.
    let q_topo: BTreeSet<String> = topology(&qemu)
        .into_iter()
        .filter(|p| !p.starts_with("pci0000:00/0000:00:01."))
        .collect();
    let a_topo = topology(&accel);
    eprintln!("QEMU:  {q_topo:?}\naccel: {a_topo:?}");
    assert_eq!(q_topo, expected, "QEMU's topology\n{}", qemu.both());
    assert_eq!(
        a_topo,
        q_topo,
        "accel's topology differs from QEMU's\n{}",
        accel.both()
    );
    check_disks(&qemu, &images, "QEMU");
    check_disks(&accel, &images, "accel");
    // pc has no ECAM: the kernel must not have found an MCFG. On an Intel host it still
    // names MMCONFIG ("fail to add MMCONFIG information, can't access extended PCI
    // configuration space under this bridge": it looks for an ECAM for the root bridge and
    // finds none); on AMD (family 10h+) it uses conf1 for extended access and says nothing.
    for found in ["MMCONFIG for domain", "MMCONFIG at "] {
        assert!(
            !accel.stdout.contains(found),
            "pc has no ECAM, yet the guest says {found:?}\n{}",
            accel.both()
        );
    }
    for bad in ["no space", "failed to assign", "can't assign"] {
        assert!(
            !accel.stdout.contains(bad),
            "accel: the guest kernel says '{bad}'\n{}",
            accel.both()
        );
    }
}

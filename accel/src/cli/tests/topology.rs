//! `-device pcie-root-port|pci-bridge|pcie-pci-bridge` and `bus=`/`addr=` placement.

use super::{fail_with, run};
use crate::config::{MachineType, PciBridgeKind};

const PRE: &str = "-M q35 -m 128 -object memory-backend-memfd,id=mem,size=128M,share=on \
                   -numa node,memdev=mem -chardev socket,id=c0,path=/s0 \
                   -chardev socket,id=c1,path=/s1";

#[test]
fn libvirt_root_ports_and_bridges() {
    let c = run(&format!(
        "{PRE} -device pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,multifunction=on,addr=0x2 \
         -device pcie-root-port,port=0x11,chassis=2,id=pci.2,bus=pcie.0,addr=0x2.0x1 \
         -device pcie-pci-bridge,id=pci.3,bus=pci.2,addr=0x0 \
         -device pci-bridge,chassis_nr=4,id=pci.4,bus=pcie.0,addr=0x5 \
         -device vhost-user-blk-pci,chardev=c0,bus=pci.1,addr=0x0 \
         -device vhost-user-rng-pci,chardev=c1,bus=pci.3"
    ));
    assert_eq!(c.machine, MachineType::Q35);
    assert!(c.platform.pcie);
    assert_eq!(c.pci_bridges.len(), 4);
    assert_eq!(
        c.pci_bridges[0].kind,
        PciBridgeKind::RootPort {
            chassis: 1,
            port: 0x10,
            slot: 0
        }
    );
    assert_eq!(
        (c.pci_bridges[1].slot, c.pci_bridges[1].function),
        (Some(2), 1)
    );
    assert_eq!(c.pci_bridges[2].bus.as_deref(), Some("pci.2"));
    assert_eq!(
        c.pci_bridges[3].kind,
        PciBridgeKind::PciBridge { chassis_nr: 4 }
    );
    assert_eq!(c.devices[0].pci_bus.as_deref(), Some("pci.1"));
    assert_eq!(c.devices[0].pci_slot, Some(0));
    // No addr= behind a conventional bridge: the first slot (1; 0 is SHPC's in QEMU).
    assert_eq!(c.devices[1].pci_bus.as_deref(), Some("pci.3"));
    assert_eq!(c.devices[1].pci_slot, Some(1));
    // pc keeps the legacy bus: no PCIe.
    let pc = run(&PRE.replace("-M q35", "-M pc"));
    assert!(!pc.platform.pcie);
}

#[test]
fn bad_placements_are_one_line_errors_naming_the_device() {
    let rp = "-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x1c";
    for (tail, fragments) in [
        (
            "-device vhost-user-blk-pci,chardev=c0,bus=rp9".to_string(),
            &["-device", "vhost-user-blk-pci", "bus=rp9: no such bus"][..],
        ),
        (
            format!(
                "{rp} -device vhost-user-blk-pci,chardev=c0,bus=rp1 -device vhost-user-rng-pci,chardev=c1,bus=rp1"
            ),
            &["vhost-user-rng-pci", "bus=rp1 has no free slot"][..],
        ),
        (
            format!("{rp} -device vhost-user-blk-pci,chardev=c0,bus=rp1,addr=3"),
            &["vhost-user-blk-pci", "addr=03: bus=rp1 takes slots 00..00"][..],
        ),
        (
            format!("{rp} -device vhost-user-blk-pci,chardev=c0,addr=0x1c"),
            &[
                "vhost-user-blk-pci",
                "addr=1c.0: already in use on bus=pcie.0/pci.0",
            ][..],
        ),
        (
            format!("{rp} -device pcie-root-port,id=rp1,chassis=2"),
            &["pcie-root-port,id=rp1", "duplicate bus id 'rp1'"][..],
        ),
        (
            format!("{rp} -device pcie-root-port,id=rp2,bus=rp1"),
            &["pcie-root-port,id=rp2", "a root port sits on the root bus"][..],
        ),
        (
            format!("{rp} -device pcie-root-port,id=rp2,chassis=1,addr=0x1d"),
            &[
                "pcie-root-port,id=rp2",
                "chassis=1 slot=0 is already used by root port 'rp1'",
            ][..],
        ),
        (
            "-device pci-bridge,id=b".to_string(),
            &["chassis_nr", "chassis number 1..255"][..],
        ),
        (
            "-device pcie-root-port,chassis=1".to_string(),
            &["missing required property 'id"][..],
        ),
    ] {
        let msg = fail_with(&format!("{PRE} {tail}"), fragments);
        assert!(!msg.contains('\n'), "{msg}");
    }
    fail_with(
        &PRE.replace("-M q35", "-M pc")
            .replace("-chardev", "-device pcie-root-port,id=r,chassis=1 -chardev"),
        &["pcie-root-port,id=r", "use -M q35"],
    );
}

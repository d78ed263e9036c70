//! `-chardev`, `-netdev` and `-device`.

use std::path::PathBuf;

use super::{fail_with, run};
use vu_spec::devices::find_driver;

use crate::config::{ChardevConfig, VhostUserDeviceConfig};

/// Shared guest RAM as vhost-user needs it.
const SHARED: &str =
    "-m 128 -object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem";

fn blk(chardev: &str) -> VhostUserDeviceConfig {
    VhostUserDeviceConfig {
        spec: find_driver("vhost-user-blk-pci").unwrap(),
        id: None,
        chardev: chardev.into(),
        virtio_id: 2,
        config_size: 60,
        num_queues: None,
        queue_size: None,
        pci_slot: None,
        pci_function: 0,
        pci_bus: None,
        mac: None,
        tag: None,
        bootindex: None,
        tx_queue_size: None,
        hidden_features: 0,
        msix_vectors: None,
        packed: false,
    }
}

#[test]
fn vhost_user_blk_full() {
    let c = run(&format!(
        "{SHARED} -chardev socket,id=c0,path=/tmp/blk,,0.sock,reconnect=5 \
         -device vhost-user-blk-pci,chardev=c0,num-queues=4,queue-size=256,bootindex=1,\
disable-legacy=on,addr=05.0,id=disk0,bus=pci.0,disable-modern=off"
    ));
    assert_eq!(
        c.chardevs,
        [ChardevConfig {
            id: "c0".into(),
            path: PathBuf::from("/tmp/blk,0.sock"),
            reconnect_secs: 5,
            server: false,
        }]
    );
    assert_eq!(
        c.devices,
        [VhostUserDeviceConfig {
            id: Some("disk0".into()),
            num_queues: Some(4),
            queue_size: Some(256),
            pci_slot: Some(5),
            bootindex: Some(1),
            ..blk("c0")
        }]
    );
}

#[test]
fn vhost_user_fs_takes_its_tag_and_request_queues() {
    let c = run(&format!(
        "{SHARED} -chardev socket,id=c0,path=/tmp/fs.sock \
         -device vhost-user-fs-pci,chardev=c0,tag=myfs,num-request-queues=2,queue-size=1024"
    ));
    let d = &c.devices[0];
    assert_eq!(d.spec.name, "vhost-user-fs");
    assert_eq!(d.virtio_id, 26);
    assert_eq!(d.config_size, 40);
    assert_eq!(d.tag.as_deref(), Some("myfs"));
    // The high-priority queue and two request queues.
    assert_eq!(d.num_queues, Some(3));
    assert_eq!(d.queue_size, Some(1024));
}

#[test]
fn vhost_user_fs_needs_a_tag_of_at_most_36_bytes() {
    fail_with(
        &format!(
            "{SHARED} -chardev socket,id=c0,path=/tmp/fs.sock -device vhost-user-fs-pci,chardev=c0"
        ),
        &["tag"],
    );
    fail_with(
        &format!(
            "{SHARED} -chardev socket,id=c0,path=/tmp/fs.sock \
             -device vhost-user-fs-pci,chardev=c0,tag={}",
            "t".repeat(37)
        ),
        &["tag", "36 bytes"],
    );
}

#[test]
fn machine_memory_backend_is_shared_by_default() {
    let c = run(
        "-object memory-backend-memfd,id=mem,size=256M -machine pc,memory-backend=mem \
         -chardev socket,id=c0,path=/tmp/b.sock -device vhost-user-blk-pci,chardev=c0,disable-legacy=auto",
    );
    assert_eq!(c.devices, [blk("c0")]);
    assert_eq!(c.chardevs[0].reconnect_secs, 0);
}

#[test]
fn every_device_kind() {
    let c = run(&format!(
        "{SHARED} -chardev socket,id=a,path=/a -chardev socket,id=b,path=/b \
         -chardev socket,id=c,path=/c -chardev socket,id=d,path=/d -chardev socket,id=e,path=/e \
         -chardev socket,id=n,path=/n \
         -device vhost-user-vsock-pci,chardev=a \
         -device vhost-user-rng-pci,chardev=b,addr=0x1f \
         -device vhost-user-console-pci,chardev=c \
         -device vhost-user-device-pci,chardev=d,virtio-id=26,num_vqs=2,config_size=8,vq_size=64 \
         -device vhost-user-blk-pci-non-transitional,chardev=e \
         -netdev vhost-user,id=net0,chardev=n,queues=2 \
         -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,mq=on,romfile="
    ));
    let kinds: Vec<_> = c
        .devices
        .iter()
        .map(|d| (d.spec.name, d.virtio_id, d.config_size))
        .collect();
    assert_eq!(
        kinds,
        [
            ("vhost-user-vsock", 19, 8),
            ("vhost-user-rng", 4, 0),
            ("vhost-user-console", 3, 12),
            ("vhost-user-device", 26, 8),
            ("vhost-user-blk", 2, 60),
            ("vhost-user-net", 1, 10),
        ]
    );
    assert_eq!(c.devices[1].pci_slot, Some(0x1f));
    assert_eq!(c.devices[3].num_queues, Some(2));
    assert_eq!(c.devices[3].queue_size, Some(64));
    let net = &c.devices[5];
    assert_eq!(net.chardev, "n");
    assert_eq!(net.num_queues, Some(4));
    assert_eq!(net.mac, Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
}

#[test]
fn net_queue_counts() {
    let line = |q: &str, mq: &str| {
        run(&format!(
            "{SHARED} -chardev socket,id=n,path=/n -netdev vhost-user,id=net0,chardev=n{q} \
             -device virtio-net-pci,netdev=net0{mq}"
        ))
        .devices[0]
            .num_queues
    };
    assert_eq!(line("", ""), None);
    assert_eq!(line(",queues=1", ""), Some(2));
    // Without mq=on the guest gets one queue pair, as in QEMU.
    assert_eq!(line(",queues=4", ""), Some(2));
    assert_eq!(line(",queues=4", ",mq=on"), Some(8));
}

#[test]
fn device_cross_checks() {
    let pre = format!("{SHARED} -chardev socket,id=c0,path=/s0 -chardev socket,id=c1,path=/s1");
    fail_with(
        &format!("{pre} -device vhost-user-blk-pci,chardev=c9"),
        &["-device", "vhost-user-blk-pci", "chardev 'c9' not found"],
    );
    fail_with(
        &format!(
            "{pre} -device vhost-user-blk-pci,chardev=c0 -device vhost-user-rng-pci,chardev=c0"
        ),
        &["-device", "vhost-user-rng-pci", "'c0' is already in use"],
    );
    fail_with(
        &format!(
            "{pre} -device vhost-user-blk-pci,chardev=c0,addr=3 -device vhost-user-rng-pci,chardev=c1,addr=03.0"
        ),
        &["-device", "addr=03.0: already in use"],
    );
    fail_with(
        &format!(
            "{pre} -device vhost-user-blk-pci,chardev=c0,id=x -device vhost-user-rng-pci,chardev=c1,id=x"
        ),
        &["-device", "duplicate device id 'x'"],
    );
    fail_with(
        &format!("{pre} -device vhost-user-blk-pci,chardev=c0,addr=3.1"),
        &["-device", "addr=03.1 has no function 0"],
    );
    fail_with(
        &format!("{pre} -chardev socket,id=c0,path=/x"),
        &["-chardev", "duplicate chardev id 'c0'"],
    );
    fail_with(
        &format!("{pre} -device virtio-net-pci,netdev=n0"),
        &["-device", "virtio-net-pci", "netdev 'n0' not found"],
    );
    fail_with(
        &format!("{pre} -netdev vhost-user,id=n0,chardev=zz"),
        &["-netdev", "chardev 'zz' not found"],
    );
    fail_with(
        &format!("{pre} -netdev vhost-user,id=n0,chardev=c0 -netdev vhost-user,id=n0,chardev=c1"),
        &["-netdev", "duplicate netdev id 'n0'"],
    );
    fail_with(
        &format!(
            "{pre} -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0 \
             -device virtio-net-pci,netdev=n0"
        ),
        &["-device", "netdev 'n0' is already in use"],
    );
}

#[test]
fn vhost_user_needs_shared_memory() {
    let dev = "-chardev socket,id=c0,path=/s -device vhost-user-blk-pci,chardev=c0";
    // Plain -m RAM is private in QEMU.
    fail_with(&format!("-m 128 {dev}"), &["-device", "shared", "share=on"]);
    // share=off backends too.
    fail_with(
        &format!("-object memory-backend-memfd,id=m,size=128M,share=off -numa node,memdev=m {dev}"),
        &["-device", "share=on"],
    );
    // Without devices private RAM is fine.
    run("-m 128");
}

#[test]
fn unknown_drivers_are_one_line_errors_listing_the_table() {
    let pre = format!("{SHARED} -chardev socket,id=c0,path=/s0");
    let list = "vhost-user-blk-pci, vhost-user-vsock-pci, vhost-user-rng-pci, \
                vhost-user-console-pci, vhost-user-fs-pci, vhost-user-device-pci, virtio-net-pci";
    for (driver, hint) in [
        ("vhost-user-gpu-pci", "accel emulates no other devices"),
        ("virtio-gpu-pci", "vhost-user backends in other processes"),
        ("vhost-user-console", "accel emulates no other devices"),
        ("help", "accel's -device drivers"),
    ] {
        let err = super::fail_with(
            &format!("{pre} -device {driver},chardev=c0"),
            &["-device", &format!("driver={driver}"), hint, list],
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn device_properties_come_from_the_table() {
    let pre = format!("{SHARED} -chardev socket,id=c0,path=/s0");
    // A property of another kind is unknown, and the error lists this kind's.
    super::fail_with(
        &format!("{pre} -device vhost-user-rng-pci,chardev=c0,num-queues=2"),
        &["'num-queues'", "supported: chardev, id, addr"],
    );
    super::fail_with(
        &format!("{pre} -device vhost-user-device-pci,chardev=c0"),
        &["-device", "virtio-id"],
    );
    super::fail_with(
        &format!("{pre} -device vhost-user-blk-pci,chardev=c0,queue-size=100"),
        &["'queue-size'", "power of two"],
    );
    super::fail_with(
        &format!("{pre} -device vhost-user-blk-pci"),
        &["-device", "chardev"],
    );
    // The alias of the generic device.
    let c = run(&format!(
        "{pre} -device vhost-user-test-device-pci,chardev=c0,virtio-id=41,num_vqs=2"
    ));
    assert_eq!(c.devices[0].spec.name, "vhost-user-device");
    assert_eq!((c.devices[0].virtio_id, c.devices[0].config_size), (41, 0));
}

#[test]
fn help_lists_every_driver_of_the_table() {
    let help = crate::cli::help_text();
    for d in vu_spec::devices::DEVICES {
        assert!(
            help.contains(&format!("  -device {},", d.driver())),
            "help lacks {}",
            d.driver()
        );
    }
}

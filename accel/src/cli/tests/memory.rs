//! `-object memory-backend-file`, `-mem-path`, `-mem-prealloc`, vhost-user's shared-RAM rule,
//! `-object secret`, and the JSON syntax as libvirt writes it.

use std::path::PathBuf;

use super::{fail_with, run};
use crate::cli::{CliAction, CliError, parse};
use crate::config::{RamSource, VmConfig};
use vu_spec::devices::find_driver;

const M: u64 = 1 << 20;
const VU_BLK: &str = "-chardev socket,id=c0,path=/s -device vhost-user-blk-pci,chardev=c0";

fn file(path: &str, readonly: bool) -> RamSource {
    RamSource::File {
        path: PathBuf::from(path),
        readonly,
    }
}

#[test]
fn memory_backend_file_as_vhost_user_docs_write_it() {
    // QEMU's docs/system/devices/vhost-user.rst, DPDK's and SPDK's guides.
    let c = run(&format!(
        "-m 1G -object memory-backend-file,id=mem,size=1G,mem-path=/dev/hugepages,share=on \
         -numa node,memdev=mem -mem-prealloc {VU_BLK}"
    ));
    let b = &c.memory.backends[0];
    assert_eq!(b.id.as_deref(), Some("mem"));
    assert_eq!((b.size, b.share, b.prealloc), (1024 * M, true, true));
    assert_eq!(b.source, file("/dev/hugepages", false));
    assert_eq!(c.devices.len(), 1);

    // -machine memory-backend=, prealloc on the object, a file path, readonly.
    let c = run(
        "-object memory-backend-file,id=pc.ram,size=256M,mem-path=/dev/shm/vm.ram,\
                 share=on,prealloc=on,align=2M,discard-data=on,merge=off,dump=off,\
                 prealloc-threads=2 -machine pc,memory-backend=pc.ram",
    );
    let b = &c.memory.backends[0];
    assert_eq!((c.memory.size, b.share, b.prealloc), (256 * M, true, true));
    assert_eq!(b.source, file("/dev/shm/vm.ram", false));
    let c = run(
        "-object memory-backend-file,id=r,size=4M,mem-path=/img,readonly=on \
                 -M memory-backend=r",
    );
    assert_eq!(c.memory.backends[0].source, file("/img", true));
    // memory-backend-file defaults to share=off (QEMU's default), memfd to share=on.
    let c = run("-object memory-backend-file,id=m,size=4M,mem-path=/dev/shm -M memory-backend=m");
    assert!(!c.memory.backends[0].share && !c.memory.backends[0].prealloc);
    // An explicit prealloc=off beats -mem-prealloc (a global default in QEMU).
    let c = run(
        "-mem-prealloc -object memory-backend-memfd,id=m,size=4M,prealloc=off \
                 -M memory-backend=m",
    );
    assert!(!c.memory.backends[0].prealloc);
    let c = run(
        "-object memory-backend-memfd,id=m,size=4M,prealloc=on,hugetlb=on,\
                 hugetlbsize=2M -M memory-backend=m",
    );
    let b = &c.memory.backends[0];
    assert!(b.prealloc && b.share);
    assert_eq!(
        b.source,
        RamSource::Memfd {
            hugetlb: Some(2 * M)
        }
    );
}

#[test]
fn mem_path_and_mem_prealloc_shape_plain_ram() {
    let c = run("-m 512 -mem-path /dev/hugepages -mem-prealloc");
    let b = &c.memory.backends[0];
    assert_eq!(
        (b.id.clone(), b.size, b.share, b.prealloc),
        (None, 512 * M, false, true)
    );
    assert_eq!(b.source, file("/dev/hugepages", false));
    let c = run("-m 64");
    assert_eq!(
        c.memory.backends[0].source,
        RamSource::Memfd { hugetlb: None }
    );
    assert!(!c.memory.backends[0].prealloc);
    fail_with("-mem-path \"\"", &["-mem-path", "empty path"]);
    fail_with(
        "-mem-path /dev/shm -object memory-backend-memfd,id=m,size=4M -M memory-backend=m",
        &["-mem-path", "memory-backend"],
    );
}

#[test]
fn vhost_user_refuses_private_or_readonly_ram_naming_it() {
    fail_with(
        &format!("-m 128 -mem-path /dev/shm {VU_BLK}"),
        &[
            "-device",
            "-mem-path RAM",
            "share=on",
            "Failed initializing vhost-user memory map",
        ],
    );
    fail_with(
        &format!(
            "-object memory-backend-file,id=ram0,size=128M,mem-path=/dev/shm,share=off \
             -numa node,memdev=ram0 {VU_BLK}"
        ),
        &["-device", "'ram0' is not shared", "share=on"],
    );
    fail_with(
        &format!(
            "-object memory-backend-file,id=ro,size=128M,mem-path=/img,share=on,readonly=on \
             -numa node,memdev=ro {VU_BLK}"
        ),
        &["-device", "'ro' is readonly=on", "read-write"],
    );
}

#[test]
fn memory_backend_errors_name_the_property() {
    let f = "-object memory-backend-file,id=m,size=4M";
    fail_with(f, &["-object", "'mem-path'"]);
    fail_with(&format!("{f},mem-path="), &["-object", "'mem-path'"]);
    fail_with(&format!("{f},mem-path=/x,pmem=on"), &["-object", "pmem=on"]);
    fail_with(
        &format!("{f},mem-path=/x,hugetlb=on"),
        &["-object", "'hugetlb'", "mem-path"],
    );
    fail_with(
        &format!("{f},mem-path=/x,readonly=2"),
        &["-object", "'readonly'"],
    );
    fail_with(
        &format!("{f},mem-path=/x,host-nodes=0"),
        &["-object", "host-nodes"],
    );
    let m = "-object memory-backend-memfd,id=m,size=4M";
    fail_with(
        &format!("{m},hugetlbsize=2M"),
        &["-object", "hugetlbsize", "hugetlb=on"],
    );
    fail_with(
        &format!("{m},hugetlb=on,hugetlbsize=3M"),
        &["-object", "'hugetlbsize'"],
    );
    fail_with(
        &format!("{m},mem-path=/x"),
        &["-object", "'mem-path'", "hugetlb"],
    );
    fail_with(&format!("{m},prealloc=maybe"), &["-object", "'prealloc'"]);
}

#[test]
fn secret_objects_are_accepted_and_unused() {
    let c = run("-object secret,id=masterKey0,format=raw,\
                 file=/var/lib/libvirt/qemu/domain-1-vm/master-key.aes");
    assert_eq!(c.memory.backends[0].id, None);
    fail_with(
        "-object secret,id=s0,bogus=1",
        &["-object", "'bogus'", "data"],
    );
    fail_with("-object secret,id=0s", &["-object", "'id'"]);
}

/// Parses argv as given (JSON arguments keep their quotes), adding `-kernel vmlinux`.
fn parse_argv(args: &[&str]) -> Result<VmConfig, CliError> {
    let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    argv.extend(["-kernel".to_string(), "vmlinux".to_string()]);
    match parse(&argv)? {
        CliAction::Run(c) => Ok(*c),
        other => panic!("expected a config, got {other:?}"),
    }
}

/// A libvirt 9.x domain with hugepage-backed shared RAM, a vhost-user NIC and a vhost-user-blk
/// disk: every -object/-netdev/-device in JSON, as libvirt writes them.
#[test]
fn libvirt_json_line() {
    let c = parse_argv(&[
        "-name",
        "guest=vm1,debug-threads=on",
        "-object",
        r#"{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-vm1/master-key.aes"}"#,
        "-machine",
        "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
        "-accel",
        "kvm",
        "-m",
        "1024",
        "-object",
        r#"{"qom-type":"memory-backend-file","id":"pc.ram","mem-path":"/dev/hugepages/libvirt/qemu/1-vm1","share":true,"prealloc":true,"size":1073741824}"#,
        "-chardev",
        "socket,id=charnet0,path=/run/openvswitch/vhu0",
        "-netdev",
        r#"{"type":"vhost-user","chardev":"charnet0","id":"hostnet0"}"#,
        "-device",
        r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:8f:1d:2c","bus":"pci.0","addr":"0x3"}"#,
        "-chardev",
        "socket,id=chr-vu-vda,path=/run/spdk/vhost.0",
        "-device",
        r#"{"driver":"vhost-user-blk-pci","chardev":"chr-vu-vda","id":"virtio-disk0","bootindex":1,"num-queues":2}"#,
    ])
    .unwrap();
    let b = &c.memory.backends[0];
    assert_eq!((c.memory.size, b.share, b.prealloc), (1024 * M, true, true));
    assert_eq!(b.source, file("/dev/hugepages/libvirt/qemu/1-vm1", false));
    assert_eq!(c.devices.len(), 2);
    let net = &c.devices[0];
    assert!(std::ptr::eq(
        net.spec,
        find_driver("virtio-net-pci").unwrap()
    ));
    assert_eq!(net.id.as_deref(), Some("net0"));
    assert_eq!(net.chardev, "charnet0");
    assert_eq!(net.mac, Some([0x52, 0x54, 0x00, 0x8f, 0x1d, 0x2c]));
    assert_eq!(net.pci_slot, Some(3));
    let blk = &c.devices[1];
    assert!(std::ptr::eq(
        blk.spec,
        find_driver("vhost-user-blk-pci").unwrap()
    ));
    assert_eq!((blk.num_queues, blk.bootindex), (Some(2), Some(1)));
}

#[test]
fn json_and_keyval_give_the_same_config() {
    let shared = "-object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem";
    let keyval = run(&format!(
        "{shared} -chardev socket,id=c0,path=/s -netdev vhost-user,id=n0,chardev=c0,queues=2 \
         -device virtio-net-pci,netdev=n0,mq=on,mac=52:54:00:12:34:56"
    ));
    let mut args: Vec<&str> = shared.split(' ').collect();
    args.extend([
        "-chardev",
        "socket,id=c0,path=/s",
        "-netdev",
        r#"{"type":"vhost-user","id":"n0","chardev":"c0","queues":2}"#,
        "-device",
        r#"{"driver":"virtio-net-pci","netdev":"n0","mq":true,"mac":"52:54:00:12:34:56"}"#,
    ]);
    let json = parse_argv(&args).unwrap();
    assert_eq!(keyval.devices, json.devices);
    let memfd_json = parse_argv(&[
        "-object",
        r#"{"qom-type":"memory-backend-memfd","id":"mem","size":134217728,"share":true}"#,
        "-numa",
        "node,memdev=mem",
    ])
    .unwrap();
    assert_eq!(
        memfd_json.memory,
        run("-object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem").memory
    );
}

#[test]
fn json_errors_name_the_option_and_property() {
    let err = |args: &[&str]| parse_argv(args).unwrap_err().to_string();
    let e = err(&["-netdev", r#"{"type":"vhost-user","id":"n0""#]);
    assert!(e.starts_with("-netdev: invalid JSON"), "{e}");
    let e = err(&["-netdev", r#"{"type":"tap","id":"n0"}"#]);
    assert!(e.contains("-netdev") && e.contains("'ifname'"), "{e}");
    let e = err(&[
        "-object",
        r#"{"qom-type":"memory-backend-memfd","id":"m","size":1.5}"#,
    ]);
    assert!(e.contains("-object") && e.contains("'size'"), "{e}");
    let e = err(&[
        "-device",
        r#"{"driver":"vhost-user-blk-pci","chardev":null}"#,
    ]);
    assert!(e.contains("-device") && e.contains("null"), "{e}");
    let e = err(&["-object", r#"["memory-backend-memfd"]"#]);
    assert!(e.contains("-object"), "{e}");
    let e = err(&["-object", r#"{"qom-type":"iothread","id":"io0"}"#]);
    assert!(e.contains("iothread"), "{e}");
}

#[test]
fn libvirt_boilerplate_is_accepted() {
    let c = parse_argv(&[
        "-audiodev",
        r#"{"id":"audio1","driver":"none"}"#,
        "-audiodev",
        "none,id=a2",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-machine",
        "pc,usb=off,dump-guest-core=off",
    ])
    .unwrap();
    assert_eq!(c.memory.backends.len(), 1);
    fail_with("-audiodev pa,id=a", &["-audiodev", "driver=pa", "none"]);
    fail_with("-audiodev none,id=a,bogus=1", &["-audiodev", "'bogus'"]);
    fail_with("-sandbox on,spawn=maybe", &["-sandbox", "'spawn'", "deny"]);
    fail_with("-sandbox maybe", &["-sandbox", "'enable'"]);
    assert!(c.lifecycle.sandbox, "-sandbox on keeps the sandbox");
}

#[test]
fn sandbox_is_on_unless_turned_off() {
    assert!(parse_argv(&[]).unwrap().lifecycle.sandbox);
    assert!(parse_argv(&["-sandbox", "on"]).unwrap().lifecycle.sandbox);
    assert!(!parse_argv(&["-sandbox", "off"]).unwrap().lifecycle.sandbox);
    assert!(
        !parse_argv(&["-sandbox", "enable=off"])
            .unwrap()
            .lifecycle
            .sandbox
    );
    assert!(
        parse_argv(&["-sandbox", "off", "-sandbox", "on"])
            .unwrap()
            .lifecycle
            .sandbox
    );
    assert!(
        !parse_argv(&["-sandbox", "on", "-sandbox", "off"])
            .unwrap()
            .lifecycle
            .sandbox
    );
}

#[test]
fn run_with_user_and_runas_name_the_user_to_become() {
    let user = |args: &[&str]| parse_argv(args).unwrap().lifecycle.run_as;
    assert_eq!(user(&[]), None);
    assert_eq!(
        user(&["-run-with", "user=nobody"]).as_deref(),
        Some("nobody")
    );
    assert_eq!(
        user(&["-run-with", "user=107:107"]).as_deref(),
        Some("107:107")
    );
    assert_eq!(
        user(&["-run-with", "async-teardown=off,user=1:2"]).as_deref(),
        Some("1:2")
    );
    assert_eq!(user(&["-runas", "qemu"]).as_deref(), Some("qemu"));
    fail_with(
        "-run-with chroot=/x",
        &["-run-with", "'chroot=/x'", "not supported"],
    );
    fail_with("-run-with user=", &["-run-with", "'user'"]);
    fail_with("-run-with bogus=1", &["-run-with", "'bogus'"]);
}

//! Every refusal names the option (and property) and says what is supported.

use super::super::{CliError, parse};
use super::{argv, fail, fail_with, run};

#[test]
fn option_level_errors() {
    let e = fail("-bogus 1");
    assert!(
        matches!(&e, CliError::UnknownOption { option, .. } if option == "-bogus"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("-machine") && msg.contains("-device"), "{msg}");
    fail_with("-daemonize", &["-daemonize", "stdio"]);
    fail_with("--daemonize -serial stdio", &["-daemonize", "stdio"]);
    fail_with("-drive file=x.img", &["-drive", "if=virtio"]);
    fail_with("-hda x.img", &["-hda", "-drive file=IMG,if=virtio"]);
    fail_with("-nic user", &["-nic", "vhost-user"]);
    fail_with("-bios x.bin", &["-bios", "firmware"]);
    fail_with("-s", &["-s", "not supported"]);
    fail_with("disk.img", &["'disk.img'", "vhost-user-blk-pci"]);
    fail_with("-", &["'-'"]);
    assert_eq!(
        parse(&argv("-m")).err(),
        Some(CliError::MissingArgument {
            option: "-m".into()
        })
    );
    assert_eq!(
        parse(&argv("-kernel")).err(),
        Some(CliError::MissingArgument {
            option: "-kernel".into()
        })
    );
    assert_eq!(parse(&argv("-m 128")).err(), Some(CliError::MissingKernel));
    assert!(CliError::MissingKernel.to_string().contains("-kernel"));
    fail_with("-kernel \"\"", &["-kernel", "empty"]);
    fail_with("-initrd \"\"", &["-initrd", "empty"]);
}

#[test]
fn accel_and_machine_errors() {
    fail_with("-accel tcg", &["-accel", "tcg", "only supports", "kvm"]);
    fail_with(
        "-accel kvm,kernel-irqchip=split",
        &["-accel", "kernel-irqchip=split"],
    );
    fail_with(
        "-accel kvm,dirty-ring-size=4096",
        &["-accel", "'dirty-ring-size'", "kernel-irqchip"],
    );
    fail_with(
        "-machine accel=tcg:kvm",
        &["-machine", "accel=tcg:kvm", "kvm"],
    );
    run("-machine accel=kvm:tcg");
    fail_with(
        "-M isapc",
        &["-machine", "'isapc'", "'type'", "pc, q35, microvm"],
    );
    fail_with("-M help", &["-machine", "pc, q35, microvm"]);
    fail_with("-M pc,foo=bar", &["-machine", "'foo'", "memory-backend"]);
    fail_with("-M pc,acpi=maybe", &["-machine", "'maybe'", "'acpi'"]);
    fail_with("-M pc,usb=on", &["-machine", "usb=on"]);
    fail_with(
        "-M pc,dump-guest-core=2",
        &["-machine", "'dump-guest-core'", "on/off"],
    );
    fail_with(
        "-M pc,memory-backend=1x",
        &["-machine", "'memory-backend'", "identifier"],
    );
}

#[test]
fn cpu_errors() {
    fail_with("-cpu qemu64", &["-cpu", "'qemu64'", "host or max"]);
    fail_with("-cpu help", &["-cpu", "host or max"]);
    fail_with(
        "-cpu host,+nosuchflag",
        &["-cpu", "'nosuchflag'", "feature flags"],
    );
    fail_with("-cpu host,family=6", &["-cpu", "family=6", "on/off"]);
    fail_with("-cpu host,pmu=on", &["-cpu", "pmu=on", "no virtual PMU"]);
    fail_with("-cpu host,migratable=maybe", &["-cpu", "migratable"]);
}

#[test]
fn smp_errors() {
    fail_with("-smp 0", &["-smp", "greater than zero"]);
    fail_with("-smp 2,sockets=0", &["-smp", "greater than zero"]);
    fail_with(
        "-smp 2,sockets=4",
        &[
            "-smp",
            "product of the hierarchy must match maxcpus",
            "sockets (4) * dies (1) * cores (0) * threads (1) != maxcpus (2)",
        ],
    );
    fail_with(
        "-smp 5,sockets=2,cores=2",
        &["-smp", "product", "maxcpus (5)"],
    );
    fail_with(
        "-smp 2,maxcpus=1",
        &["-smp", "maxcpus must be equal to or greater than smp"],
    );
    fail_with("-smp 2,maxcpus=300", &["-smp", "at most"]);
    fail_with("-smp 255", &["-smp", "254"]);
    fail_with("-smp 99999999999", &["-smp", "254"]);
    fail_with("-smp 4,dies=2", &["-smp", "dies=2"]);
    fail_with("-smp 4,clusters=2", &["-smp", "clusters not supported"]);
    fail_with("-smp 4,books=2", &["-smp", "'books'", "sockets"]);
    fail_with("-smp x", &["-smp", "'x'", "'cpus'"]);
}

#[test]
fn memory_errors() {
    fail_with("-m 128.5", &["-m", "'128.5'", "'size'", "suffix"]);
    fail_with("-m 12Q", &["-m", "'12Q'"]);
    fail_with("-m size=", &["-m", "'size'"]);
    fail_with("-m 99999999999999999", &["-m", "'size'"]);
    fail_with("-m 1G,maxmem=512M", &["-m", "maxmem", "at least"]);
    fail_with("-m 128,slots=300", &["-m", "slots"]);
    fail_with("-m 128,foo=1", &["-m", "'foo'", "size"]);
    fail_with(
        "-object memory-backend-ram,id=m,size=1G",
        &["-object", "memory-backend-ram", "memory-backend-file"],
    );
    fail_with(
        "-object iothread,id=io0",
        &["-object", "iothread", "memory-backend-memfd"],
    );
    fail_with("-object memory-backend-memfd,size=1G", &["-object", "'id'"]);
    fail_with("-object memory-backend-memfd,id=m", &["-object", "'size'"]);
    fail_with(
        "-object memory-backend-memfd,id=m,size=0",
        &["-object", "non-zero"],
    );
    fail_with(
        "-object memory-backend-memfd,id=m,size=1000",
        &["-object", "4 KiB"],
    );
    fail_with(
        "-object memory-backend-memfd,id=m,size=1G,share=maybe",
        &["-object", "'share'", "on/off"],
    );
    fail_with(
        "-object memory-backend-memfd,id=m,size=1G,bogus=1",
        &["-object", "'bogus'", "share"],
    );
    fail_with(
        "-object memory-backend-memfd,id=m,size=1G,share",
        &["-object", "'share'"],
    );
    fail_with(
        "-object memory-backend-memfd,id=m,size=4M -object memory-backend-memfd,id=m,size=4M",
        &["-object", "duplicate object id 'm'"],
    );
}

#[test]
fn numa_errors() {
    let two =
        "-object memory-backend-memfd,id=a,size=64M -object memory-backend-memfd,id=b,size=64M";
    fail_with(
        &format!("-m 256 {two} -numa node,memdev=a -numa node,memdev=b"),
        &[
            "-numa",
            "total memory for NUMA nodes (0x8000000) should equal RAM size (0x10000000)",
        ],
    );
    // Without -m the RAM size is QEMU's default 128M.
    fail_with(
        "-object memory-backend-memfd,id=a,size=256M -numa node,memdev=a",
        &["-numa", "should equal RAM size (0x8000000)"],
    );
    fail_with(
        &format!("-m 128 {two} -numa node,memdev=a -numa node,memdev=a"),
        &["-numa", "a can't be used multiple times"],
    );
    fail_with(
        &format!("-m 128 {two} -numa node,memdev=zz"),
        &["-numa", "'zz' not found"],
    );
    fail_with(
        &format!("-m 128 {two} -numa node,memdev=a,nodeid=0 -numa node,memdev=b,nodeid=0"),
        &["-numa", "Duplicate NUMA nodeid: 0"],
    );
    fail_with("-numa node,mem=128M", &["-numa", "mem=128M", "memdev"]);
    fail_with("-numa node", &["-numa", "'memdev'"]);
    fail_with(
        "-numa node,memdev=a,cpus=0-1",
        &["-numa", "cpus=0-1", "NUMA"],
    );
    fail_with("-numa dist,src=0,dst=1,val=20", &["-numa", "type=dist"]);
    fail_with("-numa node,memdev=a,nodeid=500", &["-numa", "'nodeid'"]);
    fail_with(
        &format!("{two} -M memory-backend=a -numa node,memdev=b"),
        &["-machine", "mutually exclusive"],
    );
    fail_with(
        &format!("-m 128 {two} -M memory-backend=a"),
        &["-m", "must match", "'a'"],
    );
    fail_with("-M memory-backend=zz", &["-machine", "'zz' not found"]);
}

#[test]
fn serial_and_display_errors() {
    fail_with("-serial pty", &["-serial", "'pty'", "stdio", "unix:PATH"]);
    fail_with("-serial tcp:localhost:4444", &["-serial", "unix:PATH"]);
    fail_with("-serial file:", &["-serial", "file:PATH"]);
    fail_with(
        "-serial unix:/tmp/s",
        &["-serial", "server=off", "client mode"],
    );
    fail_with(
        "-serial unix:/tmp/s,server=on,telnet=on",
        &["-serial", "'telnet'", "wait"],
    );
    fail_with("-serial unix:,server=on", &["-serial", "'path'"]);
    fail_with("-serial mon:vc", &["-serial", "monitor"]);
    fail_with(
        "-serial stdio -serial null",
        &["-serial", "one serial port"],
    );
    fail_with("-display gtk", &["-display", "gtk", "-display none"]);
    fail_with("-vga std", &["-vga", "std", "-vga none"]);
    fail_with("-parallel stdio", &["-parallel", "-parallel none"]);
    fail_with("-monitor stdio", &["-monitor", "-monitor none"]);
    fail_with("-name vm,process=x", &["-name", "process=x"]);
    fail_with("-name vm,foo=1", &["-name", "'foo'", "guest"]);
}

#[test]
fn device_option_errors() {
    let shared = "-object memory-backend-memfd,id=mem,size=128M -numa node,memdev=mem";
    fail_with(
        "-chardev spicevmc,id=c0",
        &[
            "-chardev",
            "backend=spicevmc",
            "socket",
            "stdio, file, pipe or null",
        ],
    );
    fail_with("-chardev socket,path=/s", &["-chardev", "'id'"]);
    fail_with("-chardev socket,id=c0", &["-chardev", "'path'"]);
    fail_with(
        "-chardev socket,id=c0,host=localhost,port=1234",
        &["-chardev", "host=localhost", "unix"],
    );
    fail_with(
        "-chardev socket,id=c0,path=/s,server=on",
        &["-chardev", "'c0'", "-mon chardev=c0,mode=control"],
    );
    fail_with(
        "-chardev socket,id=c0,path=/s,server,nowait",
        &["-chardev", "-mon"],
    );
    fail_with(
        "-chardev socket,id=c0,path=/s,wait=off",
        &["-chardev", "'wait'", "client"],
    );
    fail_with(
        "-chardev socket,id=c0,path=/s,reconnect=x",
        &["-chardev", "'reconnect'"],
    );
    fail_with(
        "-chardev socket,id=c0,path=/s,logfile=/l",
        &["-chardev", "'logfile'", "reconnect"],
    );
    fail_with(
        "-netdev user,id=n0",
        &["-netdev", "type=user", "vhost-user"],
    );
    fail_with("-netdev vhost-user,id=n0", &["-netdev", "'chardev'"]);
    fail_with(
        "-netdev vhost-user,id=n0,chardev=c,queues=0",
        &["-netdev", "'queues'", "1..=512"],
    );
    fail_with(
        "-netdev vhost-user,id=n0,chardev=c,vhostfd=3",
        &["-netdev", "'vhostfd'"],
    );
    let d = |props: &str| format!("{shared} -chardev socket,id=c0,path=/s -device {props}");
    fail_with(
        &d("virtio-blk-pci,drive=d0"),
        &[
            "-device",
            "virtio-blk-pci",
            "drive 'd0' not found",
            "-blockdev",
        ],
    );
    fail_with(
        &d("e1000,netdev=n0"),
        &["-device", "e1000", "virtio-net-pci"],
    );
    fail_with(
        &d("vhost-user-gpu-pci,chardev=c0"),
        &["-device", "vhost-user-gpu-pci", "supported drivers"],
    );
    fail_with(&d("chardev=c0"), &["-device", "'driver'"]);
    fail_with(&d("vhost-user-blk-pci"), &["-device", "'chardev'"]);
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,disable-legacy=off"),
        &["-device", "disable-legacy=off", "modern-only"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,disable-legacy=x"),
        &["-device", "'disable-legacy'", "auto"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,disable-modern=on"),
        &["-device", "disable-modern=on"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,num-queues=0"),
        &["-device", "'num-queues'", "1..=1024"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,queue-size=100"),
        &["-device", "'queue-size'", "power of two"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,addr=0"),
        &["-device", "addr=0", "host bridge"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,addr=20"),
        &["-device", "'addr'", "SLOT"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,bus=pci.1"),
        &["-device", "bus=pci.1"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,romfile=x.rom"),
        &["-device", "romfile=x.rom"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,config-wce=off"),
        &["-device", "'config-wce'", "num-queues"],
    );
    fail_with(
        &d("vhost-user-rng-pci,chardev=c0,num-queues=2"),
        &["-device", "'num-queues'", "chardev"],
    );
    fail_with(
        &d("vhost-user-device-pci,chardev=c0"),
        &["-device", "'virtio-id'"],
    );
    fail_with(
        &d("vhost-user-device-pci,chardev=c0,virtio-id=4,config_size=5000"),
        &["-device", "'config_size'"],
    );
    fail_with(&d("virtio-net-pci"), &["-device", "'netdev'"]);
    fail_with(
        &d("virtio-net-pci,netdev=n0,mac=52:54"),
        &["-device", "'mac'", "xx:xx"],
    );
    fail_with(
        &d("virtio-net-pci,netdev=n0,mq=2"),
        &["-device", "'mq'", "on/off"],
    );
    fail_with(
        &d("vhost-user-blk-pci,chardev=c0,id=0bad"),
        &["-device", "'id'", "identifier"],
    );
}

//! Process/platform options management tools pass, chardevs for the serial port, and the ISA
//! debug devices: what each turns into in the config (the VMM side is tested where it acts).

use std::path::PathBuf;

use super::{fail_with, run};
use crate::config::{IsaDeviceConfig, RtcBase, SerialConfig};

#[test]
fn rtc_global_msg_echr() {
    let c = run("-rtc base=localtime,clock=host,driftfix=slew \
                 -global kvm-pit.lost_tick_policy=discard -msg timestamp=on -echr 0x14 \
                 -global PIIX4_PM.disable_s3=1");
    assert_eq!(c.platform.rtc_base, RtcBase::Localtime);
    assert!(c.platform.pit_discard_lost_ticks);
    assert!(c.platform.msg_timestamp);
    assert_eq!(c.platform.escape_char, 0x14);
    let c = run("-rtc base=2006-06-17T16:01:21");
    assert_eq!(c.platform.rtc_base, RtcBase::Fixed(1_150_560_081));
    assert_eq!(run("-rtc base=utc").platform.rtc_base, RtcBase::Utc);
    assert!(!run("").platform.pit_discard_lost_ticks);
    fail_with("-rtc clock=vm", &["-rtc", "clock=vm", "host clock"]);
    fail_with("-rtc base=yesterday", &["-rtc", "base", "localtime"]);
    fail_with(
        "-global virtio-pci.disable-legacy=on",
        &["-global", "virtio-pci.disable-legacy", "kvm-pit"],
    );
    fail_with(
        "-global kvm-pit.lost_tick_policy=slew",
        &["discard or delay"],
    );
    fail_with("-msg guest-name=on", &["-msg", "guest-name"]);
}

#[test]
fn accepted_no_ops_and_their_refused_values() {
    run(
        "-no-user-config -overcommit mem-lock=off -overcommit cpu-pm=off -boot strict=on \
         -boot order=c,menu=off,reboot-timeout=-1 -vga none -display none \
         -machine pc,accel=kvm,kernel_irqchip=on,usb=off,dump-guest-core=off \
         -cpu host,pmu=off,migratable=on -m 128M,slots=4,maxmem=1G",
    );
    // QEMU's +PROP/-PROP spelling of a boolean CPU property (SPDK's lines pass -pmu).
    run("-cpu host,-pmu,+migratable");
    fail_with("-cpu host,+pmu", &["-cpu", "pmu=on", "no virtual PMU"]);
    fail_with(
        "-overcommit mem-lock=on",
        &["-overcommit", "mem-lock=on", "mlock"],
    );
    fail_with(
        "-machine pc,kernel_irqchip=split",
        &["-machine", "kernel_irqchip=split", "in-kernel"],
    );
    fail_with(
        "-machine pc,kernel-irqchip=off",
        &["-machine", "kernel-irqchip=off", "in-kernel"],
    );
    fail_with("-vga std", &["-vga", "std", "graphics"]);
    fail_with("-device qemu-xhci,id=usb", &["-device", "qemu-xhci", "USB"]);
    fail_with(
        "-device piix3-usb-uhci",
        &["-device", "piix3-usb-uhci", "USB"],
    );
}

#[test]
fn smp_maxcpus_above_cpus_runs_cpus_vcpus() {
    let c = run("-smp 2,maxcpus=4");
    assert_eq!((c.smp.cpus, c.smp.maxcpus), (2, 4));
}

#[test]
fn chardevs_for_the_serial_port() {
    let c = run(
        "-chardev stdio,id=con,mux=on,signal=off -serial chardev:con \
                 -mon chardev=con,mode=readline",
    );
    assert_eq!(c.serial, SerialConfig::Stdio);
    assert!(c.monitors.is_empty());
    let c = run("-chardev file,id=f,path=/tmp/out.log -serial chardev:f");
    assert_eq!(c.serial, SerialConfig::File(PathBuf::from("/tmp/out.log")));
    let c = run("-chardev pipe,id=p,path=/tmp/vm -serial chardev:p");
    assert_eq!(c.serial, SerialConfig::Pipe(PathBuf::from("/tmp/vm")));
    assert_eq!(
        run("-serial pipe:/tmp/vm").serial,
        SerialConfig::Pipe(PathBuf::from("/tmp/vm"))
    );
    let c = run("-chardev socket,id=s,path=/tmp/ser.sock,server=on,wait=off -serial chardev:s");
    assert_eq!(
        c.serial,
        SerialConfig::UnixServer {
            path: PathBuf::from("/tmp/ser.sock"),
            wait: false
        }
    );
    assert!(c.monitors.is_empty());
    // A server socket used by neither a -serial nor a -mon is still an error.
    fail_with(
        "-chardev socket,id=s,path=/tmp/x,server=on,wait=off",
        &["-chardev", "'s'", "-mon"],
    );
    fail_with("-serial chardev:nope", &["-serial", "'nope'", "not found"]);
    fail_with(
        "-chardev file,id=f,path=/tmp/a -serial chardev:f -device isa-debugcon,chardev=f",
        &["-device", "'f'", "already in use"],
    );
    fail_with("-chardev file,id=f", &["-chardev", "'path'"]);
    fail_with(
        "-chardev file,id=f,path=/tmp/a -chardev stdio,id=f",
        &["-chardev", "duplicate", "'f'"],
    );
    fail_with(
        "-chardev stdio,id=con -mon chardev=con",
        &["-mon", "not a server=on socket"],
    );
}

#[test]
fn isa_debug_devices() {
    let c = run(
        "-chardev file,id=dbg,path=/tmp/dbg.log -device isa-debugcon,iobase=0x402,chardev=dbg \
                 -device isa-debug-exit,iobase=0xf4,iosize=0x04",
    );
    assert_eq!(
        c.platform.isa_devices,
        [
            IsaDeviceConfig::DebugCon {
                iobase: 0x402,
                output: SerialConfig::File(PathBuf::from("/tmp/dbg.log")),
                readback: 0xe9
            },
            IsaDeviceConfig::DebugExit {
                iobase: 0xf4,
                iosize: 4
            }
        ]
    );
    let c = run("-chardev stdio,id=o -device isa-debugcon,chardev=o -device isa-debug-exit");
    assert_eq!(
        c.platform.isa_devices,
        [
            IsaDeviceConfig::DebugCon {
                iobase: 0xe9,
                output: SerialConfig::Stdio,
                readback: 0xe9
            },
            IsaDeviceConfig::DebugExit {
                iobase: 0x501,
                iosize: 2
            }
        ]
    );
    fail_with("-device isa-debugcon", &["-device", "'chardev'"]);
    fail_with("-device isa-debug-exit,iosize=3", &["iosize", "1, 2 or 4"]);
}

#[test]
fn device_transport_and_net_properties() {
    let shared = "-object memory-backend-memfd,id=mem,size=128M,share=on -numa node,memdev=mem \
                  -chardev socket,id=c0,path=/s";
    let c = run(&format!(
        "{shared} -netdev vhost-user,id=n0,chardev=c0,vhostforce=on \
         -device virtio-net-pci,netdev=n0,vectors=3,packed=on,page-per-vq=on,\
rx_queue_size=512,tx_queue_size=1024,mrg_rxbuf=off,csum=on,disable-legacy=on"
    ));
    let d = &c.devices[0];
    assert_eq!(d.msix_vectors, Some(3));
    assert!(d.packed);
    assert_eq!((d.queue_size, d.tx_queue_size), (Some(512), Some(1024)));
    assert_eq!(d.hidden_features, 1 << vu_spec::net::VIRTIO_NET_F_MRG_RXBUF);
    fail_with(
        &format!("{shared} -device vhost-user-blk-pci,chardev=c0,disable-legacy=off"),
        &["disable-legacy=off", "modern-only"],
    );
    fail_with(
        &format!("{shared} -device vhost-user-blk-pci,chardev=c0,vectors=0"),
        &["vectors=0", "MSI-X"],
    );
    fail_with(
        &format!(
            "{shared} -netdev vhost-user,id=n0,chardev=c0 \
             -device virtio-net-pci,netdev=n0,rx_queue_size=100"
        ),
        &["rx_queue_size", "power of two"],
    );
}

#[test]
fn machine_none_needs_no_kernel_and_takes_no_devices() {
    use crate::cli::{CliAction, parse};
    let args =
        super::argv("-machine none,accel=kvm:tcg -nodefaults -qmp unix:/tmp/q,server=on,wait=off");
    let Ok(CliAction::Run(c)) = parse(&args) else {
        panic!("-machine none without -kernel")
    };
    assert_eq!(c.machine, crate::config::MachineType::None);
    let args = super::argv(
        "-machine none -chardev socket,id=c,path=/s -device vhost-user-rng-pci,chardev=c",
    );
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("-machine none"), "{err}");
}

#[test]
fn libvirt_monitor_line_with_an_id() {
    let c = run("-chardev socket,id=charmonitor,fd=1729,server=on,wait=off \
                 -mon chardev=charmonitor,id=monitor,mode=control");
    assert_eq!(c.monitors.len(), 1);
    assert_eq!(c.monitors[0].label, "charmonitor");
}

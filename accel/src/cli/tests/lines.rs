//! Whole QEMU-style command lines and the VmConfig they produce.

use std::path::PathBuf;

use super::super::{CliAction, parse};
use super::{argv, run};
use crate::config::{
    BootConfig, CpuConfig, MachineType, MemoryBackendConfig, MemoryConfig, RamSource, SerialConfig,
    SmpConfig, VmConfig,
};

const M: u64 = 1 << 20;
const APPEND: &str = "console=ttyS0 panic=-1 reboot=k quiet noxsave nofsgsbase clearcpuid=popcnt,cx16,smap,erms,fsrm";

#[test]
fn readme_microvm_line() {
    let line = format!(
        "-accel kvm -cpu host -machine microvm,acpi=off -m 128 -smp 2 -display none \
         -nodefaults -serial stdio -no-reboot -kernel vmlinux -initrd lean.cpio -append \"{APPEND}\""
    );
    let expected = VmConfig {
        name: None,
        machine: MachineType::Microvm,
        acpi: false,
        cpu: CpuConfig {
            model: "host".into(),
            enable: vec![],
            disable: vec![],
        },
        smp: SmpConfig {
            cpus: 2,
            sockets: 1,
            cores: 2,
            threads: 1,
            maxcpus: 2,
        },
        memory: MemoryConfig {
            size: 128 * M,
            backends: vec![MemoryBackendConfig {
                id: None,
                size: 128 * M,
                share: false,
                source: RamSource::Memfd { hugetlb: None },
                prealloc: false,
            }],
        },
        boot: BootConfig {
            kernel: PathBuf::from("vmlinux"),
            initrd: Some(PathBuf::from("lean.cpio")),
            cmdline: APPEND.into(),
        },
        serial: SerialConfig::Stdio,
        no_reboot: true,
        chardevs: vec![],
        netdevs: vec![],
        devices: vec![],
        pci_bridges: vec![],
        spawned: vec![],
        timing: false,
        monitors: vec![],
        lifecycle: Default::default(),
        platform: Default::default(),
    };
    assert_eq!(run(&line), expected);
}

#[test]
fn readme_pc_line_with_sockets() {
    let c = run(&format!(
        "-enable-kvm -cpu host -M pc -m 256 -smp 2,sockets=2 -nographic -no-reboot \
         -kernel /guest/vmlinux -append \"{APPEND}\" --timing"
    ));
    assert_eq!(c.machine, MachineType::Pc);
    assert_eq!(
        c.smp,
        SmpConfig {
            cpus: 2,
            sockets: 2,
            cores: 1,
            threads: 1,
            maxcpus: 2
        }
    );
    assert_eq!(c.memory.size, 256 * M);
    assert_eq!(c.serial, SerialConfig::Stdio);
    assert_eq!(c.boot.kernel, PathBuf::from("/guest/vmlinux"));
    assert_eq!(c.boot.initrd, None);
    assert_eq!(c.boot.cmdline, APPEND);
    assert!(c.timing && c.no_reboot);
}

#[test]
fn defaults() {
    let c = run("");
    assert_eq!(c.machine, MachineType::Pc);
    assert_eq!(c.cpu.model, "host");
    assert_eq!(c.smp, SmpConfig::default());
    assert_eq!(c.memory.size, 128 * M);
    assert_eq!(c.serial, SerialConfig::Stdio);
    assert_eq!(c.boot.cmdline, "");
    assert!(!c.no_reboot && !c.timing && c.name.is_none());
}

#[test]
fn double_dash_and_aliases() {
    let c = run("--machine q35 --m 64 --smp 3 --no-reboot --name vm1 --timing");
    assert_eq!(c.machine, MachineType::Q35);
    assert_eq!(c.memory.size, 64 * M);
    assert_eq!(c.smp.cpus, 3);
    assert_eq!(c.name.as_deref(), Some("vm1"));
    assert!(c.no_reboot && c.timing);
    assert!(run("-timing").timing);
    assert_eq!(run("-M type=pc-q35-7.2").machine, MachineType::Q35);
    assert_eq!(run("-M pc-i440fx-7.2").machine, MachineType::Pc);
}

#[test]
fn machine_props_merge_and_harmless_ones() {
    let c = run("-machine microvm -machine accel=kvm,dump-guest-core=off,mem-merge=on,usb=off");
    assert_eq!(c.machine, MachineType::Microvm);
    let c = run("-machine type=q35,accel=kvm:kvm,kernel-irqchip=on,acpi=auto");
    assert_eq!(c.machine, MachineType::Q35);
    assert!(c.acpi);
    // ACPI by default, as QEMU's pc; off with acpi=off or -no-acpi.
    assert!(run("").acpi && run("-M pc,acpi=on").acpi);
    assert!(!run("-M pc,acpi=off").acpi && !run("-no-acpi").acpi);
    run("-accel kvm,kernel-irqchip=on -accel kvm");
}

#[test]
fn help_and_version() {
    for h in ["-h", "-help", "--help"] {
        assert!(matches!(parse(&argv(h)), Ok(CliAction::Help)), "{h}");
    }
    for v in ["-version", "--version"] {
        assert!(matches!(parse(&argv(v)), Ok(CliAction::Version)), "{v}");
    }
    // Acted on when reached, like QEMU: later (even bad) options are not looked at.
    assert!(matches!(
        parse(&argv("-m 64 --help -bogus")),
        Ok(CliAction::Help)
    ));
    assert!(parse(&argv("-bogus --help")).is_err());
}

#[test]
fn help_text_documents_every_option() {
    let help = super::super::help_text();
    for opt in [
        "-accel",
        "-enable-kvm",
        "-machine",
        "-M",
        "-cpu",
        "-smp",
        "-m ",
        "-kernel",
        "-initrd",
        "-append",
        "-object",
        "-numa",
        "-serial",
        "-nographic",
        "-display",
        "-vga",
        "-nodefaults",
        "-no-user-config",
        "-parallel",
        "-monitor",
        "-no-acpi",
        "-no-hpet",
        "-no-reboot",
        "-name",
        "-chardev",
        "-device",
        "-netdev",
        "--timing",
        "-help",
        "-version",
        "-daemonize",
        "-qmp",
        "-mon",
        "-S ",
        "-no-shutdown",
        "-pidfile",
        "-uuid",
        "mon:stdio",
        "vhost-user-blk-pci",
        "vhost-user-device-pci",
        "virtio-net-pci",
        "share=on",
    ] {
        assert!(help.contains(opt), "help lacks {opt}");
    }
}

#[test]
fn smp_topology_rules() {
    let smp = |s: &str| run(&format!("-smp {s}")).smp;
    let t = |cpus, sockets, cores, threads| SmpConfig {
        cpus,
        sockets,
        cores,
        threads,
        maxcpus: cpus,
    };
    // Cores are preferred over sockets (QEMU >= 6.2).
    assert_eq!(smp("4"), t(4, 1, 4, 1));
    assert_eq!(smp("cpus=4"), t(4, 1, 4, 1));
    assert_eq!(smp("4,sockets=2"), t(4, 2, 2, 1));
    assert_eq!(smp("4,cores=2"), t(4, 2, 2, 1));
    assert_eq!(smp("8,sockets=2,cores=2"), t(8, 2, 2, 2));
    assert_eq!(smp("4,threads=2"), t(4, 1, 2, 2));
    // No cpus: the product of what is given.
    assert_eq!(smp("sockets=2,cores=3"), t(6, 2, 3, 1));
    assert_eq!(smp("maxcpus=4"), t(4, 1, 4, 1));
    assert_eq!(smp("4,maxcpus=4,dies=1,clusters=1"), t(4, 1, 4, 1));
    assert_eq!(smp("254"), t(254, 1, 254, 1));
    // Repeated -smp options merge.
    assert_eq!(run("-smp 4 -smp sockets=4").smp, t(4, 4, 1, 1));
}

#[test]
fn cpu_features() {
    let c = run("-cpu host,+x2apic,-popcnt,avx2=off,sse4_1,kvm_pv_eoi=on,sse3=off").cpu;
    assert_eq!(c.model, "host");
    // Names are kept as written; the VMM's table (arch::cpuid) resolves spellings.
    assert_eq!(c.enable, ["x2apic", "sse4_1", "kvm_pv_eoi"]);
    assert_eq!(c.disable, ["popcnt", "avx2", "sse3"]);
    // The last mention wins.
    let c = run("-cpu max,-x2apic,+x2apic").cpu;
    assert_eq!(c.model, "max");
    assert_eq!(c.enable, ["x2apic"]);
    assert!(c.disable.is_empty());
    // A later -cpu replaces an earlier one.
    assert_eq!(run("-cpu host,+avx2 -cpu max").cpu.enable.len(), 0);
    // Different spellings of one flag are the same flag.
    let c = run("-cpu host,+sse4.1,sse4_1=off").cpu;
    assert!(c.enable.is_empty());
    assert_eq!(c.disable, ["sse4_1"]);
}

#[test]
fn serial_choices() {
    let s = |line: &str| run(line).serial;
    assert_eq!(s("-serial stdio"), SerialConfig::Stdio);
    assert_eq!(s("-serial mon:stdio"), SerialConfig::Stdio);
    assert_eq!(s("-nographic"), SerialConfig::Stdio);
    assert_eq!(s("-serial null"), SerialConfig::Null);
    assert_eq!(s("-serial none"), SerialConfig::Null);
    assert_eq!(s("-nodefaults"), SerialConfig::Null);
    assert_eq!(s("-nodefaults -nographic"), SerialConfig::Null);
    assert_eq!(s("-nodefaults -serial stdio"), SerialConfig::Stdio);
    assert_eq!(
        s("-serial file:/tmp/out,,1.log"),
        SerialConfig::File("/tmp/out,,1.log".into())
    );
    assert_eq!(
        s("-serial unix:/tmp/s.sock,server=on,wait=off"),
        SerialConfig::UnixServer {
            path: "/tmp/s.sock".into(),
            wait: false
        }
    );
    assert_eq!(
        s("-serial unix:/tmp/s.sock,server"),
        SerialConfig::UnixServer {
            path: "/tmp/s.sock".into(),
            wait: true
        }
    );
    assert_eq!(
        s("-serial unix:/tmp/a,,b,server,nowait"),
        SerialConfig::UnixServer {
            path: "/tmp/a,b".into(),
            wait: false
        }
    );
}

#[test]
fn harmless_options() {
    let c = run(
        "-display none -vga none -parallel none -monitor none -no-user-config -no-acpi \
         -no-hpet -nographic -name guest=vm2,debug-threads=on",
    );
    assert_eq!(c.name.as_deref(), Some("vm2"));
}

#[test]
fn memory_backends_compose_ram() {
    let c = run("-m 256 -object memory-backend-memfd,id=m1,size=128M \
         -object memory-backend-memfd,id=m0,size=128M,share=on,hugetlb=off,seal=on \
         -numa node,memdev=m0 -numa node,memdev=m1");
    assert_eq!(c.memory.size, 256 * M);
    let ids: Vec<_> = c.memory.backends.iter().map(|b| b.id.clone()).collect();
    assert_eq!(ids, [Some("m0".to_string()), Some("m1".to_string())]);
    assert!(
        c.memory
            .backends
            .iter()
            .all(|b| b.share && b.size == 128 * M)
    );
    // nodeid orders the layout.
    let c = run("-m 256 -object memory-backend-memfd,id=a,size=64M \
         -object memory-backend-memfd,id=b,size=192M \
         -numa node,memdev=a,nodeid=1 -numa node,memdev=b,nodeid=0");
    let sizes: Vec<_> = c.memory.backends.iter().map(|b| b.size).collect();
    assert_eq!(sizes, [192 * M, 64 * M]);
    // -machine memory-backend: -m may be omitted (the backend's size is used).
    let c = run("-object memory-backend-memfd,id=mem,size=512M,share=off -M pc,memory-backend=mem");
    assert_eq!(c.memory.size, 512 * M);
    assert_eq!(
        c.memory.backends,
        [MemoryBackendConfig {
            id: Some("mem".into()),
            size: 512 * M,
            share: false,
            source: RamSource::Memfd { hugetlb: None },
            prealloc: false,
        }]
    );
    let c =
        run("-m 1G -object memory-backend-memfd,id=mem,size=1G,hugetlb=on -M memory-backend=mem");
    assert_eq!(
        c.memory.backends[0].source,
        RamSource::Memfd { hugetlb: Some(0) }
    );
    assert!(c.memory.backends[0].share);
    // Unused objects are fine (QEMU creates them but they are not RAM).
    let c = run("-object memory-backend-memfd,id=spare,size=4M");
    assert_eq!(c.memory.backends[0].id, None);
}

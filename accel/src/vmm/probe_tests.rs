//! TEMPORARY: boots the guest without the CLI (until it lands). Run with
//! `PROBE_KERNEL=... PROBE_INITRD=... PROBE_SMP=1 cargo test -p accel probe -- --ignored --nocapture`.
use crate::config::*;

#[test]
#[ignore]
fn probe_boot() {
    let env = |k: &str| std::env::var(k).ok();
    let smp: u8 = env("PROBE_SMP").and_then(|s| s.parse().ok()).unwrap_or(1);
    let size = 128u64 << 20;
    let cfg = VmConfig {
        name: None,
        machine: MachineType::Pc,
        cpu: CpuConfig {
            model: "host".into(),
            enable: vec![],
            disable: vec![],
        },
        smp: SmpConfig {
            cpus: smp,
            sockets: smp,
            cores: 1,
            threads: 1,
            maxcpus: smp,
        },
        memory: MemoryConfig {
            size,
            backends: vec![MemoryBackendConfig {
                id: None,
                size,
                share: false,
                hugetlb: false,
            }],
        },
        boot: BootConfig {
            kernel: env("PROBE_KERNEL").unwrap().into(),
            initrd: env("PROBE_INITRD").map(Into::into),
            cmdline: env("PROBE_APPEND").unwrap_or_default(),
        },
        serial: SerialConfig::Stdio,
        no_reboot: env("PROBE_REBOOT").is_none(),
        chardevs: vec![],
        devices: vec![],
        timing: true,
    };
    let r = super::run(cfg);
    eprintln!("RESULT: {r:?}");
}

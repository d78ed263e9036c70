//! `-smp [cpus=]N[,sockets=S][,dies=D][,clusters=C][,cores=C][,threads=T][,maxcpus=M]` with
//! QEMU 7.2's topology rules (hw/core/machine-smp.c): missing values are computed from the
//! given ones preferring cores over sockets, then the product must equal maxcpus.

use super::CliError;
use super::props::Props;
use crate::config::SmpConfig;

/// accel's vCPU limit: what its MP table can list (xAPIC ids 0..=253; 255 is the broadcast
/// id and the IOAPIC takes the id after the last CPU).
pub(super) const MAX_VCPUS: u64 = crate::arch::mptable::MAX_CPUS as u64;

pub(super) const SMP_PROPS: &[&str] = &[
    "cpus",
    "sockets",
    "dies (1 only)",
    "clusters (1 only)",
    "cores",
    "threads",
    "maxcpus (>= cpus; no hotplug)",
];

pub(super) fn parse_smp(mut props: Props) -> Result<SmpConfig, CliError> {
    let option = props.option();
    let mut get = |key: &str| -> Result<Option<u64>, CliError> {
        let value = props.take_uint(key)?;
        if value == Some(0) {
            return Err(CliError::Invalid {
                option: option.into(),
                message: format!(
                    "Invalid CPU topology: CPU topology parameters must be greater than zero \
                     ({key}=0)"
                ),
            });
        }
        Ok(value)
    };
    let cpus = get("cpus")?;
    let sockets = get("sockets")?;
    let dies = get("dies")?;
    let clusters = get("clusters")?;
    let cores = get("cores")?;
    let threads = get("threads")?;
    let maxcpus = get("maxcpus")?;
    props.finish(SMP_PROPS)?;

    let invalid = |message: String| CliError::Invalid {
        option: option.into(),
        message,
    };
    if let Some(d) = dies.filter(|&d| d > 1) {
        return Err(CliError::UnsupportedValue {
            option: option.into(),
            property: "dies".into(),
            value: d.to_string(),
            reason: "accel describes CPUs with MP tables, which have no dies level".into(),
        });
    }
    if clusters.is_some_and(|c| c > 1) {
        return Err(invalid(
            "clusters not supported by this machine's CPU topology".into(),
        ));
    }

    // QEMU: 0 stands for "not given" in the computation below.
    let (mut sockets, mut cores, mut threads) = (
        sockets.unwrap_or(0),
        cores.unwrap_or(0),
        threads.unwrap_or(0),
    );
    let mut maxcpus = maxcpus.unwrap_or(0);
    let mut cpus = cpus.unwrap_or(0);
    // Guard the arithmetic: no real topology comes near this.
    let limit = 1u64 << 32;
    if [sockets, cores, threads, maxcpus, cpus]
        .iter()
        .any(|&v| v > limit)
    {
        return Err(invalid(format!(
            "Invalid SMP CPUs: accel supports at most {MAX_VCPUS} vCPUs"
        )));
    }
    if cpus == 0 && maxcpus == 0 {
        sockets = sockets.max(1);
        cores = cores.max(1);
        threads = threads.max(1);
    } else {
        if maxcpus == 0 {
            maxcpus = cpus;
        }
        if cores == 0 {
            sockets = sockets.max(1);
            threads = threads.max(1);
            cores = maxcpus / (sockets * threads);
        } else if sockets == 0 {
            threads = threads.max(1);
            sockets = maxcpus / (cores * threads);
        }
        if threads == 0 {
            threads = maxcpus / (sockets * cores);
        }
    }
    let product = sockets.saturating_mul(cores).saturating_mul(threads);
    if maxcpus == 0 {
        maxcpus = product;
    }
    if cpus == 0 {
        cpus = maxcpus;
    }
    let hierarchy =
        format!("sockets ({sockets}) * dies (1) * cores ({cores}) * threads ({threads})");
    if product != maxcpus {
        return Err(invalid(format!(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: \
             {hierarchy} != maxcpus ({maxcpus})"
        )));
    }
    if maxcpus < cpus {
        return Err(invalid(format!(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: \
             {hierarchy} == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        )));
    }
    if maxcpus > MAX_VCPUS {
        return Err(invalid(format!(
            "Invalid SMP CPUs {maxcpus}: accel supports at most {MAX_VCPUS} vCPUs"
        )));
    }
    if maxcpus > cpus {
        // Accepted as QEMU lines write it; accel creates `cpus` vCPUs and has no CPU hotplug,
        // so the others never come online (QMP device_add of a CPU is refused).
        log::info!("-smp: maxcpus={maxcpus} accepted; {cpus} vCPUs run (accel has no CPU hotplug)");
    }
    // All values are <= maxcpus <= 255 here.
    let narrow = |v: u64| u8::try_from(v).unwrap_or(u8::MAX);
    Ok(SmpConfig {
        cpus: narrow(cpus),
        sockets: narrow(sockets),
        cores: narrow(cores),
        threads: narrow(threads),
        maxcpus: narrow(maxcpus),
    })
}

//! QMP command dispatch: argument checks with QEMU's error texts, the queries, and the
//! lifecycle commands (forwarded to the main thread).

use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::wire::{QmpError, Request};
use super::{HotplugCommand, PciFunctionInfo, QmpShared, RunState, VmCommand};

/// Every command accel implements (what `query-commands` lists).
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "query-name",
    "query-uuid",
    "query-kvm",
    "query-target",
    "query-cpus-fast",
    "query-pci",
    "query-chardev",
    "query-memory-size-summary",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "human-monitor-command",
    "chardev-add",
    "chardev-remove",
    "netdev_add",
    "netdev_del",
    "device_add",
    "device_del",
];

/// The QEMU release whose protocol accel speaks (reported by the greeting and query-version).
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 0);

/// What dispatch needs to know about the client and the monitors.
pub struct Session<'a> {
    pub shared: &'a QmpShared,
    /// `query-chardev` entries for the monitors: (label, filename, connected).
    pub monitors: Vec<(String, String, bool)>,
    pub negotiated: &'a mut bool,
}

/// The greeting a client gets on connect (no capabilities: accel has no out-of-band
/// execution).
pub fn greeting(pretty: bool) -> String {
    super::wire::greeting(&version(), &json!([]), pretty)
}

fn version() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({
        "qemu": {"major": major, "minor": minor, "micro": micro},
        "package": format!("accel {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Runs one request; `Ok` is the `return` value.
pub fn dispatch(session: &mut Session, req: &Request) -> Result<Value, QmpError> {
    let name = req.execute.as_str();
    if !*session.negotiated {
        if name != "qmp_capabilities" {
            return Err(QmpError::not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let mut args = Args::new(&req.arguments);
        if let Some(enable) = args.take("enable") {
            match enable {
                Value::Array(caps) if caps.is_empty() => {}
                Value::Array(caps) => {
                    let cap = caps.first().and_then(Value::as_str).unwrap_or("");
                    return Err(QmpError::generic(format!(
                        "Capability '{cap}' not available"
                    )));
                }
                _ => return Err(bad_type("enable", "array")),
            }
        }
        args.finish()?;
        *session.negotiated = true;
        return Ok(json!({}));
    }
    if name == "qmp_capabilities" {
        return Err(QmpError::not_found(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    if !COMMANDS.contains(&name) {
        return Err(QmpError::not_found(format!(
            "The command {name} has not been found"
        )));
    }
    if let Some(command) = hotplug_command(name, &req.arguments)? {
        return lifecycle(session.shared, VmCommand::Hotplug(command));
    }
    let mut args = Args::new(&req.arguments);
    if name == "human-monitor-command" {
        let line = match args.take("command-line") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad_type("command-line", "string")),
            None => return Err(QmpError::generic("Parameter 'command-line' is missing")),
        };
        if let Some(v) = args.take("cpu-index")
            && !v.is_i64()
        {
            return Err(bad_type("cpu-index", "integer"));
        }
        args.finish()?;
        return hmp(session, &line).map(Value::String);
    }
    args.finish()?;
    let shared = session.shared;
    let info = &shared.info;
    let empty = json!({});
    Ok(match name {
        "query-version" => version(),
        "query-commands" => Value::Array(COMMANDS.iter().map(|c| json!({"name": c})).collect()),
        "query-status" => {
            let s = shared.status();
            json!({"status": s.as_str(), "singlestep": false, "running": s == RunState::Running})
        }
        "query-name" => match &info.name {
            Some(n) => json!({"name": n}),
            None => empty,
        },
        "query-uuid" => json!({
            "UUID": info.uuid.as_deref().unwrap_or("00000000-0000-0000-0000-000000000000")
        }),
        "query-kvm" => json!({"enabled": true, "present": true}),
        "query-target" => json!({"arch": "x86_64"}),
        "query-cpus-fast" => Value::Array(
            info.cpus
                .iter()
                .map(|c| {
                    json!({
                        "cpu-index": c.index,
                        "qom-path": format!("/machine/unattached/device[{}]", c.index),
                        "thread-id": thread_id(shared, c.index),
                        "props": {"socket-id": c.socket, "core-id": c.core, "thread-id": c.thread},
                        "target": "x86_64",
                    })
                })
                .collect(),
        ),
        "query-pci" => json!([{"bus": 0, "devices": pci_devices(shared)}]),
        "query-chardev" => {
            let mut out: Vec<Value> = session
                .monitors
                .iter()
                .map(|(label, filename, open)| {
                    json!({"label": label, "filename": filename, "frontend-open": open})
                })
                .collect();
            out.extend(info.chardevs.iter().map(|(label, filename)| {
                json!({"label": label, "filename": filename, "frontend-open": true})
            }));
            Value::Array(out)
        }
        "query-memory-size-summary" => json!({"base-memory": info.ram_size, "plugged-memory": 0}),
        "stop" => lifecycle(shared, VmCommand::Stop)?,
        "cont" => lifecycle(shared, VmCommand::Cont)?,
        "system_reset" => lifecycle(shared, VmCommand::SystemReset)?,
        "system_powerdown" => lifecycle(shared, VmCommand::Powerdown)?,
        "quit" => lifecycle(shared, VmCommand::Quit)?,
        _ => unreachable!("every name in COMMANDS is handled"),
    })
}

/// The hotplug commands' argument shapes (QAPI's checks); `None` for other commands.
fn hotplug_command(
    name: &str,
    arguments: &Map<String, Value>,
) -> Result<Option<HotplugCommand>, QmpError> {
    let id_of = |args: &mut Args| -> Result<String, QmpError> {
        match args.take("id") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad_type("id", "string")),
            None => Err(QmpError::generic("Parameter 'id' is missing")),
        }
    };
    let mut args = Args::new(arguments);
    let command = match name {
        "chardev-add" => {
            let id = id_of(&mut args)?;
            let backend = match args.take("backend") {
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(bad_type("backend", "object")),
                None => return Err(QmpError::generic("Parameter 'backend' is missing")),
            };
            HotplugCommand::ChardevAdd { id, backend }
        }
        "chardev-remove" => HotplugCommand::ChardevRemove {
            id: id_of(&mut args)?,
        },
        "netdev_del" => HotplugCommand::NetdevDel {
            id: id_of(&mut args)?,
        },
        "device_del" => HotplugCommand::DeviceDel {
            id: id_of(&mut args)?,
        },
        "netdev_add" => {
            for key in ["type", "id"] {
                if !arguments.contains_key(key) {
                    return Err(QmpError::generic(format!("Parameter '{key}' is missing")));
                }
            }
            return Ok(Some(HotplugCommand::NetdevAdd(arguments.clone())));
        }
        "device_add" => {
            match arguments.get("driver") {
                Some(Value::String(_)) => {}
                Some(_) => return Err(bad_type("driver", "string")),
                None => return Err(QmpError::generic("Parameter 'driver' is missing")),
            }
            return Ok(Some(HotplugCommand::DeviceAdd(arguments.clone())));
        }
        _ => return Ok(None),
    };
    args.finish()?;
    Ok(Some(command))
}

fn lifecycle(shared: &QmpShared, command: VmCommand) -> Result<Value, QmpError> {
    shared.call(command).map(|()| json!({}))
}

fn thread_id(shared: &QmpShared, index: u32) -> i32 {
    shared
        .vcpu_tids
        .get(index as usize)
        .map_or(0, |t| t.load(Ordering::Acquire))
}

/// QEMU's `pci_class_descriptions` entries for the classes accel's devices use.
fn class_desc(class: u16) -> Option<&'static str> {
    Some(match class {
        0x0100 => "SCSI controller",
        0x0200 => "Ethernet controller",
        0x0600 => "Host bridge",
        0x0601 => "ISA bridge",
        0x0680 => "Bridge",
        0x0780 => "Communication controller",
        0x00ff => "Unclassified device",
        _ => return None,
    })
}

fn pci_devices(shared: &QmpShared) -> Vec<Value> {
    let Some(list) = &shared.info.pci else {
        return Vec::new();
    };
    list().iter().map(pci_device).collect()
}

/// One function as QEMU's `PciDeviceInfo` (a bridge with `pci_bridge` and what is behind it).
fn pci_device(f: &PciFunctionInfo) -> Value {
    let mut class_info = json!({"class": f.class});
    if let Some(desc) = class_desc(f.class) {
        class_info["desc"] = json!(desc);
    }
    let regions: Vec<Value> = f
        .bars
        .iter()
        .map(|b| {
            let address = b.address.map_or(-1, |a| a as i64);
            if b.io {
                json!({"bar": b.index, "type": "io", "address": address, "size": b.size})
            } else {
                json!({"bar": b.index, "type": "memory", "address": address,
                       "size": b.size, "prefetch": b.prefetch, "mem_type_64": b.mem64})
            }
        })
        .collect();
    let mut dev = json!({
        "bus": f.bus, "slot": f.slot, "function": f.function,
        "class_info": class_info,
        "id": {"vendor": f.vendor, "device": f.device,
               "subsystem-vendor": f.subsystem_vendor, "subsystem": f.subsystem},
        "irq_pin": f.irq_pin,
        "qdev_id": f.qdev_id,
        "regions": regions,
    });
    if f.irq_pin != 0 {
        dev["irq"] = json!(f.irq_line);
    }
    if let Some(b) = &f.bridge {
        let range = |(base, limit): (u64, u64)| json!({"base": base, "limit": limit});
        dev["pci_bridge"] = json!({
            "bus": {"number": b.primary, "secondary": b.secondary, "subordinate": b.subordinate,
                    "io_range": range(b.io), "memory_range": range(b.memory),
                    "prefetchable_range": range(b.prefetch)},
            "devices": b.devices.iter().map(pci_device).collect::<Vec<_>>(),
        });
    }
    dev
}

/// What `help` lists: the HMP commands accel has.
const HMP_HELP: &str = "cont|c -- resume emulation\r\n\
help|? -- show the help\r\n\
info cpus|kvm|name|pci|status|uuid|version -- show information about the VM\r\n\
quit|q -- quit the emulator\r\n\
stop -- stop emulation\r\n\
system_powerdown -- send system power down event\r\n\
system_reset -- reset the system\r\n";

/// One line typed at a human monitor (`-monitor`, `-mon mode=readline`): its output, or the
/// error as QEMU's HMP prints it.
pub(super) fn hmp_line(session: &mut Session, line: &str) -> String {
    match hmp(session, line) {
        Ok(text) => text,
        Err(e) => format!("Error: {}\r\n", e.desc),
    }
}

/// `human-monitor-command`: the HMP commands a management tool uses with accel.
fn hmp(session: &mut Session, line: &str) -> Result<String, QmpError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let shared = session.shared;
    let cmd = |c| lifecycle(shared, c).map(|_| String::new());
    match words.as_slice() {
        ["info", "status"] => {
            let s = shared.status();
            Ok(match s {
                RunState::Running => "VM status: running\r\n".to_string(),
                RunState::Paused => "VM status: paused\r\n".to_string(),
                other => format!("VM status: paused ({})\r\n", other.as_str()),
            })
        }
        ["info", "cpus"] => Ok(shared
            .info
            .cpus
            .iter()
            .map(|c| {
                let mark = if c.index == 0 { '*' } else { ' ' };
                format!(
                    "{mark} CPU #{}: thread_id={}\r\n",
                    c.index,
                    thread_id(shared, c.index)
                )
            })
            .collect()),
        ["info", "pci"] => Ok(hmp_info_pci(shared)),
        ["info", "version"] => {
            let (a, b, c) = QEMU_VERSION;
            Ok(format!(
                "{a}.{b}.{c} (accel {})\r\n",
                env!("CARGO_PKG_VERSION")
            ))
        }
        ["info", "name"] => Ok(shared
            .info
            .name
            .as_ref()
            .map(|n| format!("{n}\r\n"))
            .unwrap_or_default()),
        ["info", "uuid"] => Ok(format!(
            "{}\r\n",
            shared
                .info
                .uuid
                .as_deref()
                .unwrap_or("00000000-0000-0000-0000-000000000000")
        )),
        ["info", "kvm"] => Ok("kvm support: enabled\r\n".into()),
        ["stop"] => cmd(VmCommand::Stop),
        ["cont"] | ["c"] => cmd(VmCommand::Cont),
        ["system_reset"] => cmd(VmCommand::SystemReset),
        ["system_powerdown"] => cmd(VmCommand::Powerdown),
        ["quit"] | ["q"] => cmd(VmCommand::Quit),
        ["help"] | ["?"] | ["help", ..] => Ok(HMP_HELP.into()),
        [] => Ok(String::new()),
        _ => Ok(format!("unknown command: '{line}'\r\n")),
    }
}

fn hmp_info_pci(shared: &QmpShared) -> String {
    let Some(list) = &shared.info.pci else {
        return String::new();
    };
    let mut all = list();
    // Depth-first, each bridge before what is behind it, as QEMU's `info pci` lists them.
    let mut flat = Vec::new();
    while !all.is_empty() {
        let mut f = all.remove(0);
        if let Some(b) = f.bridge.as_mut() {
            let behind = std::mem::take(&mut b.devices);
            all.splice(0..0, behind);
        }
        flat.push(f);
    }
    let mut out = String::new();
    for f in flat {
        out.push_str(&format!(
            "  Bus {:2}, device {:3}, function {}:\r\n",
            f.bus, f.slot, f.function
        ));
        let what =
            class_desc(f.class).map_or_else(|| format!("Class {:04x}", f.class), str::to_string);
        out.push_str(&format!(
            "    {what}: PCI device {:04x}:{:04x}\r\n      PCI subsystem {:04x}:{:04x}\r\n",
            f.vendor, f.device, f.subsystem_vendor, f.subsystem
        ));
        if f.irq_pin != 0 {
            out.push_str(&format!(
                "      IRQ {}, pin {}\r\n",
                f.irq_line,
                (b'A' + f.irq_pin - 1) as char
            ));
        }
        for b in &f.bars {
            let addr = b.address.unwrap_or(u64::MAX);
            let end = addr.wrapping_add(b.size).wrapping_sub(1);
            if b.io {
                out.push_str(&format!(
                    "      BAR{}: I/O at {addr:#06x} [{end:#06x}].\r\n",
                    b.index
                ));
            } else {
                out.push_str(&format!(
                    "      BAR{}: {} bit{} memory at {addr:#010x} [{end:#010x}].\r\n",
                    b.index,
                    if b.mem64 { 64 } else { 32 },
                    if b.prefetch { " prefetchable" } else { "" }
                ));
            }
        }
        out.push_str(&format!("      id \"{}\"\r\n", f.qdev_id));
    }
    out
}

fn bad_type(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

/// Arguments being checked: taken one by one; whatever is left is "unexpected".
struct Args<'a> {
    left: Vec<(&'a String, &'a Value)>,
}

impl<'a> Args<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Args {
            left: map.iter().collect(),
        }
    }

    fn take(&mut self, key: &str) -> Option<&'a Value> {
        let i = self.left.iter().position(|(k, _)| k.as_str() == key)?;
        Some(self.left.remove(i).1)
    }

    fn finish(self) -> Result<(), QmpError> {
        match self.left.first() {
            None => Ok(()),
            Some((k, _)) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
        }
    }
}

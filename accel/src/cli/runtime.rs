//! The QMP hotplug commands' arguments (`chardev-add`, `netdev_add`, `device_add`), parsed
//! by the same code as `-chardev`, `-netdev` and `-device`: a device added at runtime takes
//! exactly the properties the command line takes, written as JSON.

use serde_json::{Map, Value};

use super::CliError;
use super::devices;
use super::props::Props;
use crate::config::{ChardevConfig, NetdevConfig, VhostUserDeviceConfig};

/// A `device_add` before its netdev (if any) is resolved.
#[derive(Debug)]
pub struct RuntimeDevice {
    pub driver: String,
    pub config: VhostUserDeviceConfig,
    /// virtio-net-pci: `netdev=` and `mq=`.
    pub netdev: Option<(String, bool)>,
    pub pci_func: u8,
}

/// Queues of a virtio-net-pci on `netdev` (`-netdev`'s rule: all pairs only with mq=on).
pub fn netdev_queues(netdev: &NetdevConfig, mq: bool) -> Option<u16> {
    devices::netdev_queues(netdev, mq)
}

fn items(option: &'static str, map: &Map<String, Value>) -> Result<Props, CliError> {
    let items = super::json::flatten_map(map.clone()).map_err(|message| CliError::Invalid {
        option: option.into(),
        message,
    })?;
    Ok(Props::from_items(option, items))
}

/// `device_add`'s arguments: `-device`'s properties.
pub fn device(args: &Map<String, Value>) -> Result<RuntimeDevice, CliError> {
    let d = devices::parse_device(items("device_add", args)?)?;
    Ok(RuntimeDevice {
        driver: d.driver,
        config: d.config,
        netdev: d.netdev,
        pci_func: d.pci_func,
    })
}

/// `netdev_add`'s arguments: `-netdev`'s properties (`type` vhost-user only).
pub fn netdev(args: &Map<String, Value>) -> Result<NetdevConfig, CliError> {
    devices::parse_netdev(items("netdev_add", args)?)
}

/// `chardev-add`'s `ChardevBackend` (QAPI: `{"type": "socket", "data": {"addr": {"type":
/// "unix", "data": {"path": P}}, "server": false, "reconnect": N}}`), as `-chardev socket`;
/// with `"server": true`, accel listens on P (the caller binds) and the backend connects.
pub fn chardev(id: &str, backend: &Value) -> Result<ChardevConfig, CliError> {
    let invalid = |message: &str| CliError::Invalid {
        option: "chardev-add".into(),
        message: message.into(),
    };
    let kind = backend
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("backend.type is missing"))?;
    let data = backend.get("data").and_then(Value::as_object);
    let mut list = vec![
        ("backend".to_string(), kind.to_string()),
        ("id".to_string(), id.to_string()),
    ];
    let mut server = false;
    if kind == "socket" {
        let data = data.ok_or_else(|| invalid("backend.data is missing"))?;
        // QAPI's defaults: server false; `wait` (server only) false.
        server = data.get("server").and_then(Value::as_bool) == Some(true);
        let addr = data
            .get("addr")
            .ok_or_else(|| invalid("backend.data.addr is missing"))?;
        match addr.get("type").and_then(Value::as_str) {
            Some("unix") => {
                let path = addr
                    .pointer("/data/path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("backend.data.addr.data.path is missing"))?;
                list.push(("path".into(), path.into()));
            }
            // parse_chardev explains that vhost-user needs a unix socket.
            Some("inet") => list.push(("host".into(), "inet".into())),
            Some(other) => list.push(("fd".into(), other.to_string())),
            None => return Err(invalid("backend.data.addr.type is missing")),
        }
        for (key, value) in data {
            let text = match value {
                Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => continue,
            };
            // A server socket is listening when chardev-add returns; `wait` (for the first
            // connection) is not needed: device_add takes the connection from the backlog.
            let server_only = server && (key == "server" || key == "wait");
            if key != "addr" && !server_only {
                list.push((key.clone(), text));
            }
        }
    }
    let mut chardev = devices::parse_chardev(Props::from_items("chardev-add", list))?;
    if server {
        if chardev.reconnect_secs > 0 {
            return Err(invalid(
                "'reconnect' option is incompatible with socket in server listen mode",
            ));
        }
        chardev.server = true;
    }
    Ok(chardev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn qmp_arguments_go_through_the_command_line_parsers() {
        let d = device(&map(serde_json::json!({
            "driver": "vhost-user-blk-pci", "chardev": "c0", "id": "hd1",
            "num-queues": 2, "addr": "0x5"})))
        .unwrap();
        assert_eq!(d.driver, "vhost-user-blk-pci");
        assert_eq!(d.config.id.as_deref(), Some("hd1"));
        assert_eq!(d.config.chardev, "c0");
        assert_eq!(d.config.num_queues, Some(2));
        assert_eq!(d.config.pci_slot, Some(5));
        let e = device(&map(serde_json::json!({"driver": "vhost-user-blk-pci",
            "chardev": "c0", "bogus": 1})))
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");

        let n = netdev(&map(serde_json::json!({"type": "vhost-user", "id": "n0",
            "chardev": "c1", "queues": 2})))
        .unwrap();
        assert_eq!((n.id.as_str(), n.chardev.as_str()), ("n0", "c1"));
        assert_eq!(netdev_queues(&n, true), Some(4));
        assert_eq!(netdev_queues(&n, false), Some(2));
        let nic = device(&map(serde_json::json!({"driver": "virtio-net-pci",
            "netdev": "n0", "mq": true})))
        .unwrap();
        assert_eq!(nic.netdev, Some(("n0".to_string(), true)));
        assert!(netdev(&map(serde_json::json!({"type": "user", "id": "n1"}))).is_err());

        let c = chardev(
            "c0",
            &serde_json::json!({"type": "socket", "data": {"addr": {"type": "unix",
                "data": {"path": "/tmp/x.sock"}}, "server": false, "reconnect": 3}}),
        )
        .unwrap();
        assert_eq!(c.path, std::path::PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.reconnect_secs, 3);
        let e = chardev(
            "c0",
            &serde_json::json!({"type": "socket", "data": {"addr": {"type": "inet",
                "data": {"host": "h", "port": "1"}}}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unix socket"), "{e}");
        let c = chardev(
            "c0",
            &serde_json::json!({"type": "socket", "data": {"addr": {"type": "unix",
                "data": {"path": "/tmp/x"}}, "server": true, "wait": false}}),
        )
        .unwrap();
        assert!(c.server && c.reconnect_secs == 0, "{c:?}");
        let e = chardev(
            "c0",
            &serde_json::json!({"type": "socket", "data": {"addr": {"type": "unix",
                "data": {"path": "/tmp/x"}}, "server": true, "reconnect": 1}}),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("incompatible with socket in server"),
            "{e}"
        );
        let e = chardev(
            "c0",
            &serde_json::json!({"type": "socket", "data": {"addr": {"type": "unix",
                "data": {"path": "/tmp/x"}}, "wait": true}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("client connect mode"), "{e}");
        assert!(chardev("c0", &serde_json::json!({"type": "pty"})).is_err());
    }
}

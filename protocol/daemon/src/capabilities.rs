//! `--print-capabilities`: the JSON object QEMU's docs/interop/vhost-user.json describes.

/// What a backend program tells libvirt/QEMU about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Program name, for messages (`vhost-user-blk`).
    pub program: &'static str,
    /// vhost-user.json `type`: `block`, `net`, `vsock`, `rng`, `console`, ...
    pub device_type: &'static str,
    /// vhost-user.json features of that type (e.g. `read-only-config`, `blk-file`).
    pub features: &'static [&'static str],
}

impl Capabilities {
    /// `{"type": "...", "features": [...]}` on one line.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "type": self.device_type,
            "features": self.features,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_type_and_features() {
        let c = Capabilities {
            program: "x",
            device_type: "block",
            features: &["read-only-config", "blk-file"],
        };
        let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(v["type"], "block");
        assert_eq!(v["features"][0], "read-only-config");
        assert_eq!(v["features"][1], "blk-file");
        assert_eq!(v.as_object().unwrap().len(), 2);
    }
}

//! QEMU's JSON syntax for `-object`, `-device`, `-netdev` (and `-blockdev`): an argument
//! starting with `{` is a JSON object (what libvirt writes), turned into the same property
//! list the `key=value` parser produces, so every option parser sees one form:
//!
//! - strings stay as they are (commas need no escaping: no re-parsing happens);
//! - `true`/`false` become `on`/`off`, numbers their decimal text;
//! - nested objects are flattened with dots (`{"file":{"driver":"file"}}` is
//!   `file.driver=file`) and arrays get index keys (`{"a":[1,2]}` is `a.0=1,a.1=2`), as
//!   QEMU's keyval does;
//! - `null` is an error (QEMU's input visitor rejects it for every property).

use super::CliError;

/// Whether `value` is written in JSON syntax (QEMU's test: the first character is `{`).
pub(super) fn is_json(value: &str) -> bool {
    value.starts_with('{')
}

/// Parses a JSON object into `(key, value)` items.
pub(super) fn parse(option: &str, input: &str) -> Result<Vec<(String, String)>, CliError> {
    let invalid = |message: String| CliError::Invalid {
        option: option.into(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(input).map_err(|e| invalid(format!("invalid JSON argument: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid("a JSON argument must be an object ({...})".into()));
    };
    let mut items = Vec::new();
    for (key, value) in map {
        flatten(&key, value, &mut items).map_err(&invalid)?;
    }
    Ok(items)
}

/// Flattens a JSON object's members into `(key, value)` items (QMP arguments).
pub(super) fn flatten_map(
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    for (key, value) in map {
        flatten(&key, value, &mut items)?;
    }
    Ok(items)
}

fn flatten(
    key: &str,
    value: serde_json::Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    use serde_json::Value;
    if key.is_empty() {
        return Err("empty property name in JSON argument".into());
    }
    match value {
        Value::Null => return Err(format!("null is not a valid value for '{key}'")),
        Value::Bool(b) => out.push((key.into(), if b { "on" } else { "off" }.into())),
        Value::Number(n) => out.push((key.into(), n.to_string())),
        Value::String(s) => out.push((key.into(), s)),
        Value::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(&format!("{key}.{i}"), v, out)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &str) -> Vec<(String, String)> {
        let mut v = parse("-object", input).unwrap();
        v.sort();
        v
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn scalars_become_keyval_text() {
        assert_eq!(
            items(
                r#"{"qom-type":"memory-backend-file","id":"pc.ram","mem-path":"/dev/shm/a,b",
                "share":true,"prealloc":false,"size":1073741824}"#
            ),
            pairs(&[
                ("qom-type", "memory-backend-file"),
                ("id", "pc.ram"),
                ("mem-path", "/dev/shm/a,b"),
                ("share", "on"),
                ("prealloc", "off"),
                ("size", "1073741824"),
            ])
        );
    }

    #[test]
    fn nested_objects_and_arrays_flatten_with_dots() {
        assert_eq!(
            items(
                r#"{"driver":"raw","node-name":"d0","file":{"driver":"file",
                "filename":"/img","cache":{"direct":true}},"fds":[3,4]}"#
            ),
            pairs(&[
                ("driver", "raw"),
                ("node-name", "d0"),
                ("file.driver", "file"),
                ("file.filename", "/img"),
                ("file.cache.direct", "on"),
                ("fds.0", "3"),
                ("fds.1", "4"),
            ])
        );
    }

    #[test]
    fn malformed_json_is_an_error_naming_the_option() {
        for (input, fragment) in [
            (r#"{"type":"vhost-user""#, "invalid JSON"),
            (r#"{"id":null}"#, "null"),
            (r#"{"":1}"#, "empty property name"),
            ("{}x", "invalid JSON"),
        ] {
            let msg = parse("-netdev", input).unwrap_err().to_string();
            assert!(
                msg.starts_with("-netdev:") && msg.contains(fragment),
                "{input}: {msg}"
            );
        }
        assert!(!is_json(" {"));
        assert!(is_json(r#"{"a":1}"#));
    }
}

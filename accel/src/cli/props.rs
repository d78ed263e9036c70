//! QEMU's `key=value,...` suboption syntax (QemuOpts / keyval) and typed access to it.
//!
//! - Items are separated by `,`; inside a value `,,` stands for one literal comma.
//! - The first item may omit its key when the option has an implied key (`-m 128` is
//!   `size=128`, `-device vhost-user-blk-pci,...` is `driver=vhost-user-blk-pci,...`).
//! - Where QemuOpts allows it, a bare `name` means `name=on` and `noname` means `name=off`
//!   (QEMU's deprecated short-form booleans, still accepted by QEMU 7.2 with a warning).
//! - A key given twice: the last value wins (QemuOpts semantics).

use super::CliError;
use super::values::{self, BadValue};

/// Parsed suboptions of one option occurrence (or several merged occurrences).
#[derive(Debug, Clone)]
pub(super) struct Props {
    option: &'static str,
    items: Vec<(String, String)>,
}

/// Whether bare `name` / `noname` items are accepted as booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flags {
    Allowed,
    Rejected,
}

impl Props {
    /// Parses `input` for `option` (its canonical name, used in errors).
    pub(super) fn parse(
        option: &'static str,
        input: &str,
        implied: Option<&'static str>,
        flags: Flags,
    ) -> Result<Props, CliError> {
        let mut items = Vec::new();
        let mut rest = input;
        let mut first = true;
        while !rest.is_empty() {
            let name_len = rest.find(['=', ',']).unwrap_or(rest.len());
            let has_value = rest[name_len..].starts_with('=');
            let (key, value, after) = if has_value {
                let key = &rest[..name_len];
                let (value, after) = read_value(&rest[name_len + 1..]);
                (key.to_string(), value, after)
            } else if let (true, Some(implied)) = (first, implied) {
                let (value, after) = read_value(rest);
                (implied.to_string(), value, after)
            } else {
                let name = &rest[..name_len];
                if name.is_empty() {
                    return Err(CliError::Invalid {
                        option: option.into(),
                        message: format!("empty item in '{input}' (a lone ',' ?)"),
                    });
                }
                if flags == Flags::Rejected {
                    return Err(CliError::Invalid {
                        option: option.into(),
                        message: format!("expected '=' after '{name}'"),
                    });
                }
                let (key, value) = match name.strip_prefix("no") {
                    Some(stripped) if !stripped.is_empty() => (stripped, "off"),
                    _ => (name, "on"),
                };
                log::warn!(
                    "{option}: short-form boolean '{name}' is deprecated; use {key}={value}"
                );
                (key.to_string(), value.to_string(), &rest[name_len..])
            };
            if key.is_empty() {
                return Err(CliError::Invalid {
                    option: option.into(),
                    message: format!("empty property name in '{input}'"),
                });
            }
            items.push((key, value));
            rest = after.strip_prefix(',').unwrap_or(after);
            first = false;
        }
        Ok(Props { option, items })
    }

    /// Props from items already split (the JSON syntax, see `super::json`).
    pub(super) fn from_items(option: &'static str, items: Vec<(String, String)>) -> Props {
        Props { option, items }
    }

    /// Parses `input` as JSON when it starts with `{` (QEMU's rule for `-object`, `-device`,
    /// `-netdev`, `-blockdev`), as `key=value,...` otherwise.
    pub(super) fn parse_or_json(
        option: &'static str,
        input: &str,
        implied: Option<&'static str>,
        flags: Flags,
    ) -> Result<Props, CliError> {
        if super::json::is_json(input) {
            return Ok(Props::from_items(
                option,
                super::json::parse(option, input)?,
            ));
        }
        Props::parse(option, input, implied, flags)
    }

    /// The value of `key` without removing it (the last one given).
    pub(super) fn peek(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The keys still present.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(k, _)| k.as_str())
    }

    /// Props with no items (an option that was not given).
    pub(super) fn empty(option: &'static str) -> Props {
        Props {
            option,
            items: Vec::new(),
        }
    }

    /// Appends the items of a later occurrence of the same option (QEMU merges them).
    pub(super) fn merge(&mut self, later: Props) {
        self.items.extend(later.items);
    }

    pub(super) fn option(&self) -> &'static str {
        self.option
    }

    /// The last value of `key`, left in place.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Removes `key` and returns its last value.
    pub(super) fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.items.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    pub(super) fn take_required(&mut self, key: &str) -> Result<String, CliError> {
        self.take(key).ok_or_else(|| CliError::MissingProperty {
            option: self.option.into(),
            property: key.into(),
        })
    }

    pub(super) fn take_bool(&mut self, key: &str) -> Result<Option<bool>, CliError> {
        self.take_with(key, values::parse_bool)
    }

    pub(super) fn take_uint(&mut self, key: &str) -> Result<Option<u64>, CliError> {
        self.take_with(key, values::parse_uint)
    }

    /// An integer that must lie in `min..=max`.
    pub(super) fn take_uint_in(
        &mut self,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, CliError> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        match values::parse_uint(&raw) {
            Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(self.invalid(key, &raw, &format!("an integer in {min}..={max}"))),
        }
    }

    /// An identifier (`id=`, `chardev=`, ...).
    pub(super) fn take_id(&mut self, key: &str) -> Result<Option<String>, CliError> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        values::check_id(&raw).map_err(|BadValue(e)| self.invalid(key, &raw, e))?;
        Ok(Some(raw))
    }

    /// Removes `key` and parses its value with `parse`, naming option and key on failure.
    pub(super) fn take_with<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, BadValue>,
    ) -> Result<Option<T>, CliError> {
        let Some(raw) = self.take(key) else {
            return Ok(None);
        };
        parse(&raw)
            .map(Some)
            .map_err(|BadValue(expected)| self.invalid(key, &raw, expected))
    }

    /// An `InvalidValue` error for this option.
    pub(super) fn invalid(&self, key: &str, value: &str, expected: &str) -> CliError {
        CliError::InvalidValue {
            option: self.option.into(),
            property: key.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// An `UnsupportedValue` error for this option.
    pub(super) fn unsupported(&self, key: &str, value: &str, reason: &str) -> CliError {
        CliError::UnsupportedValue {
            option: self.option.into(),
            property: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Fails if any property was not consumed, naming it and listing `supported`.
    pub(super) fn finish(self, supported: &[&str]) -> Result<(), CliError> {
        match self.items.into_iter().next() {
            None => Ok(()),
            Some((property, _)) => Err(CliError::UnknownProperty {
                option: self.option.into(),
                property,
                supported: if supported.is_empty() {
                    "none".into()
                } else {
                    supported.join(", ")
                },
            }),
        }
    }
}

/// Reads a value up to the next lone `,`, turning `,,` into `,`. Returns (value, rest) where
/// rest starts at the separating comma (or is empty).
fn read_value(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut rest = s;
    loop {
        match rest.find(',') {
            None => {
                value.push_str(rest);
                return (value, "");
            }
            Some(i) => {
                value.push_str(&rest[..i]);
                if rest[i + 1..].starts_with(',') {
                    value.push(',');
                    rest = &rest[i + 2..];
                } else {
                    return (value, &rest[i..]);
                }
            }
        }
    }
}

//! Scalar value syntax shared by all options: QEMU's sizes, integers, booleans and ids.

/// Why a value did not parse; the caller wraps it with the option and property names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadValue(pub &'static str);

/// What a size accepts, for error messages.
pub(super) const SIZE_SYNTAX: &str =
    "a size: a number with an optional suffix B, K, M, G, T, P or E (e.g. 512M, 1.5G)";
pub(super) const BOOL_SYNTAX: &str = "on/off, yes/no or true/false";

/// Parses a size the way QEMU's `qemu_strtosz` does: a decimal (fraction allowed only with
/// a suffix) or `0x` hex number, optionally followed by one of `BKMGTPE` (case-insensitive,
/// powers of 1024). A number without suffix is `default_unit` bytes.
pub(super) fn parse_size(s: &str, default_unit: u64) -> Result<u64, BadValue> {
    let bad = BadValue(SIZE_SYNTAX);
    let (number, unit) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !is_hex(s) => {
            let unit = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'E' => 1 << 60,
                _ => return Err(bad),
            };
            (&s[..s.len() - 1], Some(unit))
        }
        Some(_) => (s, None),
        None => return Err(bad),
    };
    if let Some(hex) = number
        .strip_prefix("0x")
        .or_else(|| number.strip_prefix("0X"))
    {
        let value = u64::from_str_radix(hex, 16).map_err(|_| bad.clone())?;
        return value.checked_mul(unit.unwrap_or(default_unit)).ok_or(bad);
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let int: u64 = int_part.parse().map_err(|_| bad.clone())?;
    let unit_bytes = unit.unwrap_or(default_unit);
    let mut bytes = int.checked_mul(unit_bytes).ok_or(bad.clone())?;
    if let Some(frac) = frac_part {
        // QEMU only allows a fraction together with an explicit suffix bigger than bytes.
        if unit.is_none_or(|u| u == 1)
            || frac.is_empty()
            || frac.len() > 18
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad);
        }
        let digits: u128 = frac.parse().map_err(|_| bad.clone())?;
        let scale = 10u128.pow(frac.len() as u32);
        let extra =
            u64::try_from(digits * u128::from(unit_bytes) / scale).map_err(|_| bad.clone())?;
        bytes = bytes.checked_add(extra).ok_or(bad)?;
    }
    Ok(bytes)
}

fn is_hex(s: &str) -> bool {
    s.starts_with("0x") || s.starts_with("0X")
}

/// Parses an unsigned integer like QEMU (`strtoull` base 0): decimal, `0x` hex, `0` octal.
pub(super) fn parse_uint(s: &str) -> Result<u64, BadValue> {
    let bad = BadValue("an unsigned integer (decimal, 0x hex or 0 octal)");
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return Err(bad);
    }
    u64::from_str_radix(digits, radix).map_err(|_| bad)
}

/// QEMU's boolean spellings (`qapi_bool_parse`).
pub(super) fn parse_bool(s: &str) -> Result<bool, BadValue> {
    match s {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(BadValue(BOOL_SYNTAX)),
    }
}

/// QEMU's `id_wellformed`: a letter followed by letters, digits, `-`, `.` or `_`.
pub(super) fn check_id(s: &str) -> Result<(), BadValue> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        Ok(())
    } else {
        Err(BadValue(
            "an identifier (a letter, then letters, digits, '-', '.' or '_')",
        ))
    }
}

/// A MAC address `xx:xx:xx:xx:xx:xx` (hex).
pub(super) fn parse_mac(s: &str) -> Result<[u8; 6], BadValue> {
    let bad = BadValue("a MAC address xx:xx:xx:xx:xx:xx");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or(bad.clone())?;
        if part.len() != 2 {
            return Err(bad);
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad.clone())?;
    }
    if parts.next().is_some() {
        return Err(bad);
    }
    Ok(mac)
}

/// A PCI `addr=SLOT[.FN]` (hex, as QEMU parses it): returns (slot, function).
pub(super) fn parse_pci_addr(s: &str) -> Result<(u8, u8), BadValue> {
    let bad = BadValue("SLOT[.FN] in hex, slot 00..1f, function 0..7 (e.g. 05.0)");
    let hex = |p: &str| {
        let p = p
            .strip_prefix("0x")
            .or_else(|| p.strip_prefix("0X"))
            .unwrap_or(p);
        if p.is_empty() {
            return Err(bad.clone());
        }
        u8::from_str_radix(p, 16).map_err(|_| bad.clone())
    };
    let (slot, func) = match s.split_once('.') {
        Some((slot, func)) => (hex(slot)?, hex(func)?),
        None => (hex(s)?, 0),
    };
    if slot > 0x1f || func > 7 {
        return Err(bad);
    }
    Ok((slot, func))
}

//! Value syntax and the `key=value` suboption parser.

use super::super::props::{Flags, Props};
use super::super::values::{
    check_id, parse_bool, parse_mac, parse_pci_addr, parse_size, parse_uint,
};
use super::run;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

#[test]
fn sizes_with_suffixes() {
    assert_eq!(parse_size("4096", 1), Ok(4096));
    assert_eq!(parse_size("4k", 1), Ok(4 * K));
    assert_eq!(parse_size("4K", 1), Ok(4 * K));
    assert_eq!(parse_size("512M", 1), Ok(512 * M));
    assert_eq!(parse_size("512m", 1), Ok(512 * M));
    assert_eq!(parse_size("2G", 1), Ok(2 * G));
    assert_eq!(parse_size("1T", 1), Ok(1 << 40));
    assert_eq!(parse_size("1.5G", 1), Ok(3 * G / 2));
    assert_eq!(parse_size("0.5k", 1), Ok(512));
    assert_eq!(parse_size("100b", 1), Ok(100));
    assert_eq!(parse_size("0x1000", 1), Ok(0x1000));
    assert_eq!(parse_size("16", M), Ok(16 * M));
}

#[test]
fn bad_sizes() {
    for bad in [
        "", "M", "12Q", "-1", "1.5", "1.5b", "1.G", "0x", "0xg", "1 M", "16E",
    ] {
        assert!(parse_size(bad, 1).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn integers_like_strtoull_base_0() {
    assert_eq!(parse_uint("10"), Ok(10));
    assert_eq!(parse_uint("0x10"), Ok(16));
    assert_eq!(parse_uint("010"), Ok(8));
    assert_eq!(parse_uint("0"), Ok(0));
    for bad in ["", "-1", "+1", "0x", "09", "1a", "99999999999999999999"] {
        assert!(parse_uint(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn booleans() {
    for t in ["on", "yes", "true", "y"] {
        assert_eq!(parse_bool(t), Ok(true));
    }
    for f in ["off", "no", "false", "n"] {
        assert_eq!(parse_bool(f), Ok(false));
    }
    assert!(parse_bool("1").is_err());
    assert!(parse_bool("ON").is_err());
}

#[test]
fn ids() {
    assert!(check_id("c0").is_ok());
    assert!(check_id("a.b-c_d").is_ok());
    for bad in ["", "0c", "-a", "a b", "a,b", "a/b"] {
        assert!(check_id(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn macs_and_pci_addresses() {
    assert_eq!(
        parse_mac("52:54:00:12:34:5f"),
        Ok([0x52, 0x54, 0x00, 0x12, 0x34, 0x5f])
    );
    for bad in [
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5:54:00:12:34:56",
        "zz:54:00:12:34:56",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_pci_addr("5"), Ok((5, 0)));
    assert_eq!(parse_pci_addr("05.0"), Ok((5, 0)));
    assert_eq!(parse_pci_addr("0x1f"), Ok((0x1f, 0)));
    assert_eq!(parse_pci_addr("0a.3"), Ok((10, 3)));
    for bad in ["", "20", "5.8", "x", "5.", ".1"] {
        assert!(parse_pci_addr(bad).is_err(), "{bad:?}");
    }
}

fn props(input: &str, implied: Option<&'static str>) -> Props {
    match Props::parse("-test", input, implied, Flags::Allowed) {
        Ok(p) => p,
        Err(e) => panic!("{input}: {e}"),
    }
}

#[test]
fn implied_first_key() {
    let mut p = props("pc,accel=kvm", Some("type"));
    assert_eq!(p.take("type").as_deref(), Some("pc"));
    assert_eq!(p.take("accel").as_deref(), Some("kvm"));
    assert!(p.finish(&[]).is_ok());
    // Only the first item may omit its key; an explicit key there is fine too.
    let mut p = props("type=q35", Some("type"));
    assert_eq!(p.take("type").as_deref(), Some("q35"));
    // With no implied key a bare word is a boolean flag; "no" prefix means off.
    let mut p = props("server,nowait", None);
    assert_eq!(p.take("server").as_deref(), Some("on"));
    assert_eq!(p.take("wait").as_deref(), Some("off"));
}

#[test]
fn double_comma_escapes() {
    let mut p = props(
        "socket,id=c0,path=/tmp/a,,b,,,,c.sock,reconnect=1",
        Some("backend"),
    );
    assert_eq!(p.take("path").as_deref(), Some("/tmp/a,b,,c.sock"));
    assert_eq!(p.take("reconnect").as_deref(), Some("1"));
    // An implied value can contain an escaped comma too.
    let mut p = props("a,,b,x=1", Some("k"));
    assert_eq!(p.take("k").as_deref(), Some("a,b"));
    // A value ending with an escaped comma, then end of input.
    let mut p = props("x=a,,", None);
    assert_eq!(p.take("x").as_deref(), Some("a,"));
}

#[test]
fn later_keys_win_and_leftovers_are_named() {
    let mut p = props("x=1,y=2,x=3", None);
    assert_eq!(p.take("x").as_deref(), Some("3"));
    let err = p
        .finish(&["x"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("-test") && err.contains("'y'") && err.contains("supported: x"),
        "{err}"
    );
    // Trailing comma is harmless; empty values are kept.
    let mut p = props("x=,", None);
    assert_eq!(p.take("x").as_deref(), Some(""));
}

#[test]
fn flags_rejected_where_qemu_uses_keyval() {
    let err = Props::parse(
        "-object",
        "memory-backend-memfd,share",
        Some("qom-type"),
        Flags::Rejected,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("-object") && err.contains("'share'"), "{err}");
    let err = Props::parse("-test", "a=1,,,b", None, Flags::Allowed);
    assert!(err.is_ok(), "'a=1,,' then flag b");
}

#[test]
fn memory_sizes_through_the_command_line() {
    // -m: no suffix means MiB (QEMU's legacy rule), suffixes are bytes-based.
    assert_eq!(run("-m 256").memory.size, 256 * M);
    assert_eq!(run("-m size=256").memory.size, 256 * M);
    assert_eq!(run("-m 1G").memory.size, G);
    assert_eq!(run("-m 1.5G").memory.size, 3 * G / 2);
    assert_eq!(run("-m 0x100").memory.size, 256 * M);
    assert_eq!(run("-m 524288k").memory.size, 512 * M);
    // Rounded up to 8 KiB like QEMU; 0 means the default.
    assert_eq!(run("-m 4097b").memory.size, 8192);
    assert_eq!(run("-m 0").memory.size, 128 * M);
    // Default and merged occurrences.
    assert_eq!(run("").memory.size, 128 * M);
    assert_eq!(run("-m 64 -m 96").memory.size, 96 * M);
}

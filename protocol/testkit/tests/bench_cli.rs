//! `vu-blk-bench` against `qemu-storage-daemon`: one parseable line, real I/O on the image.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{Qsd, pattern};

fn bench(q: &Qsd, extra: &[&str]) -> (HashMap<String, String>, std::process::Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_vu-blk-bench"))
        .arg("--socket")
        .arg(&q.socket)
        .args(extra)
        .output()
        .expect("run vu-blk-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one result line: {stdout:?} stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kv = lines[0]
        .split_whitespace()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (kv, out)
}

fn num(kv: &HashMap<String, String>, k: &str) -> f64 {
    kv.get(k)
        .unwrap_or_else(|| panic!("missing {k} in {kv:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{k}: {e}"))
}

#[test]
fn randwrite_reports_and_writes_only_inside_size() {
    let q = Qsd::start(4 << 20, 2);
    let args = [
        "--pattern",
        "randwrite",
        "--bs",
        "4096",
        "--qd",
        "4",
        "--queues",
        "2",
        "--seconds",
        "0.5",
        "--size",
        "1048576",
    ];
    let (kv, out) = bench(&q, &args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(kv["pattern"], "randwrite");
    assert_eq!(num(&kv, "queues"), 2.0);
    assert_eq!(num(&kv, "errors"), 0.0);
    let kicks = num(&kv, "kicks");
    assert!(kicks >= 2.0, "at least the first kick per queue: {kv:?}");
    let ios = num(&kv, "ios");
    assert!(ios > 0.0 && num(&kv, "iops") > 0.0, "{kv:?}");
    assert!(
        num(&kv, "lat_p99_us") > 0.0 && num(&kv, "lat_mean_us") > 0.0,
        "{kv:?}"
    );
    assert!((num(&kv, "mib_s") - num(&kv, "iops") * 4096.0 / 1048576.0).abs() < 0.1);

    let image = q.image_bytes(0, 4 << 20);
    let written = image[..1 << 20]
        .chunks(4096)
        .filter(|b| b.iter().all(|&x| x == 0xa5))
        .count();
    assert!(written > 0, "some 4 KiB blocks hold the bench's 0xa5 fill");
    let untouched = image[1 << 20..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern((1 << 20) + i as u64));
    assert!(untouched, "nothing written beyond --size");
}

#[test]
fn sequential_read_json_and_bad_arguments() {
    let q = Qsd::start(4 << 20, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_vu-blk-bench"))
        .arg("--socket")
        .arg(&q.socket)
        .args([
            "--pattern",
            "read",
            "--bs",
            "65536",
            "--qd",
            "2",
            "--seconds",
            "0.3",
            "--json",
            "--indirect",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pattern"], "read");
    assert_eq!(v["bs"], 65536);
    assert!(v["ios"].as_u64().expect("ios") > 0);

    let out = Command::new(env!("CARGO_BIN_EXE_vu-blk-bench"))
        .arg("--socket")
        .arg(&q.socket)
        .args(["--bs", "1000", "--seconds", "0.1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 512"));

    let out = Command::new(env!("CARGO_BIN_EXE_vu-blk-bench"))
        .args(["--socket", "/nonexistent/sock", "--connect-timeout", "0.2"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{out:?}"
    );
}

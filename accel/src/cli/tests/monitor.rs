//! `-qmp`, `-chardev ...,server=on` + `-mon`, and the lifecycle options.

use std::path::PathBuf;

use super::{fail_with, run};
use crate::config::{MonitorConfig, MonitorListen};

fn unix(label: &str, path: &str, wait: bool) -> MonitorConfig {
    MonitorConfig {
        label: label.into(),
        listen: MonitorListen::Unix(PathBuf::from(path)),
        pretty: false,
        wait,
        hmp: false,
    }
}

#[test]
fn qmp_spellings() {
    let c = run(
        "-qmp unix:/tmp/q.sock,server=on,wait=off -qmp unix:/tmp/r,server,nowait \
                 -qmp tcp:127.0.0.1:4444,server=on,wait=off -qmp unix:/tmp/w,server=on",
    );
    assert_eq!(
        c.monitors,
        vec![
            unix("compat_monitor0", "/tmp/q.sock", false),
            unix("compat_monitor1", "/tmp/r", false),
            MonitorConfig {
                label: "compat_monitor2".into(),
                listen: MonitorListen::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                pretty: false,
                wait: false,
                hmp: false,
            },
            unix("compat_monitor3", "/tmp/w", true),
        ]
    );
}

#[test]
fn chardev_and_mon() {
    let c = run("-chardev socket,id=mon0,path=/tmp/m,server=on,wait=off \
                 -mon chardev=mon0,mode=control,pretty=on \
                 -chardev socket,id=mon1,fd=5,server=on,wait=off -mon mon1,mode=control");
    assert_eq!(
        c.monitors,
        vec![
            MonitorConfig {
                pretty: true,
                ..unix("mon0", "/tmp/m", false)
            },
            MonitorConfig {
                label: "mon1".into(),
                listen: MonitorListen::Fd(5),
                pretty: false,
                wait: false,
                hmp: false,
            },
        ]
    );
}

#[test]
fn lifecycle_options() {
    let c = run(
        "-S -no-shutdown -pidfile /tmp/p.pid -uuid 12345678-ABCD-1234-1234-123456789abc \
                 -name vm1,debug-threads=on",
    );
    assert!(c.lifecycle.start_paused && c.lifecycle.no_shutdown && c.lifecycle.debug_threads);
    assert_eq!(c.lifecycle.pidfile, Some(PathBuf::from("/tmp/p.pid")));
    assert_eq!(
        c.lifecycle.uuid.as_deref(),
        Some("12345678-abcd-1234-1234-123456789abc")
    );
    assert_eq!(c.name.as_deref(), Some("vm1"));
}

#[test]
fn monitor_errors() {
    fail_with("-qmp unix:/tmp/q", &["-qmp", "server=on"]);
    fail_with("-qmp stdio", &["-qmp", "unix:PATH"]);
    fail_with(
        "-mon chardev=nope,mode=control",
        &["-mon", "'nope'", "not found"],
    );
    fail_with(
        "-chardev socket,id=m,path=/tmp/m,server=on,wait=off -mon chardev=m,mode=bogus",
        &["-mon", "bogus", "control or readline"],
    );
    fail_with(
        "-chardev socket,id=m,path=/tmp/m -mon chardev=m,mode=control",
        &["-mon", "not a server=on socket"],
    );
    fail_with("-uuid 1234", &["-uuid", "UUID"]);
    fail_with(
        "-chardev socket,id=m,path=/a,fd=3,server=on -mon m,mode=control",
        &["-chardev", "exactly one"],
    );
}

#[test]
fn monitor_sockets_and_readline_mons_are_human_monitors() {
    let c = run(
        "-monitor unix:/tmp/h,server,nowait -qmp unix:/tmp/q,server=on,wait=off \
                 -chardev socket,id=hm,path=/tmp/hm,server=on,wait=off -mon chardev=hm,mode=readline",
    );
    let hmp: Vec<(&str, bool)> = c
        .monitors
        .iter()
        .map(|m| (m.label.as_str(), m.hmp))
        .collect();
    assert_eq!(
        hmp,
        [
            ("compat_monitor0", true),
            ("compat_monitor1", false),
            ("hm", true)
        ]
    );
    run("-monitor none");
    super::fail_with("-monitor stdio", &["-monitor"]);
}

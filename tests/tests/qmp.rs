//! accel driven over QMP the way management tools drive QEMU: raw JSON on the monitor
//! socket. One test boots the guest (twice: cont, then system_reset); the other never lets
//! a vCPU run (-S) and exercises the protocol, a second monitor, reconnect and SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::{GUEST_CMDLINE, KVM_BOOT_TIMEOUT, TestDir, bin, guest_file};
use serde_json::{Value, json};

/// One boot of a -smp 2 guest; generous because the 2-core host is shared (a boot that takes
/// 15 s alone took over 100 s under load).
const BOOT_DEADLINE: Duration = Duration::from_secs(4 * KVM_BOOT_TIMEOUT.as_secs());
const REPLY_DEADLINE: Duration = Duration::from_secs(60);

struct Accel {
    child: Child,
    serial: Arc<Mutex<Vec<String>>>,
}

impl Accel {
    fn start(extra: &[&str], gcmd: &str) -> Accel {
        let mut child = Command::new(bin("accel"))
            .args(["-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "2"])
            .args(["-display", "none", "-nodefaults", "-serial", "stdio"])
            .arg("-kernel")
            .arg(guest_file("vmlinux"))
            .arg("-initrd")
            .arg(guest_file("lean.cpio"))
            .args(["-append", &format!("{GUEST_CMDLINE} gcmd=\"{gcmd}\"")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn accel");
        let out = child.stdout.take().expect("stdout piped");
        let serial = Arc::new(Mutex::new(Vec::new()));
        let acc = serial.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                acc.lock().unwrap().push(line);
            }
        });
        Accel { child, serial }
    }

    fn count(&self, marker: &str) -> usize {
        let lines = self.serial.lock().unwrap();
        lines.iter().filter(|l| l.contains(marker)).count()
    }

    /// Waits until the guest printed `marker` `n` times in all.
    fn wait_serial(&self, marker: &str, n: usize) {
        let end = Instant::now() + BOOT_DEADLINE;
        while self.count(marker) < n {
            assert!(
                Instant::now() < end,
                "no {n}x '{marker}' within {BOOT_DEADLINE:?}; serial:\n{}",
                self.serial.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let end = Instant::now() + REPLY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed");
            }
            assert!(Instant::now() < end, "accel did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Accel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw QMP client: one JSON value per line (accel, like QEMU, ends each with CRLF).
struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let end = Instant::now() + REPLY_DEADLINE;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        };
        stream.set_read_timeout(Some(REPLY_DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Qmp {
            stream,
            reader,
            events: Vec::new(),
        }
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading QMP");
        assert!(n > 0, "QMP connection closed");
        assert!(line.ends_with("\r\n"), "QMP line without CRLF: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    fn send_raw(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next non-event message (events are kept in `self.events`).
    fn reply(&mut self) -> Value {
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                assert!(v["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
                assert!(v["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    fn raw(&mut self, text: &str) -> Value {
        self.send_raw(text);
        self.reply()
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        let mut msg = json!({"execute": cmd});
        if !args.is_null() {
            msg["arguments"] = args;
        }
        self.raw(&format!("{msg}\n"))
    }

    /// `return` of a command that must succeed.
    fn ok(&mut self, cmd: &str) -> Value {
        let r = self.exec(cmd, Value::Null);
        assert!(r.get("return").is_some(), "{cmd}: {r}");
        r["return"].clone()
    }

    fn negotiate(&mut self) {
        let greeting = self.read();
        assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 7, "{greeting}");
        assert!(greeting["QMP"]["capabilities"].is_array());
        assert_eq!(self.ok("qmp_capabilities"), json!({}));
    }

    /// Takes the events seen so far, waiting up to the deadline for `name` among them.
    fn take_event(&mut self, name: &str) -> Value {
        let end = Instant::now() + REPLY_DEADLINE;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            assert!(Instant::now() < end, "no {name} event");
            let v = self.read();
            self.events.push(v);
        }
    }

    fn status(&mut self) -> String {
        self.ok("query-status")["status"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn class(reply: &Value) -> &str {
    reply["error"]["class"].as_str().unwrap_or("<no error>")
}

#[test]
fn lifecycle_over_qmp() {
    let dir = TestDir::new("qmp-life");
    let sock = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let pidfile = dir.join("accel.pid");
    let mut vm = Accel::start(
        &[
            "-S",
            "-qmp",
            &qmp_arg,
            "-name",
            "life,debug-threads=on",
            "-pidfile",
            pidfile.to_str().unwrap(),
        ],
        "sleep 600",
    );
    let mut qmp = Qmp::connect(&sock);
    qmp.negotiate();
    assert_eq!(qmp.status(), "prelaunch");
    let pid = vm.child.id();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    let cpus = qmp.ok("query-cpus-fast");
    let cpus = cpus.as_array().unwrap();
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["cpu-index"], i);
        assert_eq!(cpu["props"]["core-id"], i, "-smp 2 = 1 socket x 2 cores");
        let tid = cpu["thread-id"].as_u64().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_else(|e| panic!("vCPU thread {tid} not in /proc/{pid}/task: {e}"));
        assert_eq!(comm.trim(), format!("CPU {i}/KVM"));
    }
    assert_eq!(vm.count("GUEST UP"), 0, "the guest ran before cont");

    assert_eq!(qmp.ok("cont"), json!({}));
    qmp.take_event("RESUME");
    assert_eq!(qmp.status(), "running");
    vm.wait_serial("GUEST UP", 1);

    qmp.ok("stop");
    qmp.take_event("STOP");
    assert_eq!(qmp.status(), "paused");
    let hmp = qmp.exec(
        "human-monitor-command",
        json!({"command-line": "info status"}),
    );
    assert_eq!(hmp["return"], "VM status: paused\r\n");
    qmp.ok("cont");
    qmp.take_event("RESUME");

    qmp.ok("system_reset");
    let reset = qmp.take_event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    vm.wait_serial("GUEST UP", 2);
    assert_eq!(qmp.status(), "running");

    qmp.ok("quit");
    let shutdown = qmp.take_event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(vm.wait_exit(), 0);
    assert!(!pidfile.exists(), "-pidfile not removed at exit");
}

#[test]
fn protocol_errors_monitors_and_sigterm() {
    let dir = TestDir::new("qmp-proto");
    let sock = dir.join("qmp.sock");
    let mon = dir.join("mon.sock");
    let qmp_arg = format!("unix:{},server,nowait", sock.display());
    let chardev = format!("socket,id=mon0,path={},server=on,wait=off", mon.display());
    let mut vm = Accel::start(
        &[
            "-S",
            "-qmp",
            &qmp_arg,
            "-chardev",
            &chardev,
            "-mon",
            "chardev=mon0,mode=control",
            "-uuid",
            "12345678-1234-1234-1234-123456789abc",
        ],
        "true",
    );
    let mut qmp = Qmp::connect(&sock);
    qmp.read();
    // Before negotiation, every other command is CommandNotFound, as in QEMU.
    let r = qmp.exec("query-status", Value::Null);
    assert_eq!(class(&r), "CommandNotFound", "{r}");
    assert_eq!(qmp.ok("qmp_capabilities"), json!({}));
    let r = qmp.exec("qmp_capabilities", Value::Null);
    assert_eq!(class(&r), "CommandNotFound", "{r}");

    let r = qmp.raw("{\"execute\": \"no-such-command\", \"id\": \"x1\"}\n");
    assert_eq!(class(&r), "CommandNotFound");
    assert_eq!(r["id"], "x1");
    assert_eq!(
        r["error"]["desc"],
        "The command no-such-command has not been found"
    );
    let r = qmp.raw("this is not json\n");
    assert_eq!(class(&r), "GenericError", "{r}");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("JSON parse error")
    );
    // QEMU's lexer sees one error per bad word: drain them, then the session goes on.
    for _ in 0..3 {
        qmp.reply();
    }
    let r = qmp.raw("[1, 2]\n");
    assert_eq!(r["error"]["desc"], "QMP input must be a JSON object");
    let r = qmp.exec("query-status", json!({"bogus": 1}));
    assert_eq!(r["error"]["desc"], "Parameter 'bogus' is unexpected");
    // A request split across writes, with an id of any JSON type.
    qmp.send_raw("{\"execute\": \"query-uu");
    std::thread::sleep(Duration::from_millis(100));
    let r = qmp.raw("id\", \"id\": {\"n\": [1]}}");
    assert_eq!(r["return"]["UUID"], "12345678-1234-1234-1234-123456789abc");
    assert_eq!(r["id"], json!({"n": [1]}));
    assert_eq!(qmp.status(), "prelaunch");

    // The second monitor works at the same time, and sees events.
    let mut second = Qmp::connect(&mon);
    second.negotiate();
    let chardevs = second.ok("query-chardev");
    let labels: Vec<&str> = chardevs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"compat_monitor0") && labels.contains(&"mon0"),
        "{labels:?}"
    );
    // Reconnect: a client that leaves can come back.
    drop(qmp);
    let mut qmp = Qmp::connect(&sock);
    qmp.negotiate();
    assert_eq!(qmp.status(), "prelaunch");

    // SIGTERM: SHUTDOWN host-signal on every monitor, exit status 0 (QEMU's behaviour).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for q in [&mut qmp, &mut second] {
        let e = q.take_event("SHUTDOWN");
        assert_eq!(e["data"], json!({"guest": false, "reason": "host-signal"}));
    }
    assert_eq!(vm.wait_exit(), 0);
    assert_eq!(vm.count("GUEST UP"), 0, "-S: no vCPU ran");
}

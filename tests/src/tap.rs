//! Host taps for the vhost-user-net tap-mode tests, and a TCP sink that counts what a guest
//! sends.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A host tap with an address, deleted on drop.
pub struct Tap {
    pub name: String,
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
}

impl Tap {
    /// Creates tap `vun<pid><tag>` with host address 10.<net>.<pid>.1/24. Panics with a clear
    /// message when taps cannot be created (no privileges).
    pub fn create(tag: u8, net: u8) -> Tap {
        let pid = std::process::id();
        let name = format!("vun{}{tag}", pid % 100_000);
        let sub = (pid % 250) as u8;
        let host = Ipv4Addr::new(10, net, sub, 1);
        let guest = Ipv4Addr::new(10, net, sub, 2);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): apt-get install iproute2"));
            assert!(
                out.status.success(),
                "`ip {}` failed: {}\nthe tap tests need root or CAP_NET_ADMIN to create a tap",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        ip(&["tuntap", "add", "dev", &name, "mode", "tap", "multi_queue"]);
        let tap = Tap { name, host, guest };
        ip(&["addr", "add", &format!("{host}/24"), "dev", &tap.name]);
        ip(&["link", "set", &tap.name, "up"]);
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Accepts one TCP connection on `ip:port` and counts the bytes until EOF; the count comes
/// back on the channel (or an error string).
pub fn byte_sink(ip: Ipv4Addr, timeout: Duration) -> (u16, mpsc::Receiver<Result<u64, String>>) {
    let listener = TcpListener::bind((ip, 0)).expect("bind the host sink on the tap address");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        let res = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut n = 0u64;
                    let mut buf = vec![0u8; 1 << 16];
                    break loop {
                        match s.read(&mut buf) {
                            Ok(0) => break Ok(n),
                            Ok(k) => n += k as u64,
                            Err(e) => break Err(format!("after {n} bytes: {e}")),
                        }
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        break Err("no connection".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        let _ = tx.send(res);
    });
    (port, rx)
}

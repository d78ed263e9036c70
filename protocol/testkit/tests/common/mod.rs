//! Test helpers: a disk image in a temp dir served by `qemu-storage-daemon` (the C reference
//! vhost-user-blk backend), killed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use vu_testkit::support::{KillOnDrop, TestDir, expect_path};

/// How long the daemon gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte the image holds at `offset` before any test writes.
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7).wrapping_add(3) % 251) as u8
}

/// A disk image plus the daemon exporting it.
pub struct Qsd {
    pub dir: TestDir,
    pub image: PathBuf,
    pub socket: PathBuf,
    num_queues: u16,
    child: Option<KillOnDrop>,
}

impl Qsd {
    /// Creates a `size`-byte image filled with [`pattern`] and starts exporting it.
    pub fn start(size: u64, num_queues: u16) -> Qsd {
        let dir = TestDir::new("qsd");
        let image = dir.join("disk.img");
        let data: Vec<u8> = (0..size).map(pattern).collect();
        std::fs::write(&image, data).expect("write image");
        let socket = dir.join("qsd.sock");
        let mut q = Qsd {
            dir,
            image,
            socket,
            num_queues,
            child: None,
        };
        q.spawn();
        q
    }

    /// (Re)starts the daemon on the same image and socket.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let _ = std::fs::remove_file(&self.socket);
        let blockdev = format!(
            "driver=file,filename={},node-name=d0,cache.direct=off",
            self.image.display()
        );
        let export = format!(
            "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on,num-queues={}",
            self.socket.display(),
            self.num_queues
        );
        let child = Command::new("qemu-storage-daemon")
            .args(["--blockdev", &blockdev, "--export", &export])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run qemu-storage-daemon ({e}): apt-get install qemu-system-x86")
            });
        self.child = Some(KillOnDrop(child));
        expect_path(&self.socket, START_TIMEOUT);
    }

    /// Kills the daemon (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Sends `sig` to the running daemon (SIGSTOP/SIGCONT to simulate a hung backend).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        self.child.as_ref().expect("daemon running").signal(sig);
    }

    /// The image file's bytes.
    pub fn image_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.image).expect("open image");
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).expect("read image");
        buf
    }
}

/// Connects to the daemon's socket, retrying while it has bound but not yet listens.
pub fn connect_retry(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    vu_testkit::support::connect_retry(path, START_TIMEOUT)
}

impl Drop for Qsd {
    fn drop(&mut self) {
        // Before the directory with the image and socket goes.
        self.kill();
    }
}

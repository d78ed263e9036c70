//! Test helpers: a disk image in a temp dir served by `qemu-storage-daemon` (the C reference
//! vhost-user-blk backend), killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

/// The byte the image holds at `offset` before any test writes.
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(7).wrapping_add(3) % 251) as u8
}

/// A disk image plus the daemon exporting it.
pub struct Qsd {
    pub dir: TempDir,
    pub image: PathBuf,
    pub socket: PathBuf,
    num_queues: u16,
    child: Option<Child>,
}

impl Qsd {
    /// Creates a `size`-byte image filled with [`pattern`] and starts exporting it.
    pub fn start(size: u64, num_queues: u16) -> Qsd {
        let dir = TempDir::new_with_prefix("/tmp/vu-driver-test-").expect("tempdir");
        let image = dir.as_path().join("disk.img");
        let data: Vec<u8> = (0..size).map(pattern).collect();
        std::fs::write(&image, data).expect("write image");
        let socket = dir.as_path().join("qsd.sock");
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
            .expect("spawn qemu-storage-daemon (is it installed?)");
        self.child = Some(child);
        wait_for_socket(&self.socket, Duration::from_secs(10));
    }

    /// Kills the daemon (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the running daemon (SIGSTOP/SIGCONT to simulate a hung backend).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
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

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `path` exists (the daemon listens); does not connect (a vhost-user backend
/// serves one frontend at a time).
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects to `path`, retrying while the daemon has bound but not yet listens.
pub fn connect_retry(path: &Path) -> std::os::unix::net::UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connect {}: {e}", path.display()),
        }
    }
}

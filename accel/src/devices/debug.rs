//! QEMU's ISA debug devices, which test harnesses and firmware use:
//!
//! - [`DebugCon`] (`isa-debugcon`): every byte written to its port goes to a chardev (QEMU's
//!   "port 0xe9 hack"); a read returns the readback value (0xe9), so a guest can detect it.
//! - [`DebugExit`] (`isa-debug-exit`): a write of V ends the VM with exit status
//!   `(V << 1) | 1`, so a guest test can report pass/fail to its harness (status 0 is never
//!   produced: it stays reserved for a normal shutdown).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::bus::BusDevice;
use super::serial::{SerialError, open_pipe};
use crate::config::SerialConfig;
use crate::vmm::control::{VmControl, VmRequest};

/// Where a debug console's bytes go.
enum Sink {
    Stdout(io::Stdout),
    File(File),
    Null,
}

/// `isa-debugcon`. See the module documentation.
pub struct DebugCon {
    out: Sink,
    readback: u8,
    error_logged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DebugConError {
    #[error("isa-debugcon: cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("isa-debugcon: {0}")]
    Pipe(#[from] SerialError),
}

impl DebugCon {
    /// A debug console writing to `output` (stdio, file, pipe or null; see the CLI).
    pub fn new(output: &SerialConfig, readback: u8) -> Result<Self, DebugConError> {
        let out = match output {
            SerialConfig::Stdio => Sink::Stdout(io::stdout()),
            SerialConfig::File(path) => {
                Sink::File(File::create(path).map_err(|source| DebugConError::Open {
                    path: path.clone(),
                    source,
                })?)
            }
            SerialConfig::Pipe(path) => Sink::File(open_pipe(path)?.1),
            SerialConfig::Null | SerialConfig::UnixServer { .. } => Sink::Null,
        };
        Ok(DebugCon {
            out,
            readback,
            error_logged: false,
        })
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.readback;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // QEMU sends the low byte of every access.
        let Some(&byte) = data.first() else { return };
        let result = match &mut self.out {
            Sink::Stdout(out) => out.write_all(&[byte]).and_then(|()| out.flush()),
            Sink::File(f) => f.write_all(&[byte]),
            Sink::Null => Ok(()),
        };
        if let Err(e) = result
            && !self.error_logged
        {
            // Once: a guest writing in a loop must not flood the log.
            log::warn!("isa-debugcon: output failed, dropping bytes: {e}");
            self.error_logged = true;
        }
    }
}

/// `isa-debug-exit`. See the module documentation.
pub struct DebugExit {
    control: Arc<VmControl>,
}

impl DebugExit {
    pub fn new(control: Arc<VmControl>) -> Self {
        DebugExit { control }
    }
}

/// The exit status QEMU's isa-debug-exit gives a write of `data` (little-endian, the
/// access's width): `(value << 1) | 1`, as an `int` passed to `exit()` (the shell sees its
/// low 8 bits).
pub fn exit_status(data: &[u8]) -> i32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    let value = u32::from_le_bytes(v);
    (value.wrapping_shl(1) | 1) as i32
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let status = exit_status(data);
        log::info!("isa-debug-exit: guest wrote {data:x?}: exit status {status}");
        self.control.request(VmRequest::Exit(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_qemus() {
        assert_eq!(exit_status(&[0]), 1);
        assert_eq!(exit_status(&[1]), 3);
        assert_eq!(exit_status(&[0x31]), 0x63);
        assert_eq!(exit_status(&[0x10, 0x00]), 0x21);
        assert_eq!(exit_status(&[0x00, 0x01]), 0x201);
    }

    #[test]
    fn a_write_requests_the_exit() {
        let c = Arc::new(VmControl::new().unwrap());
        DebugExit::new(c.clone()).write(0, &[2]);
        assert!(c.should_stop());
        assert!(matches!(c.take(), Some(VmRequest::Exit(5))));
    }

    #[test]
    fn debugcon_writes_bytes_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("debugcon-{}", std::process::id()));
        let mut d = DebugCon::new(&SerialConfig::File(dir.clone()), 0xe9).unwrap();
        for b in b"hi\n" {
            d.write(0, &[*b]);
        }
        let mut r = [0u8];
        d.read(0, &mut r);
        assert_eq!(r, [0xe9]);
        assert_eq!(std::fs::read(&dir).unwrap(), b"hi\n");
        let _ = std::fs::remove_file(&dir);
    }
}

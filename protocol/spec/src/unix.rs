//! Listening unix sockets at a path, as both sides create them (backends' vhost-user and
//! host-side sockets, accel's serial socket): a socket file left by an earlier process is
//! replaced, any other kind of file at the path is an error (never deleted).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Why [`bind_replacing_socket`] failed (the caller names the path).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("exists and is not a socket")]
    NotASocket,
    #[error("cannot remove the stale socket file: {0}")]
    RemoveStale(io::Error),
    #[error("{0}")]
    Bind(io::Error),
}

/// Removes a socket file at `path` (left by an earlier process); nothing there is fine,
/// anything else there is [`BindError::NotASocket`].
pub fn remove_stale_socket(path: &Path) -> Result<(), BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(BindError::RemoveStale)
        }
        Ok(_) => Err(BindError::NotASocket),
        // Nothing there (or unreadable: bind reports the real problem).
        Err(_) => Ok(()),
    }
}

/// Binds and listens on `path`, replacing a stale socket file (see [`remove_stale_socket`]).
/// The caller removes the file when it is done with it.
pub fn bind_replacing_socket(path: &Path) -> Result<UnixListener, BindError> {
    remove_stale_socket(path)?;
    bind_listening(path).map_err(BindError::Bind)
}

/// Longest path a unix socket address holds (`sun_path` without its terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// Binds and listens on `path` so that the file appears only once connections to it succeed.
/// `bind(2)` creates the file and `listen(2)` comes after it: a peer that waits for the file
/// (QEMU users, scripts, tests) and connects in between gets ECONNREFUSED (seen about once in
/// 150 runs of a test on a busy 2-core host). So the socket is bound under a temporary name
/// in the same directory and renamed into place once listening; a path too long for the
/// temporary name is bound directly.
pub fn bind_listening(path: &Path) -> io::Result<UnixListener> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    if tmp.as_os_str().len() > SUN_PATH_MAX {
        return UnixListener::bind(path);
    }
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_stale_socket_and_refuses_other_files() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vu-spec-unix-").unwrap();
        let path = dir.as_path().join("s");
        // Nothing there.
        drop(bind_replacing_socket(&path).unwrap());
        // The socket file the dropped listener left behind is replaced.
        assert!(path.exists());
        let l = bind_replacing_socket(&path).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(l.accept().is_ok());
        // Bound under a temporary name and renamed: nothing else is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.as_path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s"]);
        // A regular file is kept and refused.
        let file = dir.as_path().join("f");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_replacing_socket(&file),
            Err(BindError::NotASocket)
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        // Bind errors come through (no such directory).
        assert!(matches!(
            bind_replacing_socket(&dir.as_path().join("no/s")),
            Err(BindError::Bind(_))
        ));
    }
}

//! Dropping root after setup: `--user UID[:GID]` (backends), `-run-with user=` / `-runas`
//! (accel).
//!
//! glibc applies `setgroups`, `setresgid` and `setresuid` to every thread of the process, and
//! the kernel clears the permitted and effective capabilities of each thread whose user ids all
//! become non-zero: afterwards the process has the rights of that user and no capability.

use std::ffi::CString;

/// The user and group a process switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The user name when given by name (its supplementary groups are then set from
    /// /etc/group, as QEMU's `-run-with user=NAME` does); none: no supplementary groups.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0:?}: no such user")]
    NoSuchUser(String),
    #[error("{0:?}: give a user name, UID or UID:GID")]
    Syntax(String),
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        source: std::io::Error,
    },
    #[error("still has user ids {0:?} after switching")]
    NotSwitched([u32; 3]),
}

/// The entry of /etc/passwd (or NSS) for a name or a uid: (name, uid, gid).
fn passwd(by: Result<&str, u32>) -> Option<(String, u32, u32)> {
    // SAFETY: a zeroed passwd is a valid out-parameter for getpw*_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = match by {
        Ok(name) => {
            let name = CString::new(name).ok()?;
            // SAFETY: all pointers are valid for the call; buf's length is passed.
            unsafe {
                libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            }
        }
        // SAFETY: as above.
        Err(uid) => unsafe {
            libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result)
        },
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pw.pw_uid, pw.pw_gid))
}

impl User {
    /// `NAME`, `UID` (its group from the user database, else GID = UID) or `UID:GID`.
    pub fn parse(s: &str) -> Result<User, UserError> {
        let syntax = || UserError::Syntax(s.to_string());
        if let Some((u, g)) = s.split_once(':') {
            let uid = u.parse().map_err(|_| syntax())?;
            let gid = g.parse().map_err(|_| syntax())?;
            return Ok(User {
                uid,
                gid,
                name: None,
            });
        }
        if let Ok(uid) = s.parse::<u32>() {
            let gid = passwd(Err(uid)).map_or(uid, |(_, _, gid)| gid);
            return Ok(User {
                uid,
                gid,
                name: None,
            });
        }
        if s.is_empty() {
            return Err(syntax());
        }
        let (name, uid, gid) = passwd(Ok(s)).ok_or_else(|| UserError::NoSuchUser(s.into()))?;
        Ok(User {
            uid,
            gid,
            name: Some(name),
        })
    }
}

fn check(call: &'static str, rc: libc::c_int) -> Result<(), UserError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(UserError::Call {
            call,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Switches every thread of the process to `user`: supplementary groups, then group, then
/// user ids (real, effective and saved). Call after setup and before [`super::confine`].
pub fn drop_privileges(user: &User) -> Result<(), UserError> {
    match &user.name {
        Some(name) => {
            let c = CString::new(name.as_str()).map_err(|_| UserError::Syntax(name.clone()))?;
            // SAFETY: a NUL-terminated name and an integer.
            check("initgroups", unsafe {
                libc::initgroups(c.as_ptr(), user.gid)
            })?;
        }
        // SAFETY: one gid from a valid array.
        None => check("setgroups", unsafe { libc::setgroups(1, &user.gid) })?,
    }
    // SAFETY: integer arguments only.
    check("setresgid", unsafe {
        libc::setresgid(user.gid, user.gid, user.gid)
    })?;
    // SAFETY: integer arguments only.
    check("setresuid", unsafe {
        libc::setresuid(user.uid, user.uid, user.uid)
    })?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    check("getresuid", unsafe {
        libc::getresuid(&mut r, &mut e, &mut s)
    })?;
    if [r, e, s] != [user.uid; 3] {
        return Err(UserError::NotSwitched([r, e, s]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_uids_and_pairs() {
        assert_eq!(
            User::parse("1000:1001").unwrap(),
            User {
                uid: 1000,
                gid: 1001,
                name: None
            }
        );
        let root = User::parse("root").unwrap();
        assert_eq!(
            (root.uid, root.gid, root.name.as_deref()),
            (0, 0, Some("root"))
        );
        assert_eq!(User::parse("0").unwrap().gid, 0);
        // A uid without a passwd entry: its own number as the group.
        assert_eq!(User::parse("54321").unwrap().gid, 54321);
        assert!(matches!(
            User::parse("no-such-user-here"),
            Err(UserError::NoSuchUser(_))
        ));
        for bad in ["", "1:", ":1", "a:b", "1:2:3"] {
            assert!(User::parse(bad).is_err(), "{bad}");
        }
    }
}

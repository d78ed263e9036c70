//! seccomp-bpf: the allow-list, and the SIGSYS handler that names a denied call.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Allow, SandboxError};

/// Calls the SIGSYS handler itself makes, and the ones every Rust thread needs to finish.
const ALWAYS: &[&str] = &[
    "write",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "getpid",
    "gettid",
    "tgkill",
    "exit",
    "exit_group",
];

/// The number of system call `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        super::syscalls_x86_64::SYSCALLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

/// The name of system call `nr` on this architecture (`"?"` if unknown). Allocation-free, so
/// the SIGSYS handler can use it.
pub fn syscall_name(nr: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        super::syscalls_x86_64::SYSCALLS
            .iter()
            .find(|(_, n)| *n == nr)
            .map_or("?", |(name, _)| name)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        "?"
    }
}

/// The `clone` flags of glibc's `pthread_create` (`CLONE_VM | CLONE_FS | CLONE_FILES |
/// CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID |
/// CLONE_CHILD_CLEARTID`), as Firecracker's filters allow them.
pub(crate) const PTHREAD_CLONE_FLAGS: u32 = 0x3d_0f00;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The BPF program: the calls of `allow` (and [`ALWAYS`]) pass, anything else traps (SIGSYS).
pub(crate) fn compile(allow: &[Allow]) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    let number =
        |name: &'static str| syscall_number(name).ok_or(SandboxError::UnknownSyscall(name));
    for name in ALWAYS {
        rules.insert(number(name)?, None);
    }
    // A thread narrowing itself ([`super::confine_thread`]) sets no_new_privs again and adds a
    // filter: both can only take rights away.
    let allow: Vec<Allow> = allow
        .iter()
        .copied()
        .chain([
            Allow::ArgEq("prctl", 0, libc::PR_SET_NO_NEW_PRIVS as u32),
            Allow::Any("seccomp"),
        ])
        .collect();
    let allow = &allow[..];
    let threads_only = allow.contains(&Allow::NewThreads);
    for a in allow {
        match *a {
            Allow::NewThreads => {
                let cond = SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    u64::from(PTHREAD_CLONE_FLAGS),
                )?;
                let rule = SeccompRule::new(vec![cond])?;
                if let Some(v) = rules
                    .entry(number("clone")?)
                    .or_insert_with(|| Some(Vec::new()))
                {
                    v.push(rule);
                }
            }
            // `None`: allowed whatever the arguments.
            Allow::Any(name) => {
                rules.insert(number(name)?, None);
            }
            Allow::ArgEq(name, index, value) => {
                let cond = SeccompCondition::new(
                    index,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    u64::from(value),
                )?;
                let rule = SeccompRule::new(vec![cond])?;
                // `None` (already allowed for any arguments) stays as it is.
                if let Some(v) = rules
                    .entry(number(name)?)
                    .or_insert_with(|| Some(Vec::new()))
                {
                    v.push(rule);
                }
            }
        }
    }
    let rules = rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, ARCH)?;
    let program: BpfProgram = filter.try_into()?;
    if !threads_only {
        return Ok(program);
    }
    // clone3 answers ENOSYS, ahead of the rest (jumps in `program` are relative, so it runs
    // unchanged after these three instructions). The number alone is checked: clone3 is 435
    // on every architecture, and any other ABI's call with that number failing is harmless.
    let clone3 = u32::try_from(number("clone3")?).expect("system call numbers are small");
    let ins = |code: u16, jt: u8, jf: u8, k: u32| seccompiler::sock_filter { code, jt, jf, k };
    let mut out = vec![
        // A = seccomp_data.nr
        ins((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0, 0, 0),
        ins(
            (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            0,
            1,
            clone3,
        ),
        ins(
            (libc::BPF_RET | libc::BPF_K) as u16,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
    ];
    out.extend(program);
    Ok(out)
}

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// Installs the SIGSYS handler: one line on stderr naming the denied call, then death by SIGSYS.
pub(crate) fn install_sigsys_handler(program: &'static str) -> Result<(), SandboxError> {
    let _ = PROGRAM.set(program);
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, completed below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only makes async-signal-safe calls (write, sigaction,
    // sigprocmask, getpid, gettid, tgkill, _exit) on memory it owns or static data.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(SandboxError::SigsysHandler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` (signo, errno, code, padding, call address).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; for SIGSYS from
    // seccomp its union holds the call address and then the system call number (an int).
    let nr = unsafe {
        (info as *const u8)
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut line = Line::default();
    line.push(PROGRAM.get().copied().unwrap_or("sandbox").as_bytes());
    line.push(b": seccomp: system call ");
    line.push_number(i64::from(nr));
    line.push(b" (");
    line.push(syscall_name(i64::from(nr)).as_bytes());
    line.push(b") is not in the allow-list: killed by SIGSYS\n");
    // SAFETY: writes the bytes of a local buffer to stderr; then restores SIGSYS's default
    // action, unblocks it and sends it to this thread, which ends the process. All of these
    // are async-signal-safe.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// A fixed-size line built without allocating (signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: i64) {
        if n < 0 {
            self.push(b"-");
            n = -n;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("socket"), Some(41));
        assert_eq!(syscall_name(41), "socket");
        assert_eq!(syscall_name(100_000), "?");
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn line_formats_numbers() {
        let mut l = Line::default();
        l.push(b"x ");
        l.push_number(0);
        l.push(b" ");
        l.push_number(-12);
        l.push(b" ");
        l.push_number(450);
        assert_eq!(&l.buf[..l.len], b"x 0 -12 450");
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!(matches!(
            compile(&[Allow::Any("no_such_call")]),
            Err(SandboxError::UnknownSyscall("no_such_call"))
        ));
        assert!(compile(&[Allow::Any("read"), Allow::ArgEq("socket", 0, 1)]).is_ok());
    }
}

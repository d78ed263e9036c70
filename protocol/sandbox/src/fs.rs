//! Landlock: filesystem (and TCP, abstract socket, signal) access after setup.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::{FsAccess, PathRule, SandboxError};

/// The newest landlock ABI this code asks for (this host's kernel has 7). Older kernels enforce
/// what they know (best effort), and [`restrict`] says so.
const ABI: ABI = ABI::V7;

fn rights(access: FsAccess, is_dir: bool) -> BitFlags<AccessFs> {
    let read = if is_dir {
        AccessFs::ReadFile | AccessFs::ReadDir
    } else {
        AccessFs::ReadFile.into()
    };
    match access {
        FsAccess::Read => read,
        FsAccess::ReadWrite => read | AccessFs::WriteFile,
        FsAccess::RemoveEntries => AccessFs::RemoveFile.into(),
        FsAccess::Sockets => AccessFs::MakeSock | AccessFs::RemoveFile,
    }
}

/// The ruleset allowing `paths` and nothing else (see [`restrict_self`]).
pub(crate) fn ruleset(paths: &[PathRule]) -> Result<RulesetCreated, SandboxError> {
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI))?
        .handle_access(AccessNet::from_all(ABI))?
        .scope(Scope::from_all(ABI))?
        .create()?;
    for rule in paths {
        let err = |source| SandboxError::LandlockPath {
            path: rule.path.clone(),
            source,
        };
        let fd = PathFd::new(&rule.path).map_err(|source| SandboxError::OpenPath {
            path: rule.path.clone(),
            source,
        })?;
        let is_dir = rule.path.is_dir();
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights(rule.access, is_dir)))
            .map_err(err)?;
    }
    Ok(ruleset)
}

/// Restricts the calling thread (and threads it creates later) to `ruleset`. `Ok(Err(what))`:
/// the kernel does not enforce everything, `what` says how much is missing.
pub(crate) fn restrict_self(
    ruleset: RulesetCreated,
) -> Result<Result<(), &'static str>, SandboxError> {
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(()),
        RulesetStatus::PartiallyEnforced => Err("only partly supported"),
        RulesetStatus::NotEnforced => Err("not supported"),
    })
}

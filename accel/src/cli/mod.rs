//! QEMU-style command-line parsing (owned by the CLI work; stub).
use crate::config::VmConfig;

/// What the command line asks for.
#[derive(Debug)]
pub enum CliAction {
    Run(Box<VmConfig>),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
}

pub fn parse(_args: &[String]) -> Result<CliAction, CliError> {
    Err(CliError::Invalid("not implemented".into()))
}

pub fn help_text() -> String {
    String::new()
}

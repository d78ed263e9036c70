//! Unit tests for the command-line parser.

mod builtin;
mod devices;
mod errors;
mod lines;
mod memory;
mod monitor;
mod platform;
mod topology;
mod values;

use super::{CliAction, CliError, parse};
use crate::config::VmConfig;

/// Splits a shell-like line on whitespace; `"..."` groups words (no escapes needed here).
pub(super) fn argv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses `line` (plus `-kernel vmlinux` unless the line has one) and expects a VM config.
pub(super) fn run(line: &str) -> VmConfig {
    match parse(&with_kernel(line)) {
        Ok(CliAction::Run(config)) => *config,
        other => panic!("{line}: expected a config, got {other:?}"),
    }
}

/// Parses `line` (plus `-kernel vmlinux`) and expects an error.
pub(super) fn fail(line: &str) -> CliError {
    match parse(&with_kernel(line)) {
        Err(e) => e,
        Ok(other) => panic!("{line}: expected an error, got {other:?}"),
    }
}

/// The error's message, checked to contain every fragment.
pub(super) fn fail_with(line: &str, fragments: &[&str]) -> String {
    let msg = fail(line).to_string();
    for f in fragments {
        assert!(msg.contains(f), "{line}: error '{msg}' lacks '{f}'");
    }
    msg
}

fn with_kernel(line: &str) -> Vec<String> {
    let mut args = argv(line);
    if !args.iter().any(|a| a == "-kernel") {
        args.extend(["-kernel".to_string(), "vmlinux".to_string()]);
    }
    args
}

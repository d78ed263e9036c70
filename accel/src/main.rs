use std::process::ExitCode;

use accel::cli::{self, CliAction};
use accel::devices::serial::restore_terminal;
use accel::vmm::{self, ExitReason};

fn main() -> ExitCode {
    vmm::mark_process_start();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match cli::parse(&args) {
        Ok(CliAction::Run(config)) => config,
        Ok(CliAction::Help) => {
            print!("{}", cli::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(CliAction::Version) => {
            println!("accel {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("accel: {e}");
            eprintln!("Try 'accel --help' for the supported options.");
            return ExitCode::from(1);
        }
    };
    // -daemonize forks here, while the process has one thread.
    let ready = if config.lifecycle.daemonize {
        match vmm::daemon::daemonize() {
            Ok(ready) => Some(ready),
            Err(e) => {
                eprintln!("accel: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let result = vmm::run(*config, ready);
    restore_terminal();
    match result {
        Ok(ExitReason::Shutdown) => ExitCode::SUCCESS,
        // QEMU exits 0 on SIGINT/SIGTERM after a clean teardown.
        Ok(ExitReason::Signal(sig)) => {
            eprintln!("accel: terminating on signal {sig}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("accel: {e}");
            ExitCode::from(1)
        }
    }
}

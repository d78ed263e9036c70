use std::process::ExitCode;

use accel::cli::{self, CliAction};

fn main() -> ExitCode {
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
    match accel::vmm::run(*config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accel: {e}");
            ExitCode::from(1)
        }
    }
}

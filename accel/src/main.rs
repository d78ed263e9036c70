use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use accel::cli::{self, CliAction};
use accel::devices::serial::restore_terminal;
use accel::vmm::{self, ExitReason};

/// `-msg timestamp=on`: log lines and fatal errors start with a timestamp.
static MSG_TIMESTAMP: AtomicBool = AtomicBool::new(false);

/// Prints a fatal error as QEMU does (`-msg timestamp=on` puts the time first).
fn report(e: &dyn std::fmt::Display) {
    if MSG_TIMESTAMP.load(Ordering::Relaxed) {
        let now = humantime_utc();
        eprintln!("{now} accel: {e}");
    } else {
        eprintln!("accel: {e}");
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
fn humantime_utc() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_micros()
    )
}

fn main() -> ExitCode {
    vmm::mark_process_start();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            if MSG_TIMESTAMP.load(Ordering::Relaxed) {
                // QEMU's -msg timestamp=on: "<RFC 3339 UTC, microseconds> <program>: <msg>".
                writeln!(
                    buf,
                    "{} accel: {}: {}",
                    buf.timestamp_micros(),
                    record.level(),
                    record.args()
                )
            } else {
                writeln!(
                    buf,
                    "[{} {:<5} {}] {}",
                    buf.timestamp(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
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
    MSG_TIMESTAMP.store(config.platform.msg_timestamp, Ordering::Relaxed);
    // -daemonize forks here, while the process has one thread.
    let ready = if config.lifecycle.daemonize {
        match vmm::daemon::daemonize() {
            Ok(ready) => Some(ready),
            Err(e) => {
                report(&e);
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
        // isa-debug-exit: the shell sees the low 8 bits of QEMU's exit() argument.
        Ok(ExitReason::DebugExit(status)) => ExitCode::from((status & 0xff) as u8),
        // QEMU exits 0 on SIGINT/SIGTERM after a clean teardown.
        Ok(ExitReason::Signal(sig)) => {
            eprintln!("accel: terminating on signal {sig}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}

//! `vhost-user-rng --socket-path PATH [--source FILE] [--max-bytes N --period MS]`: see
//! `vhost_user_devices::rng`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vhost_user_devices::rng::main_with_args(vhost_user_devices::rng::RngArgs::parse())
}

//! `vhost-user-console --socket-path PATH (--output FILE | --socket P | --stdio)`: see
//! `vhost_user_devices::console`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vhost_user_devices::console::main_with_args(vhost_user_devices::console::ConsoleArgs::parse())
}

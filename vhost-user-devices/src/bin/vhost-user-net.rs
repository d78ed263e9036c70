//! `vhost-user-net --socket-path PATH (--tap IFNAME | --peer PATH2) [...]`: see
//! `vhost_user_devices::net`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vhost_user_devices::net::main_with_args(vhost_user_devices::net::NetArgs::parse())
}

//! `vhost-user-vsock --socket-path PATH --guest-cid N --uds-path P`: see
//! `vhost_user_devices::vsock`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vhost_user_devices::vsock::main_with_args(vhost_user_devices::vsock::VsockArgs::parse())
}

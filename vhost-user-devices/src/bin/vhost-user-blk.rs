//! `vhost-user-blk --socket-path PATH --image FILE [...]`: see `vhost_user_devices::blk`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vhost_user_devices::blk::main_with_args(vhost_user_devices::blk::BlkArgs::parse())
}

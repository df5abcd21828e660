use clap::Parser;

use bucketfs::cli::Cli;
use bucketfs::daemon::{self, Ready};

fn main() {
    let cli = Cli::parse();
    let ready = Ready::from_env();
    if !cli.foreground && !cli.list_uploads && ready.is_terminal() {
        daemon::daemonize();
    }
    std::process::exit(bucketfs::mount::run(cli, ready));
}

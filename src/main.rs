use clap::{CommandFactory, FromArgMatches};

use bucketfs::cli::Cli;
use bucketfs::daemon::{self, Ready};
use bucketfs::{generate, mount_helper, notify};

fn main() {
    mount_helper::ensure_home();
    // mount(8)'s helper convention and `-o` lists become ordinary long options.
    let line = mount_helper::command_line(std::env::args_os().collect()).unwrap_or_else(|e| {
        eprintln!("bucketfs: {e}");
        std::process::exit(1)
    });
    if let Some(status) = generate::from_args(&line.args) {
        std::process::exit(status);
    }
    let mut matches = Cli::command().get_matches_from(&line.args);
    let cli = Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit());
    line.report_ignored();
    if line.fake {
        std::process::exit(0);
    }
    if let Some(message) = line
        .helper
        .then(|| mount_helper::already_mounted(&cli))
        .flatten()
    {
        eprintln!("bucketfs: {message}");
        std::process::exit(0);
    }
    // Under systemd (Type=notify) bucketfs is the service's main process and stays in the
    // foreground; mount(8) waits for its helper, which returns once mounted in any case.
    notify::init_from_env(!line.helper);
    let ready = Ready::from_env();
    if !cli.foreground && !cli.list_uploads && ready.is_terminal() && !notify::supervised() {
        daemon::daemonize(&line.args[1..]);
    }
    std::process::exit(bucketfs::mount::run(cli, ready));
}

//! Log setup: `tracing` to stderr or a file. Secrets are never logged: credentials are not
//! part of any `Debug` output, and the SDK's own request logs stay off unless RUST_LOG asks.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

pub fn init(debug: bool, log_file: Option<&Path>) -> Result<(), String> {
    let default = if debug {
        "bucketfs=debug,warn"
    } else {
        "bucketfs=info,warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

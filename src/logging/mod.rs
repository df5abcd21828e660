//! Log setup: `tracing` to stderr or a file. Every line is redacted before it is written (see
//! `redact`): no secret reaches a log at any level, the SDK's trace output included.

mod redact;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

pub use redact::register_secret;
use redact::Redacting;

/// Where log lines go: stderr, or a log file.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stderr => std::io::stderr().write(buf),
            Sink::File(file) => (&**file).write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stderr => std::io::stderr().flush(),
            Sink::File(file) => (&**file).flush(),
        }
    }
}

/// Sets up logging to stderr, or appended to `log_file` (created 0600: logs name object keys
/// and, at debug level, much more; `private` also refuses a symlink there, for files under
/// the state directory).
pub fn init(debug: bool, log_file: Option<&Path>, private: bool) -> Result<(), String> {
    redact::register_environment_secrets();
    let default = if debug {
        "bucketfs=debug,warn"
    } else {
        "bucketfs=info,warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let sink = match log_file {
        Some(path) => {
            let file = crate::private_files::open_append(path, private)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            Sink::File(Arc::new(file))
        }
        None => Sink::Stderr,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours are escape sequences: none, so every control character in a line is one a
        // logged value brought, and is escaped.
        .with_ansi(false)
        .with_writer(move || Redacting(sink.clone()))
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

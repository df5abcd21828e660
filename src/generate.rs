//! Shell completions and the man page, generated from the clap definition by the binary on
//! demand (`bucketfs --completions SHELL`, `bucketfs --man-page`), so they never drift from
//! the options and cost no build step.

use std::io::Write;

use std::ffi::OsString;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "bucketfs", out);
}

/// Writes the man page, bucketfs(1), in roff.
pub fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Prints what `--completions` or `--man-page` asks for; the exit status, or None when
/// neither was given. Read before the real parse, which would want a bucket and mountpoint.
pub fn from_args(args: &[OsString]) -> Option<i32> {
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    let shell = matches.try_get_one::<Shell>("completions").ok().flatten();
    let mut stdout = std::io::stdout().lock();
    let written = if let Some(shell) = shell {
        completions(*shell, &mut stdout);
        Ok(())
    } else if matches.try_get_one::<bool>("man_page").ok().flatten() == Some(&true) {
        man_page(&mut stdout)
    } else {
        return None;
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => Some(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Some(0),
        Err(e) => {
            eprintln!("bucketfs: cannot write: {e}");
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_name_the_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("endpoint-url"), "{shell}: {text}");
        }
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH bucketfs 1"), "{page}");
        assert!(page.contains("endpoint\\-url"), "{page}");
    }
}

//! Running in the background: the parent starts a copy of itself in the foreground, detached
//! (new session, no terminal), and exits 0 only once that copy reports the mount is live, or
//! non-zero with the copy's error message. Nothing fails silently. Under systemd
//! (`Type=notify`), the same moments are reported on the notify socket (see `notify`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const READY_FD_ENV: &str = "BUCKETFS_READY_FD";

/// Where the outcome of mounting is reported.
pub enum Ready {
    /// Foreground: errors go to stderr.
    Terminal,
    /// Started by a daemonizing parent: one line on this pipe, `OK` or `ERR message`.
    Parent(File),
}

impl Ready {
    /// The channel this process was given by its parent, if any.
    pub fn from_env() -> Self {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        std::env::remove_var(READY_FD_ENV);
        match fd {
            // SAFETY: the parent created this descriptor for us and nothing else owns it.
            Some(fd) if fd > 2 => Ready::Parent(unsafe { File::from_raw_fd(fd) }),
            _ => Ready::Terminal,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Ready::Terminal)
    }

    pub fn success(self) {
        crate::notify::ready("mounted; SIGTERM stores open files, then unmounts");
        if let Ready::Parent(mut pipe) = self {
            let _ = writeln!(pipe, "OK");
        }
    }

    pub fn failure(self, message: &str) {
        crate::notify::status(&format!("cannot mount: {message}"));
        match self {
            Ready::Terminal => eprintln!("bucketfs: {message}"),
            Ready::Parent(mut pipe) => {
                let _ = writeln!(pipe, "ERR {}", message.replace('\n', " "));
            }
        }
    }
}

/// Starts this program again with `args` (the command line after the program name, as
/// parsed) in the foreground, detached, and exits with its outcome.
pub fn daemonize(args: &[OsString]) -> ! {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two descriptors for pipe() to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!(
            "bucketfs: cannot create a pipe: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    // SAFETY: pipe() just returned these two descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: setting FD_CLOEXEC on a descriptor we own.
    unsafe { libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC) };

    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("bucketfs: cannot find my own executable: {e}");
            std::process::exit(1);
        }
    };
    let mut command = Command::new(exe);
    command
        .args(args)
        .arg("--foreground")
        .env(READY_FD_ENV, fds[1].to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("bucketfs: cannot start the background process: {e}");
            std::process::exit(1);
        }
    };
    drop(write_end);
    // SAFETY: read_end is an open descriptor we own; File takes it over.
    let reader = BufReader::new(unsafe { File::from_raw_fd(read_end.into_raw_fd()) });
    let line = reader
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    if line == "OK" {
        std::process::exit(0);
    }
    if let Some(message) = line.strip_prefix("ERR ") {
        eprintln!("bucketfs: {message}");
    } else {
        let status = child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        eprintln!("bucketfs: the background process exited before the mount was ready ({status}); run with -f to see why");
    }
    std::process::exit(1);
}

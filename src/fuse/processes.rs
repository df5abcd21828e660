//! What /proc says about the process behind a request: which process opened a file handle,
//! whether it still runs, and whether it holds another descriptor of the same file (see the
//! adapter's `flush`).

use std::path::Path;

/// The process (thread group) a request's thread belongs to.
pub(super) fn process_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}

/// True while process `pid` runs (a zombie has ended).
pub(super) fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// True when process `pid` still holds a descriptor open for writing of inode `ino` of the
/// mount at `mountpoint`. At flush time the closing descriptor has already left the process's
/// table.
pub(super) fn holds_another_writer(pid: u32, ino: u64, mountpoint: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        // A read-only descriptor does not keep the write going.
        let same_ino = std::fs::read_to_string(fd.path()).is_ok_and(|info| {
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_string)
            };
            let writable = field("flags:")
                .and_then(|f| u32::from_str_radix(&f, 8).ok())
                .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            writable && field("ino:") == Some(ino.to_string())
        });
        same_ino
            && std::fs::read_link(format!(
                "/proc/{pid}/fd/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|target| target.starts_with(mountpoint))
    })
}

//! systemd's readiness protocol (sd_notify(3)), without libsystemd: with `Type=notify`, the
//! service manager sets `NOTIFY_SOCKET` to a unix datagram socket (a path, or an abstract name
//! written with a leading `@`) and waits for `READY=1` on it. bucketfs sends `READY=1` when the
//! mount is live (the moment a daemonizing parent is told `OK`) and `STOPPING=1` when its
//! shutdown begins, each with a `STATUS=` line for `systemctl status`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::OnceLock;

const ENV: &str = "NOTIFY_SOCKET";

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment (so the programs bucketfs starts, such as
/// fusermount3, do not inherit it) and keeps it when `use_it`. Call once, at start, before
/// other threads exist.
pub fn init_from_env(use_it: bool) {
    let socket = std::env::var_os(ENV).filter(|v| !v.is_empty());
    std::env::remove_var(ENV);
    let _ = SOCKET.set(socket.filter(|_| use_it));
}

/// Whether a service manager waits for our readiness (systemd `Type=notify`): bucketfs then
/// stays in the foreground, as the unit's main process.
pub fn supervised() -> bool {
    SOCKET.get().is_some_and(Option::is_some)
}

/// The mount is live.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// Shutdown has begun: storing open files, then unmounting (on a signal), or the mount is
/// gone (unmounted from outside).
pub fn stopping(signalled: bool) {
    let status = if signalled {
        "stopping: storing open files, then unmounting"
    } else {
        "unmounted; exiting"
    };
    send(&format!("STOPPING=1\nSTATUS={status}"));
}

/// A status line only (mounting failed: the exit follows).
pub fn status(status: &str) {
    send(&format!("STATUS={}", status.replace('\n', " ")));
}

/// Sends `state` when there is a socket; a failure is logged, never fatal.
fn send(state: &str) {
    if let Some(Some(socket)) = SOCKET.get() {
        if let Err(e) = send_to(socket, state) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}

fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        datagram.send_to_addr(state.as_bytes(), &address)?;
    } else if bytes.starts_with(b"/") {
        datagram.send_to(state.as_bytes(), Path::new(socket))?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "NOTIFY_SOCKET={} is not a unix socket path or @name",
                socket.to_string_lossy()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("bucketfs-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(send_to(OsStr::new("vsock:2:3"), "READY=1").is_err());
    }
}

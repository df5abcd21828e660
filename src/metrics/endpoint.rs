//! The `--metrics-addr` HTTP endpoint. Any local user can connect to it, so every connection
//! is bounded: its request head is read into a fixed buffer of `MAX_REQUEST` bytes within
//! `DEADLINE` in all (not per read), each connection has a thread of its own so a slow client
//! delays no other scrape, and at most `MAX_CONNECTIONS` are served at once (more are closed
//! at once).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{metrics, Usage};

/// Longest request head read (request line and headers); a scrape sends a few hundred bytes.
pub const MAX_REQUEST: usize = 8 << 10;
/// Longest a connection may take to send its request and read the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

type Sample = Arc<dyn Fn() -> Usage + Send + Sync>;

/// Serves `GET /metrics` on `addr`; `sample` refreshes the levels (memory, disk, uploads)
/// just before each scrape. Binding happens here, so a port in use is an error before the
/// mount, not a log line after it.
pub fn serve(addr: SocketAddr, sample: Sample) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let serving = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("bucketfs-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if serving.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    serving.fetch_sub(1, Ordering::SeqCst);
                    tracing::debug!("metrics: too many connections, one refused");
                    continue; // dropped: closed
                }
                // The slot is given back when the connection's thread ends, or with the
                // closure if no thread could be made.
                let (slot, sample) = (Slot(serving.clone()), sample.clone());
                let spawned = std::thread::Builder::new()
                    .name("bucketfs-metrics-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(stream, sample.as_ref()) {
                            tracing::debug!("metrics request failed: {e}");
                        }
                    });
                if spawned.is_err() {
                    tracing::debug!("metrics: no thread for a connection");
                }
            }
        })?;
    Ok(bound)
}

/// One of the `MAX_CONNECTIONS` connections being served; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the request head (up to the blank line) within the deadline and the size cap;
/// `None` when either is exceeded.
fn read_head(
    stream: &mut TcpStream,
    buf: &mut [u8; MAX_REQUEST],
) -> std::io::Result<Option<usize>> {
    let deadline = Instant::now() + DEADLINE;
    let mut len = 0;
    loop {
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..len].windows(2).any(|w| w == b"\n\n")
        {
            return Ok(Some(len));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || len == buf.len() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One HTTP/1.x request: the metrics for `GET /metrics` (and `/`), 404 otherwise, 400 for a
/// request too big or too slow.
fn answer(
    mut stream: TcpStream,
    sample: &(dyn Fn() -> Usage + Send + Sync),
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut buf = [0u8; MAX_REQUEST];
    let Some(len) = read_head(&mut stream, &mut buf)? else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "request too large or too slow\n",
        );
    };
    let head = String::from_utf8_lossy(&buf[..len]);
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method == "GET" && (path == "/metrics" || path == "/") {
        metrics().set_usage(sample());
        let body = metrics().encode();
        respond(
            &mut stream,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &body,
        )
    } else {
        respond(
            &mut stream,
            "404 Not Found",
            "text/plain; charset=utf-8",
            "bucketfs serves its metrics at /metrics\n",
        )
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let sample: Sample = Arc::new(|| Usage {
            open_files: 7,
            ..Usage::default()
        });
        serve("127.0.0.1:0".parse().unwrap(), sample).unwrap()
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_answers_a_scrape_and_refuses_other_paths() {
        let addr = server();
        let scrape = get(addr, "/metrics");
        assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
        assert!(scrape.contains("bucketfs_open_files 7"), "{scrape}");
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn a_request_without_end_is_cut_at_the_size_cap() {
        let addr = server();
        let mut stream = TcpStream::connect(addr).unwrap();
        // Far more than the cap, without a newline: the server stops reading at the cap and
        // answers 400 (the write may then fail: the server closed).
        let chunk = vec![b'A'; 64 << 10];
        let mut sent = 0;
        for _ in 0..64 {
            match stream.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(sent >= MAX_REQUEST, "sent {sent}");
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn a_slow_client_delays_no_other_scrape() {
        let addr = server();
        // Sends a byte now and then, never ending its request.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"G").unwrap();
        let started = Instant::now();
        let scrape = get(addr, "/metrics");
        assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
        assert!(
            started.elapsed() < DEADLINE,
            "the scrape waited for the slow client: {:?}",
            started.elapsed()
        );
        slow.write_all(b"E").unwrap();
    }
}

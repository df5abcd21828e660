//! Seeing what a mount does: the Prometheus metrics of `--metrics-addr`, scraped while the
//! mount works, the stats line logged at unmount, and failure log lines that name the key and
//! the S3 error code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-addr");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample whose line starts with `prefix` (name and labels), summed over
/// every line that matches (for example every status of one operation).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_are_served_while_mounted_and_a_stats_line_is_logged_at_unmount() {
    let bucket = TestBucket::new();
    let seed: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    bucket.put("seed.bin", seed.clone());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut mount = Mount::new(
        &bucket.name,
        &["--metrics-addr", &addr, "--max-memory", "64"],
    );
    assert_eq!(std::fs::read(mount.join("seed.bin")).unwrap(), seed);
    std::fs::write(mount.join("new.bin"), vec![7u8; 1 << 20]).unwrap();
    assert!(std::fs::metadata(mount.join("absent")).is_err());
    let _ = std::fs::read_dir(mount.path()).unwrap().count();

    let text = scrape(port);
    let at_least = |prefix: &str, min: f64| {
        let value = sample(&text, prefix);
        assert!(value >= min, "{prefix}: {value} < {min} in:\n{text}");
    };
    at_least(
        "bucketfs_s3_requests_total{op=\"GetObject\",status=\"20",
        1.0,
    );
    at_least(
        "bucketfs_s3_requests_total{op=\"PutObject\",status=\"200\"}",
        1.0,
    );
    at_least("bucketfs_s3_requests_total{op=\"ListObjectsV2\"", 1.0);
    at_least(
        "bucketfs_s3_request_duration_seconds_count{op=\"GetObject\"}",
        1.0,
    );
    at_least("bucketfs_s3_received_bytes_total", (3 << 20) as f64);
    at_least("bucketfs_s3_sent_bytes_total", (1 << 20) as f64);
    at_least("bucketfs_fuse_operations_total{op=\"read\"}", 1.0);
    at_least("bucketfs_fuse_operations_total{op=\"write\"}", 1.0);
    at_least("bucketfs_fuse_operations_total{op=\"lookup\"}", 1.0);
    at_least("bucketfs_fuse_errors_total{errno=\"ENOENT\"}", 1.0);
    at_least("bucketfs_cache_lookups_total{cache=\"metadata\"", 1.0);
    assert_eq!(
        sample(&text, "bucketfs_memory_budget_bytes "),
        (64u64 << 20) as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, "bucketfs_disk_cache_limit_bytes "),
        (4096u64 << 20) as f64,
        "the default --max-cache-size:\n{text}"
    );
    for family in [
        "bucketfs_memory_in_use_bytes",
        "bucketfs_disk_cache_in_use_bytes",
        "bucketfs_uploads_in_flight",
        "bucketfs_open_files",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }

    mount.signal(libc::SIGTERM);
    let status = mount.wait_exit(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status}");
    let log = mount.log();
    let stats = log
        .lines()
        .find(|l| l.contains("stats: S3 requests"))
        .unwrap_or_else(|| panic!("no stats line in the log:\n{log}"));
    assert!(stats.contains("FUSE operations"), "{stats}");
}

#[test]
fn retries_and_failed_attempts_are_counted() {
    let server = OwnServer::start();
    let client = s3_client(&server.endpoint);
    runtime()
        .block_on(client.create_bucket().bucket("retried").send())
        .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::with_endpoint(
        "retried",
        &server.endpoint,
        &["--metrics-addr", &addr, "--max-attempts", "3"],
    );
    server.stop();
    let looked_up = std::fs::metadata(mount.join("while-down"));
    assert_eq!(
        looked_up.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{looked_up:?}"
    );
    let text = scrape(port);
    let retries = sample(&text, "bucketfs_s3_retries_total{op=\"HeadObject\"}");
    let failed = sample(
        &text,
        "bucketfs_s3_requests_total{op=\"HeadObject\",status=\"error\"}",
    );
    assert!(
        retries >= 2.0 && failed >= 3.0,
        "retries {retries}, failed attempts {failed}:\n{text}"
    );
}

#[test]
fn a_metrics_port_in_use_is_refused_before_mounting() {
    let bucket = TestBucket::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bucketfs_bin())
        .args([&bucket.name, dir.path().to_str().unwrap(), "-f"])
        .args(["--metrics-addr", &addr])
        .envs(server_env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn a_failed_upload_logs_the_key_and_the_s3_error_code() {
    let bucket = TestBucket::new();
    let mount = Mount::new(&bucket.name, &[]);
    // The bucket is deleted behind the mount's back: the close's PutObject fails with
    // NoSuchBucket, the close reports EIO, and the log says which key and why.
    runtime()
        .block_on(bucket.client.delete_bucket().bucket(&bucket.name).send())
        .unwrap();
    let written = std::fs::write(mount.join("orphan.txt"), b"nowhere to go");
    assert_eq!(
        written.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{written:?}"
    );
    let log = mount.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("orphan.txt")
            && l.contains("NoSuchBucket (HTTP 404)")),
        "no warning names the key and the S3 error code:\n{log}"
    );
}

#[test]
fn cp_inside_the_mount_copies_server_side() {
    let bucket = TestBucket::new();
    let data: Vec<u8> = (0..40u32 << 20).map(|i| (i % 253) as u8).collect();
    bucket.put("dir/original.bin", data.clone());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::new(&bucket.name, &["--metrics-addr", &addr]);
    let received_before = sample(&scrape(port), "bucketfs_s3_received_bytes_total");
    let sent_before = sample(&scrape(port), "bucketfs_s3_sent_bytes_total");
    sh_ok(&format!(
        "cp {} {}",
        shell_quote(&mount.join("dir/original.bin")),
        shell_quote(&mount.join("copy.bin"))
    ));
    let text = scrape(port);
    let received = sample(&text, "bucketfs_s3_received_bytes_total") - received_before;
    let sent = sample(&text, "bucketfs_s3_sent_bytes_total") - sent_before;
    assert!(
        received < (1 << 20) as f64 && sent < (1 << 20) as f64,
        "cp of 40 MiB moved {received} bytes in and {sent} out through the daemon"
    );
    assert!(
        sample(
            &text,
            "bucketfs_fuse_operations_total{op=\"copy_file_range\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "bucketfs_s3_requests_total{op=\"CopyObject\",status=\"200\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(bucket.get("copy.bin"), data, "the copy in the bucket");
    assert_eq!(std::fs::read(mount.join("copy.bin")).unwrap(), data);
    // A copy within a file (different offsets) goes through read and write and is right too.
    sh_ok(&format!(
        "dd if={} of={} bs=1M skip=1 count=2 status=none",
        shell_quote(&mount.join("dir/original.bin")),
        shell_quote(&mount.join("part.bin"))
    ));
    assert_eq!(bucket.get("part.bin"), data[1 << 20..3 << 20]);
}

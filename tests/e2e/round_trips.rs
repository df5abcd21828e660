//! S3 requests per everyday operation, counted with `--metrics-addr` on a real server: each
//! operation runs after the metadata TTL expired (cold) and, where it matters, right after a
//! listing of its directory (warm). The README's semantics table gives these counts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

/// S3 requests by operation name (HeadObject, ListObjectsV2, ...), all statuses together.
fn requests(port: u16) -> BTreeMap<String, u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-addr");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        // FUSE operations are counted too (in lower case: `lookup`, `getattr`), so a failure
        // shows what the kernel asked for.
        let rest = if let Some(rest) = line.strip_prefix("bucketfs_s3_requests_total{op=\"") {
            rest
        } else if let Some(rest) = line.strip_prefix("bucketfs_fuse_operations_total{op=\"") {
            rest
        } else {
            continue;
        };
        let op = rest.split('"').next().unwrap().to_string();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *counts.entry(op).or_default() += value as u64;
    }
    counts
}

/// What `script` cost in S3 requests, by operation.
struct Counted {
    by_op: BTreeMap<String, u64>,
}

impl Counted {
    /// S3 requests (their operation names start with a capital letter).
    fn total(&self) -> u64 {
        self.by_op
            .iter()
            .filter(|(op, _)| op.starts_with(char::is_uppercase))
            .map(|(_, n)| n)
            .sum()
    }

    fn of(&self, op: &str) -> u64 {
        self.by_op.get(op).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .by_op
            .iter()
            .map(|(op, n)| format!("{op} × {n}"))
            .collect();
        write!(f, "{} ({})", self.total(), parts.join(", "))
    }
}

struct Counter {
    port: u16,
}

impl Counter {
    /// Runs `script` in a shell and counts the requests it made (the mount does nothing
    /// else meanwhile: every count is this operation's).
    fn count(&self, script: &str) -> Counted {
        let before = requests(self.port);
        sh_ok(script);
        // Requests answered after the command returned (none expected) are counted too.
        std::thread::sleep(Duration::from_millis(100));
        let after = requests(self.port);
        let by_op = after
            .iter()
            .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Counted { by_op }
    }
}

/// An operation's name, its most S3 requests in all, and its most of some operations.
type Bound = (&'static str, u64, &'static [(&'static str, u64)]);

/// Waits out the metadata TTL (1 s) and the kernel's entry and attribute timeouts (the same).
fn expire() {
    std::thread::sleep(Duration::from_millis(1_300));
}

#[test]
fn everyday_operations_send_the_fewest_requests() {
    let bucket = TestBucket::new();
    let keys: Vec<String> = (1..=50).map(|i| format!("d/f{i}")).collect();
    bucket.put_many(&keys, &[b'x'; 100]);
    bucket.put("big", vec![7u8; 1 << 20]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::new(
        &bucket.name,
        &["--metrics-addr", &addr, "--metadata-ttl", "1"],
    );
    let root = shell_quote(mount.path());
    let counter = Counter { port };
    // The first conditional request of a mount probes the server (4 requests): a rename
    // here, so it counts in no operation below.
    sh_ok(&format!(
        "echo warm > {root}/warm && mv {root}/warm {root}/warmed"
    ));
    let mut table = Vec::new();
    let mut run = |name: &str, script: String, cold: bool| {
        if cold {
            expire();
        }
        let counted = counter.count(&script);
        eprintln!("{name:45} {counted}");
        table.push((name.to_string(), counted));
    };
    run("stat d/f1", format!("stat {root}/d/f1 >/dev/null"), true);
    run(
        "stat d/nope",
        format!("! stat {root}/d/nope 2>/dev/null"),
        true,
    );
    run(
        "ls -l d (50 files)",
        format!("ls -l {root}/d >/dev/null"),
        true,
    );
    run(
        "stat d/f3, warm (after ls)",
        format!("stat {root}/d/f3 >/dev/null"),
        false,
    );
    run(
        "cat d/f2 (100 bytes)",
        format!("cat {root}/d/f2 >/dev/null"),
        true,
    );
    run(
        "create and write 1 KiB",
        format!("head -c 1024 /dev/zero > {root}/d/new1"),
        true,
    );
    run(
        "write a temp file, mv it",
        format!("echo v > {root}/d/.tmp1 && mv {root}/d/.tmp1 {root}/d/final"),
        true,
    );
    run("rm d/new1", format!("rm {root}/d/new1"), true);
    run("chmod 600 d/f4", format!("chmod 600 {root}/d/f4"), true);
    run(
        "head -c 1 big (1 MiB)",
        format!("head -c 1 {root}/big >/dev/null"),
        true,
    );
    drop(mount);
    // At most (the fewest this design allows; see the README's semantics table). Garage
    // ignores conditional deletes, so a rename there sends one HEAD more than on moto or AWS.
    let most: &[Bound] = &[
        ("stat d/f1", 4, &[]),
        ("stat d/nope", 4, &[]),
        ("ls -l d (50 files)", 52, &[("ListObjectsV2", 2)]),
        ("stat d/f3, warm (after ls)", 0, &[]),
        ("cat d/f2 (100 bytes)", 4, &[("GetObject", 1)]),
        ("create and write 1 KiB", 3, &[("PutObject", 1)]),
        ("write a temp file, mv it", 8, &[("PutObject", 1)]),
        ("rm d/new1", 4, &[("DeleteObject", 1)]),
        ("chmod 600 d/f4", 5, &[("CopyObject", 1)]),
        ("head -c 1 big (1 MiB)", 3, &[("GetObject", 1)]),
    ];
    for ((name, counted), (expected_name, total, ops)) in table.iter().zip(most) {
        assert_eq!(name, expected_name);
        assert!(
            counted.total() <= *total,
            "{name}: {counted}, more than {total} S3 requests"
        );
        for (op, n) in *ops {
            assert!(
                counted.of(op) <= *n,
                "{name}: {counted}, more than {n} {op}"
            );
        }
    }
}

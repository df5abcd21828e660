//! What the mount is doing, in numbers: S3 requests, bytes, retries, throttles and latency;
//! cache hits and misses; memory, disk and uploads in use; FUSE operations and errors.
//!
//! The counters are process-wide (one mount per process) and always kept: an increment is a
//! few atomic operations. `--metrics-addr` serves them as Prometheus text (see `serve`); the
//! unmount logs a one-line summary of the totals (see `summary`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod endpoint;

pub use endpoint::serve;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The caches whose hits and misses are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Names and attributes answered without asking S3 (inode table, negative cache,
    /// directory snapshots) against those that needed a HEAD or a listing.
    Metadata,
    /// Read blocks kept in memory.
    Blocks,
    /// Objects staged on local disk for random reads.
    Staged,
}

impl Cache {
    fn label(self) -> &'static str {
        match self {
            Cache::Metadata => "metadata",
            Cache::Blocks => "blocks",
            Cache::Staged => "staged",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Levels sampled at scrape time from the filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_budget_bytes: u64,
    pub memory_in_use_bytes: u64,
    pub disk_limit_bytes: u64,
    pub disk_in_use_bytes: u64,
    pub uploads_in_flight: u64,
    pub open_files: u64,
}

/// Plain totals, for the summary line (a `Family` cannot be summed cheaply).
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    failed_requests: AtomicU64,
    retries: AtomicU64,
    throttles: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    hits: [AtomicU64; 3],
    misses: [AtomicU64; 3],
    fuse_ops: AtomicU64,
    fuse_errors: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    s3_requests: Family<Labels, Counter>,
    s3_retries: Family<Labels, Counter>,
    s3_throttles: Family<Labels, Counter>,
    s3_latency: Histograms,
    s3_bytes_received: Counter,
    s3_bytes_sent: Counter,
    /// `bucketfs_cache_lookups` by [cache][hit]: made once, so a lookup (one per block read)
    /// is an atomic add, not a label allocation and a family lookup.
    cache: [[Counter; 2]; 3],
    fuse_ops: Family<Labels, Counter>,
    /// The counters of `FUSE_OPERATIONS`, made once for the same reason (one per request).
    fuse_op_counters: std::collections::HashMap<&'static str, Counter>,
    fuse_errors: Family<Labels, Counter>,
    memory_budget: Gauge,
    memory_in_use: Gauge,
    disk_limit: Gauge,
    disk_in_use: Gauge,
    uploads_in_flight: Gauge,
    open_files: Gauge,
    totals: Totals,
}

/// The FUSE operations the adapter counts (see `fuse.rs`); others get a series when first seen.
const FUSE_OPERATIONS: &[&str] = &[
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "readlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "statfs",
    "access",
    "create",
    "fallocate",
    "copy_file_range",
    "getxattr",
    "listxattr",
    "setxattr",
    "removexattr",
];

/// Request latencies from 1 ms to about 33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let s3_requests = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_s3_requests",
            "S3 request attempts by operation and HTTP status (\"error\" when no response came)",
            s3_requests.clone(),
        );
        let s3_retries = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_s3_retries",
            "S3 request attempts after the first, by operation",
            s3_retries.clone(),
        );
        let s3_throttles = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_s3_throttles",
            "S3 answers asking to slow down (HTTP 503 or 429), by operation",
            s3_throttles.clone(),
        );
        let s3_latency: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "bucketfs_s3_request_duration_seconds",
            "Time from sending an S3 request attempt to its response headers, by operation",
            s3_latency.clone(),
        );
        let s3_bytes_received = Counter::default();
        registry.register(
            "bucketfs_s3_received_bytes",
            "Body bytes S3 announced in its responses (Content-Length)",
            s3_bytes_received.clone(),
        );
        let s3_bytes_sent = Counter::default();
        registry.register(
            "bucketfs_s3_sent_bytes",
            "Body bytes sent to S3 in requests",
            s3_bytes_sent.clone(),
        );
        let cache = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_cache_lookups",
            "Cache lookups by cache (metadata, blocks, staged) and result (hit, miss)",
            cache.clone(),
        );
        let fuse_ops = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_fuse_operations",
            "FUSE requests from the kernel by operation",
            fuse_ops.clone(),
        );
        let fuse_errors = Family::<Labels, Counter>::default();
        registry.register(
            "bucketfs_fuse_errors",
            "FUSE requests answered with an error, by errno",
            fuse_errors.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        Self {
            memory_budget: gauge(
                &mut registry,
                "bucketfs_memory_budget_bytes",
                "The memory budget (--max-memory)",
            ),
            memory_in_use: gauge(
                &mut registry,
                "bucketfs_memory_in_use_bytes",
                "Memory budget taken by buffers, read-ahead and cached blocks",
            ),
            disk_limit: gauge(
                &mut registry,
                "bucketfs_disk_cache_limit_bytes",
                "The disk bound for staged objects and changed files (--max-cache-size)",
            ),
            disk_in_use: gauge(
                &mut registry,
                "bucketfs_disk_cache_in_use_bytes",
                "Disk space reserved by staged objects and changed files",
            ),
            uploads_in_flight: gauge(
                &mut registry,
                "bucketfs_uploads_in_flight",
                "Multipart uploads started and not yet completed or aborted",
            ),
            open_files: gauge(&mut registry, "bucketfs_open_files", "File handles open"),
            registry,
            s3_requests,
            s3_retries,
            s3_throttles,
            s3_latency,
            s3_bytes_received,
            s3_bytes_sent,
            cache: [Cache::Metadata, Cache::Blocks, Cache::Staged].map(|c| {
                [false, true].map(|hit| {
                    cache
                        .get_or_create(&vec![
                            ("cache", c.label().to_string()),
                            ("result", if hit { "hit" } else { "miss" }.to_string()),
                        ])
                        .clone()
                })
            }),
            fuse_op_counters: FUSE_OPERATIONS
                .iter()
                .map(|&op| {
                    let counter = fuse_ops
                        .get_or_create(&vec![("op", op.to_string())])
                        .clone();
                    (op, counter)
                })
                .collect(),
            fuse_ops,
            fuse_errors,
            totals: Totals::default(),
        }
    }

    /// One S3 request attempt ended: `status` is None when no response came.
    pub fn s3_attempt(&self, op: &str, status: Option<u16>, elapsed: Duration, retry: bool) {
        let status_label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.s3_requests
            .get_or_create(&vec![("op", op.to_string()), ("status", status_label)])
            .inc();
        self.s3_latency
            .get_or_create(&vec![("op", op.to_string())])
            .observe(elapsed.as_secs_f64());
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_none_or(|s| s >= 400) {
            self.totals.failed_requests.fetch_add(1, Ordering::Relaxed);
        }
        if retry {
            self.s3_retries
                .get_or_create(&vec![("op", op.to_string())])
                .inc();
            self.totals.retries.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(status, Some(503 | 429)) {
            self.s3_throttles
                .get_or_create(&vec![("op", op.to_string())])
                .inc();
            self.totals.throttles.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn s3_bytes(&self, sent: u64, received: u64) {
        self.s3_bytes_sent.inc_by(sent);
        self.s3_bytes_received.inc_by(received);
        self.totals.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.totals
            .bytes_received
            .fetch_add(received, Ordering::Relaxed);
    }

    pub fn cache_lookup(&self, cache: Cache, hit: bool) {
        self.cache[cache.index()][usize::from(hit)].inc();
        let counts = if hit {
            &self.totals.hits
        } else {
            &self.totals.misses
        };
        counts[cache.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fuse_op(&self, op: &'static str) {
        match self.fuse_op_counters.get(op) {
            Some(counter) => counter.inc(),
            None => self
                .fuse_ops
                .get_or_create(&vec![("op", op.to_string())])
                .inc(),
        };
        self.totals.fuse_ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fuse_error(&self, errno: i32) {
        self.fuse_errors
            .get_or_create(&vec![("errno", errno_name(errno))])
            .inc();
        self.totals.fuse_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_usage(&self, usage: Usage) {
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.memory_budget, usage.memory_budget_bytes);
        set(&self.memory_in_use, usage.memory_in_use_bytes);
        set(&self.disk_limit, usage.disk_limit_bytes);
        set(&self.disk_in_use, usage.disk_in_use_bytes);
        set(&self.uploads_in_flight, usage.uploads_in_flight);
        set(&self.open_files, usage.open_files);
    }

    /// Every metric in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// The totals in one line, for the log at unmount.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let cache = |c: Cache| {
            format!(
                "{} {}/{}",
                c.label(),
                get(&t.hits[c.index()]),
                get(&t.hits[c.index()]) + get(&t.misses[c.index()])
            )
        };
        format!(
            "S3 requests {} ({} failed, {} retries, {} throttled); {} received, {} sent; \
             cache hits {}, {}, {}; FUSE operations {} ({} errors)",
            get(&t.requests),
            get(&t.failed_requests),
            get(&t.retries),
            get(&t.throttles),
            human_bytes(get(&t.bytes_received)),
            human_bytes(get(&t.bytes_sent)),
            cache(Cache::Metadata),
            cache(Cache::Blocks),
            cache(Cache::Staged),
            get(&t.fuse_ops),
            get(&t.fuse_errors),
        )
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `ENOENT` for 2: the label a reader of the metrics recognises.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::E2BIG => "E2BIG",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return errno.to_string(),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_events_appear_in_the_text_and_the_summary() {
        let m = Metrics::new();
        m.s3_attempt("GetObject", Some(200), Duration::from_millis(3), false);
        m.s3_attempt("PutObject", Some(503), Duration::from_millis(5), false);
        m.s3_attempt("PutObject", Some(200), Duration::from_millis(5), true);
        m.s3_attempt("HeadObject", None, Duration::from_millis(1), false);
        m.s3_bytes(100, 2048);
        m.cache_lookup(Cache::Blocks, true);
        m.cache_lookup(Cache::Blocks, false);
        m.fuse_op("read");
        m.fuse_error(libc::ENOENT);
        m.set_usage(Usage {
            memory_budget_bytes: 512 << 20,
            memory_in_use_bytes: 1 << 20,
            ..Usage::default()
        });
        let text = m.encode();
        for line in [
            "bucketfs_s3_requests_total{op=\"GetObject\",status=\"200\"} 1",
            "bucketfs_s3_requests_total{op=\"HeadObject\",status=\"error\"} 1",
            "bucketfs_s3_retries_total{op=\"PutObject\"} 1",
            "bucketfs_s3_throttles_total{op=\"PutObject\"} 1",
            "bucketfs_s3_received_bytes_total 2048",
            "bucketfs_s3_sent_bytes_total 100",
            "bucketfs_cache_lookups_total{cache=\"blocks\",result=\"hit\"} 1",
            "bucketfs_fuse_operations_total{op=\"read\"} 1",
            "bucketfs_fuse_errors_total{errno=\"ENOENT\"} 1",
            "bucketfs_memory_budget_bytes 536870912",
            "bucketfs_s3_request_duration_seconds_count{op=\"PutObject\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let summary = m.summary();
        assert!(
            summary.starts_with("S3 requests 4 (2 failed, 1 retries, 1 throttled); 2.0 KiB received, 100 B sent; cache hits metadata 0/0, blocks 1/2"),
            "{summary}"
        );
    }
}

//! Turns the command line and the environment into one checked [`Config`]. Every check that
//! can be made before touching the network is made here, each failing with one clear sentence.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Cli;
use crate::fs::attrs::AttrDefaults;
use crate::fs::disk_cache::{check_dir, DiskCacheConfig};
use crate::fs::names::normalize_prefix;
use crate::fs::read::ReadTuning;
use crate::fs::FsConfig;
use crate::store::s3::S3Settings;
use crate::store::PutOptions;

/// Ranged GETs in flight while one object is staged on local disk.
const STAGING_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid bucket name '{0}': a bucket name is 3 to 63 characters of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")]
    InvalidBucket(String),
    #[error("mountpoint {0} does not exist: create it first (mkdir -p {0})")]
    MountpointMissing(String),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("{0} (choose another with --cache-dir, or --max-cache-size 0 to stage nothing)")]
    CacheDir(String),
}

/// Where in S3 the mount points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    /// `""` or ending in `/`.
    pub prefix: String,
}

/// Parses `BUCKET`, `BUCKET:PREFIX` or `s3://BUCKET/PREFIX/` and checks the bucket name;
/// `s3://` is every bucket (an empty bucket name).
pub fn parse_target(value: &str) -> Result<Target, ConfigError> {
    if value == "s3://" {
        return Ok(Target {
            bucket: String::new(),
            prefix: String::new(),
        });
    }
    let (bucket, prefix) = if let Some(rest) = value.strip_prefix("s3://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else {
        value.split_once(':').unwrap_or((value, ""))
    };
    validate_bucket_name(bucket)?;
    Ok(Target {
        bucket: bucket.to_string(),
        prefix: normalize_prefix(prefix),
    })
}

pub fn validate_bucket_name(name: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::InvalidBucket(name.to_string());
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !name.chars().all(allowed)
        || !edge(name.chars().next())
        || !edge(name.chars().last())
        || name.contains("..")
    {
        return Err(bad());
    }
    Ok(())
}

/// Everything resolved: what to mount, where, and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The source as given (the mount's name in /proc/mounts).
    pub source: String,
    pub target: Target,
    pub mountpoint: PathBuf,
    pub s3: S3Settings,
    pub fs: FsConfig,
    pub allow_other: bool,
    pub allow_root: bool,
    pub auto_unmount: bool,
}

/// Reads an environment variable, treating empty as unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Resolves the command line. The region is filled in later (it may need the profile
    /// files) unless given by flag or environment.
    pub fn resolve(cli: &Cli) -> Result<Self, ConfigError> {
        let (source, mountpoint) = cli.source_and_mountpoint();
        let target = parse_target(source)?;
        // --list-uploads mounts nothing.
        let mountpoint = mountpoint.unwrap_or_default();
        let shown = mountpoint.display().to_string();
        match std::fs::metadata(&mountpoint) {
            _ if cli.list_uploads => {}
            Err(_) => return Err(ConfigError::MountpointMissing(shown)),
            Ok(meta) if !meta.is_dir() => return Err(ConfigError::MountpointNotDir(shown)),
            Ok(_) => {}
        }
        if !cli.metadata_ttl.is_finite() || cli.metadata_ttl < 0.0 {
            return Err(ConfigError::InvalidOption(
                "--metadata-ttl must be 0 or more seconds".into(),
            ));
        }
        if cli.max_memory < 16 {
            return Err(ConfigError::InvalidOption(
                "--max-memory must be at least 16 MiB".into(),
            ));
        }
        if cli.read_part_size > 1 << 30 {
            return Err(ConfigError::InvalidOption(
                "--read-part-size must be at most 1G".into(),
            ));
        }
        if cli.write_part_size < crate::fs::write::MIN_PART_SIZE || cli.write_part_size > 5 << 30 {
            return Err(ConfigError::InvalidOption(
                "--write-part-size must be between 5M and 5G (S3's part size limits)".into(),
            ));
        }
        if cli.max_connections == 0 {
            return Err(ConfigError::InvalidOption(
                "--max-connections must be at least 1".into(),
            ));
        }

        let endpoint_url = cli
            .endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("S3_ENDPOINT_URL"));
        if let Some(url) = &endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::InvalidOption(format!(
                    "endpoint URL '{url}' must start with http:// or https://"
                )));
            }
        }
        let force_path_style =
            cli.force_path_style || endpoint_url.as_deref().is_some_and(host_needs_path_style);
        let region = cli
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("S3_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_default();
        let static_credentials = match (env("S3_ACCESS_KEY"), env("S3_SECRET_KEY")) {
            (Some(access), Some(secret)) => Some((access, secret, env("S3_SESSION_TOKEN"))),
            _ => None,
        };

        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let max_memory = cli.max_memory << 20;
        // Every budget wait must be satisfiable: no part or chunk is larger than its budget.
        let shares = FsConfig {
            max_memory,
            ..FsConfig::default()
        };
        let mut write_part_size = cli.write_part_size;
        if write_part_size > shares.buffer_bytes() {
            let fitting = shares.buffer_bytes() & !((1 << 20) - 1);
            if fitting < crate::fs::write::MIN_PART_SIZE {
                return Err(ConfigError::InvalidOption(format!(
                    "--max-memory {} leaves {} MiB for writes (3/8 of it), less than one 5 MiB \
                     part: raise --max-memory",
                    cli.max_memory,
                    shares.buffer_bytes() >> 20
                )));
            }
            tracing::info!(
                "--write-part-size lowered to {} MiB to fit the write budget of --max-memory {} \
                 (3/8 of it)",
                fitting >> 20,
                cli.max_memory
            );
            write_part_size = fitting;
        }
        let part_size = cli
            .read_part_size
            .min(shares.readahead_bytes() / 2)
            .max(64 << 10);
        if part_size < cli.read_part_size {
            tracing::info!(
                "--read-part-size lowered to {} KiB to fit the read-ahead budget of \
                 --max-memory {} (a quarter of it)",
                part_size >> 10,
                cli.max_memory
            );
        }
        let staging_chunk = part_size.min(shares.buffer_bytes() / 4);
        let tuning = ReadTuning {
            part_size,
            max_window: (16 * part_size).min(max_memory / 4).max(part_size),
            ..ReadTuning::default()
        };
        let fs = FsConfig {
            prefix: target.prefix.clone(),
            defaults: AttrDefaults {
                uid: cli.uid.unwrap_or(uid),
                gid: cli.gid.unwrap_or(gid),
                file_mode: cli.file_mode,
                dir_mode: cli.dir_mode,
                forced_owner: crate::fs::attrs::Owner {
                    uid: cli.uid,
                    gid: cli.gid,
                },
            },
            shared: cli.allow_other || cli.allow_root,
            metadata_ttl: Duration::from_secs_f64(cli.metadata_ttl),
            read_only: cli.read_only,
            tuning,
            max_memory,
            write_part_size,
            content_type: cli.content_type.clone(),
            upload: PutOptions {
                storage_class: cli.storage_class.clone(),
                sse: cli.sse.clone(),
                sse_kms_key_id: cli.sse_kms_key_id.clone(),
                acl: cli.acl.clone(),
                ..PutOptions::default()
            },
            stat_metadata: cli.stat_metadata,
            bucket_name: target.bucket.clone(),
            presign_expiry: cli.presign_expiry,
            user_xattrs: cli.xattr,
            buckets_at_root: target.bucket.is_empty(),
            disk_cache: (cli.max_cache_size > 0).then(|| DiskCacheConfig {
                dir: cli.cache_dir.clone().unwrap_or_else(std::env::temp_dir),
                max_bytes: cli.max_cache_size << 20,
                chunk_size: staging_chunk,
                concurrency: STAGING_CONCURRENCY,
            }),
            ..FsConfig::default()
        };
        if let Some(disk_cache) = &fs.disk_cache {
            check_dir(&disk_cache.dir).map_err(ConfigError::CacheDir)?;
        }
        Ok(Config {
            source: source.to_string(),
            s3: S3Settings {
                bucket: target.bucket.clone(),
                region,
                endpoint_url,
                force_path_style,
                // An empty AWS_CA_BUNDLE counts as unset, as every variable here does.
                ca_bundle: cli.ca_bundle.clone().filter(|p| !p.as_os_str().is_empty()),
                profile: cli.profile.clone(),
                no_sign_request: cli.no_sign_request,
                static_credentials,
                max_attempts: cli.max_attempts,
                max_connections: cli.max_connections,
                receive_pool_bytes: fs.receive_pool_bytes() as usize,
            },
            fs,
            target,
            mountpoint,
            allow_other: cli.allow_other,
            allow_root: cli.allow_root,
            auto_unmount: cli.auto_unmount,
        })
    }
}

/// Virtual-hosted addressing (`bucket.host`) cannot work for an IP address or localhost.
fn host_needs_path_style(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if authority.starts_with('[') {
        return true; // IPv6 literal
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_in_every_form() {
        let t = parse_target("my-bucket").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("my-bucket", ""));
        let t = parse_target("my-bucket:some/prefix").unwrap();
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("my-bucket", "some/prefix/")
        );
        let t = parse_target("s3://my.bucket/a/b/").unwrap();
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("my.bucket", "a/b/")
        );
        let t = parse_target("s3://my-bucket").unwrap();
        assert_eq!(t.prefix, "");
    }

    #[test]
    fn parts_and_chunks_are_shrunk_to_fit_their_budgets() {
        use clap::Parser;
        let tmp = std::env::temp_dir();
        let cli = crate::cli::Cli::parse_from([
            "bucketfs",
            "my-bucket",
            tmp.to_str().unwrap(),
            "--max-memory",
            "16",
            "--write-part-size",
            "64M",
            "--read-part-size",
            "64M",
        ]);
        let config = Config::resolve(&cli).unwrap();
        let fs = &config.fs;
        assert!(
            fs.write_part_size <= fs.buffer_bytes(),
            "{}",
            fs.write_part_size
        );
        assert!(fs.write_part_size >= crate::fs::write::MIN_PART_SIZE);
        assert!(fs.tuning.part_size <= fs.readahead_bytes() / 2);
        let chunk = fs.disk_cache.as_ref().unwrap().chunk_size;
        assert!(chunk <= fs.buffer_bytes() / 4, "{chunk}");
        // At the default sizes nothing changes.
        let cli = crate::cli::Cli::parse_from(["bucketfs", "my-bucket", tmp.to_str().unwrap()]);
        let config = Config::resolve(&cli).unwrap();
        assert_eq!(config.fs.write_part_size, 8 << 20);
        assert_eq!(config.fs.tuning.part_size, 8 << 20);
    }

    #[test]
    fn bad_bucket_names_are_refused() {
        for bad in [
            "ab",
            "Upper",
            "under_score",
            "-lead",
            "trail-",
            "a..b",
            &"x".repeat(64),
            "",
        ] {
            assert!(
                matches!(
                    validate_bucket_name(bad),
                    Err(ConfigError::InvalidBucket(_))
                ),
                "{bad}"
            );
        }
        for good in ["abc", "my.bucket-1", &"x".repeat(63)] {
            assert!(validate_bucket_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn path_style_is_implied_for_ip_and_localhost() {
        assert!(host_needs_path_style("http://127.0.0.1:9000"));
        assert!(host_needs_path_style("http://localhost:9000/"));
        assert!(host_needs_path_style("http://[::1]:9000"));
        assert!(!host_needs_path_style("https://s3.example.com"));
    }
}

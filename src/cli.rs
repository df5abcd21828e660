//! Command-line options. Names follow mount-s3 and s3fs where users already know them.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bucketfs",
    version,
    about = "Mount an S3 bucket (AWS or any S3-compatible store) as a directory",
    after_help = "Credentials come from the standard AWS chain (environment, profile files, \
                  container and instance roles) or from S3_ACCESS_KEY/S3_SECRET_KEY.\n\
                  Unmount with: fusermount3 -u MOUNTPOINT"
)]
pub struct Cli {
    /// BUCKET, BUCKET:PREFIX or s3://BUCKET/PREFIX/; s3:// alone, or no bucket at all
    /// (`bucketfs MOUNTPOINT`), mounts every bucket as a top-level directory
    pub bucket: String,

    /// Directory to mount on (must exist); not used with --list-uploads
    pub mountpoint: Option<PathBuf>,

    /// S3 endpoint URL for S3-compatible stores [env: AWS_ENDPOINT_URL, S3_ENDPOINT_URL]
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Region [env: AWS_REGION, S3_REGION; default: the profile's, else us-east-1]
    #[arg(long)]
    pub region: Option<String>,

    /// Path-style addressing (http://host/bucket/key); implied when the endpoint is an IP
    /// address or localhost
    #[arg(long)]
    pub force_path_style: bool,

    /// PEM file of extra CA certificates for an HTTPS endpoint (added to the system's trusted
    /// roots) [env: AWS_CA_BUNDLE]
    #[arg(long, value_name = "FILE", env = "AWS_CA_BUNDLE", hide_env = true)]
    pub ca_bundle: Option<PathBuf>,

    /// Named profile from the AWS config and credentials files
    #[arg(long, env = "AWS_PROFILE")]
    pub profile: Option<String>,

    /// Send unsigned requests (public buckets); no credentials needed
    #[arg(long)]
    pub no_sign_request: bool,

    /// Mount read-only: every modification fails with EROFS
    #[arg(long)]
    pub read_only: bool,

    /// Owner of files and directories [default: the mounting user]
    #[arg(long)]
    pub uid: Option<u32>,

    /// Group of files and directories [default: the mounting user's group]
    #[arg(long)]
    pub gid: Option<u32>,

    /// Permission bits of files, octal
    #[arg(long, value_parser = parse_octal, default_value = "644")]
    pub file_mode: u32,

    /// Permission bits of directories, octal
    #[arg(long, value_parser = parse_octal, default_value = "755")]
    pub dir_mode: u32,

    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,

    /// Let root access the mount too
    #[arg(long)]
    pub allow_root: bool,

    /// Unmount automatically when bucketfs exits (needs --allow-other or --allow-root)
    #[arg(long)]
    pub auto_unmount: bool,

    /// Stay in the foreground instead of daemonizing
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Seconds metadata (attributes, directory entries, negative lookups) is trusted before
    /// asking S3 again; 0 always asks
    #[arg(long, value_name = "SECONDS", default_value = "1")]
    pub metadata_ttl: f64,

    /// Memory budget in MiB for read-ahead, cached blocks, upload parts and staging transfers
    /// (split as the README's Bounds section says)
    #[arg(long, value_name = "MiB", default_value = "512")]
    pub max_memory: u64,

    /// Directory for staging objects that are read randomly (unnamed files, gone when the mount
    /// ends) [default: $TMPDIR, else /tmp]
    #[arg(long, visible_alias = "cache", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Most disk space in MiB that staged objects may take; objects larger than half of it
    /// are never staged; 0 disables staging
    #[arg(long, value_name = "MiB", default_value = "4096")]
    pub max_cache_size: u64,

    /// Size of each ranged GET of a sequential read, in bytes (suffixes K, M, G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8M")]
    pub read_part_size: u64,

    /// First part size of multipart uploads, in bytes (suffixes K, M, G); at least 5M. Grows
    /// after 1,000 parts so one file can reach S3's 5 TiB limit
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8M")]
    pub write_part_size: u64,

    /// Content-Type of every new object [default: guessed from the file extension]
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,

    /// Storage class of new objects (STANDARD, STANDARD_IA, GLACIER_IR, ...)
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,

    /// Server-side encryption of new objects: AES256 or aws:kms
    #[arg(long, value_name = "MODE", value_parser = ["AES256", "aws:kms"])]
    pub sse: Option<String>,

    /// KMS key id for --sse aws:kms
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// Canned ACL of new objects (private, bucket-owner-full-control, ...)
    #[arg(long, value_name = "ACL")]
    pub acl: Option<String>,

    /// HEAD each listed file once so `ls -l` and `stat` show the owner, mode and mtime stored
    /// in its metadata (as s3fs does); without it listings cost no HEAD and show defaults
    /// until a file is looked up by name
    #[arg(long)]
    pub stat_metadata: bool,

    /// Extended attributes: `user.*` as object metadata and the read-only `bucketfs.*` ones
    /// (ETag, storage class, presigned URL...); off unless asked for, as in s3fs, because
    /// `ls -l` then asks every file for its ACLs, a round trip each
    #[arg(long)]
    pub xattr: bool,

    /// How long the presigned GET URL in the `bucketfs.presigned_url` attribute is valid
    /// (90s, 30m, 24h, 7d; S3 allows at most 7 days)
    #[arg(long, value_name = "AGE", value_parser = parse_presign_expiry, default_value = "1h")]
    pub presign_expiry: std::time::Duration,

    /// Largest number of S3 requests (and so connections) in flight
    #[arg(long, value_name = "N", default_value = "64")]
    pub max_connections: usize,

    /// Attempts per S3 request, including retries with backoff for throttling and transient
    /// errors
    #[arg(long, value_name = "N", default_value = "4")]
    pub max_attempts: u32,

    /// Serve Prometheus metrics (S3 requests, bytes, latency, caches, memory, FUSE
    /// operations) at http://HOST:PORT/metrics; off unless given
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Debug logging (RUST_LOG overrides)
    #[arg(short = 'd', long)]
    pub debug: bool,

    /// Write logs to this file [default: stderr in the foreground; STATE_DIR/log/BUCKET.log
    /// when daemonized]
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Where bucketfs keeps its journal of multipart uploads in flight (so the next mount
    /// aborts what a crash left) and the log of a daemonized mount [default:
    /// $XDG_STATE_HOME/bucketfs, else ~/.local/state/bucketfs]
    #[arg(long, value_name = "DIR", env = "BUCKETFS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Instead of mounting: list the incomplete multipart uploads under BUCKET[:PREFIX]
    /// (left by crashed programs of any kind); nothing is changed without --abort-uploads
    #[arg(long)]
    pub list_uploads: bool,

    /// With --list-uploads: only uploads started at least this long ago (90s, 30m, 24h, 7d)
    #[arg(long, value_name = "AGE", value_parser = parse_age, default_value = "0s", requires = "list_uploads")]
    pub older_than: std::time::Duration,

    /// With --list-uploads: abort the uploads listed
    #[arg(long, requires = "list_uploads")]
    pub abort_uploads: bool,

    /// Mount options as in fstab, comma-separated: any long option above without its dashes,
    /// NAME or NAME=VALUE (allow_other, uid=1000, endpoint_url=URL), ro, and fstab's own
    /// (_netdev, nofail, noauto, x-systemd.*...), which are ignored. Expanded before parsing
    /// (see `mount_helper`), so this field stays empty
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Print a completion script for this shell and exit
    #[arg(long, value_name = "SHELL", hide = true,
          value_parser = clap::value_parser!(clap_complete::Shell))]
    pub completions: Option<clap_complete::Shell>,

    /// Print the man page (roff) and exit
    #[arg(long, hide = true)]
    pub man_page: bool,
}

impl Cli {
    /// The source (BUCKET... or `s3://` for every bucket) and the mountpoint: with a single
    /// argument and no --list-uploads, that argument is the mountpoint of every bucket.
    pub fn source_and_mountpoint(&self) -> (&str, Option<PathBuf>) {
        match &self.mountpoint {
            None if !self.list_uploads => ("s3://", Some(PathBuf::from(&self.bucket))),
            mountpoint => (self.bucket.as_str(), mountpoint.clone()),
        }
    }

    /// The state directory: --state-dir, else $XDG_STATE_HOME/bucketfs, else
    /// ~/.local/state/bucketfs, else (no home) /var/lib/bucketfs.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(state) = var("XDG_STATE_HOME") {
            return PathBuf::from(state).join("bucketfs");
        }
        match var("HOME") {
            Some(home) => PathBuf::from(home).join(".local/state/bucketfs"),
            None => PathBuf::from("/var/lib/bucketfs"),
        }
    }
}

/// A presigned URL's validity: 1 s to 7 days (SigV4's limit).
fn parse_presign_expiry(value: &str) -> Result<std::time::Duration, String> {
    let age = parse_age(value)?;
    if age.is_zero() || age > std::time::Duration::from_secs(7 * 86400) {
        return Err(format!("'{value}': a presigned URL is valid 1s to 7d"));
    }
    Ok(age)
}

/// An age like 90s, 30m, 24h or 7d (a bare number is seconds).
fn parse_age(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{value}' is not an age like 24h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{value}': unknown unit (use s, m, h or d)")),
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}

fn parse_octal(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("'{value}' is not an octal permission mode like 644"))
}

/// Bytes with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (digits, unit) = match value.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => value.split_at(i),
        None => (value, ""),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{value}' is not a size like 8M"))?;
    let multiplier = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("'{value}': unknown unit (use K, M or G)")),
    };
    number
        .checked_mul(multiplier)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{value}' is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("8X").is_err());
        assert_eq!(parse_octal("644"), Ok(0o644));
        assert_eq!(parse_age("24h"), Ok(std::time::Duration::from_secs(86400)));
        assert_eq!(parse_age("90"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse_age("3w").is_err());
        assert!(parse_octal("999").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from(["bucketfs", "b:p", "/mnt", "--read-only", "-f"]).unwrap();
        assert!(cli.read_only && cli.foreground);
        assert_eq!(cli.file_mode, 0o644);
        // One argument: the mountpoint of every bucket.
        let all = Cli::try_parse_from(["bucketfs", "/mnt/s3"]).unwrap();
        assert_eq!(
            all.source_and_mountpoint(),
            ("s3://", Some(PathBuf::from("/mnt/s3")))
        );
        let list =
            Cli::try_parse_from(["bucketfs", "--list-uploads", "b:p/", "--older-than", "1h"])
                .unwrap();
        assert!(list.list_uploads && list.mountpoint.is_none() && !list.abort_uploads);
        assert!(Cli::try_parse_from(["bucketfs", "b", "/mnt", "--abort-uploads"]).is_err());
    }
}

//! File attributes, built from listings and HEADs, honouring s3fs-style metadata headers
//! (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`) where an object carries them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::store::ObjectInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Owner and permission bits used when an object carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrDefaults {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
}

impl Default for AttrDefaults {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
        }
    }
}

/// What `stat` shows for one entry, without any FUSE type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits only (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub etag: Option<String>,
}

impl Attributes {
    pub fn directory(mtime: SystemTime, defaults: &AttrDefaults) -> Self {
        Self {
            kind: Kind::Dir,
            size: 0,
            mtime,
            perm: defaults.dir_mode & 0o7777,
            uid: defaults.uid,
            gid: defaults.gid,
            etag: None,
        }
    }

    /// Attributes of a file object; `info.user_metadata` overrides the defaults when present.
    pub fn file(info: &ObjectInfo, defaults: &AttrDefaults) -> Self {
        let meta = PosixMetadata::parse(&info.user_metadata);
        Self {
            kind: Kind::File,
            size: info.size,
            mtime: meta.mtime.unwrap_or(info.last_modified),
            perm: meta
                .mode
                .map(|m| m & 0o7777)
                .unwrap_or(defaults.file_mode & 0o7777),
            uid: meta.uid.unwrap_or(defaults.uid),
            gid: meta.gid.unwrap_or(defaults.gid),
            etag: info.etag.clone(),
        }
    }
}

/// The POSIX metadata other S3 filesystems store in user metadata.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PosixMetadata {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

impl PosixMetadata {
    /// Reads `mode`/`uid`/`gid`/`mtime` (keys as the SDK gives them: lowercase, no prefix).
    pub fn parse(meta: &HashMap<String, String>) -> Self {
        let get = |name: &str| {
            meta.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        Self {
            mode: get("mode").and_then(parse_mode),
            uid: get("uid").and_then(|v| v.parse().ok()),
            gid: get("gid").and_then(|v| v.parse().ok()),
            mtime: get("mtime").and_then(parse_mtime),
        }
    }
}

/// The user metadata s3fs writes for an entry (mode with type bits in decimal, uid, gid, mtime
/// as `sec` or `sec.nanoseconds`), so buckets written by bucketfs look right to s3fs and back.
pub fn posix_headers(attrs: &Attributes) -> HashMap<String, String> {
    let type_bits = match attrs.kind {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
    };
    let since_epoch = attrs
        .mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mtime = match since_epoch.subsec_nanos() {
        0 => since_epoch.as_secs().to_string(),
        nanos => format!("{}.{nanos:09}", since_epoch.as_secs()),
    };
    HashMap::from([
        (
            "mode".to_string(),
            (type_bits | (attrs.perm & 0o7777)).to_string(),
        ),
        ("uid".to_string(), attrs.uid.to_string()),
        ("gid".to_string(), attrs.gid.to_string()),
        ("mtime".to_string(), mtime),
    ])
}

/// s3fs writes the decimal st_mode including type bits (`33188` = 0100644); rclone writes the
/// octal permissions without a leading 0 (`644`). A decimal value that carries type bits
/// (>= 0o10000) is s3fs's form; anything smaller is read as octal.
fn parse_mode(value: &str) -> Option<u32> {
    let decimal: u32 = value.parse().ok()?;
    if decimal >= 0o10000 {
        Some(decimal)
    } else {
        u32::from_str_radix(value, 8).ok()
    }
}

/// `sec`, `sec.nanoseconds` (s3fs) or a float of seconds (rclone).
fn parse_mtime(value: &str) -> Option<SystemTime> {
    let (secs, frac) = match value.split_once('.') {
        Some((s, f)) => (s, f),
        None => (value, ""),
    };
    let secs: u64 = secs.parse().ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse::<u32>().ok()?
    };
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn s3fs_and_rclone_modes_are_understood() {
        assert_eq!(parse_mode("33188"), Some(0o100644));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("garbage"), None);
    }

    #[test]
    fn mtimes_in_every_form_parse() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(parse_mtime("10"), Some(epoch + Duration::from_secs(10)));
        assert_eq!(
            parse_mtime("10.5"),
            Some(epoch + Duration::new(10, 500_000_000))
        );
        assert_eq!(
            parse_mtime("10.000000123"),
            Some(epoch + Duration::new(10, 123))
        );
        assert_eq!(parse_mtime("x"), None);
    }

    #[test]
    fn written_headers_read_back() {
        let attrs = Attributes {
            kind: Kind::File,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            perm: 0o640,
            uid: 1001,
            gid: 1002,
            etag: None,
        };
        let headers = posix_headers(&attrs);
        assert_eq!(headers["mode"], "33184");
        assert_eq!(headers["mtime"], "1700000000.000000005");
        let parsed = PosixMetadata::parse(&headers);
        assert_eq!(parsed.mode, Some(0o100640));
        assert_eq!((parsed.uid, parsed.gid), (Some(1001), Some(1002)));
        assert_eq!(parsed.mtime, Some(attrs.mtime));
    }

    #[test]
    fn object_metadata_overrides_defaults() {
        let info = ObjectInfo {
            key: "f".into(),
            size: 3,
            etag: Some("\"e\"".into()),
            last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(99),
            user_metadata: meta(&[("mode", "33261"), ("uid", "1000"), ("mtime", "7")]),
            content_type: None,
        };
        let attrs = Attributes::file(&info, &AttrDefaults::default());
        assert_eq!(attrs.perm, 0o755);
        assert_eq!(attrs.uid, 1000);
        assert_eq!(attrs.gid, 0);
        assert_eq!(attrs.mtime, SystemTime::UNIX_EPOCH + Duration::from_secs(7));
        let plain = ObjectInfo {
            user_metadata: HashMap::new(),
            ..info
        };
        let attrs = Attributes::file(&plain, &AttrDefaults::default());
        assert_eq!(attrs.perm, 0o644);
        assert_eq!(
            attrs.mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(99)
        );
    }
}

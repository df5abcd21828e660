//! File attributes, built from listings and HEADs, honouring s3fs-style metadata headers
//! (`x-amz-meta-mode`, `-uid`, `-gid`, `-mtime`, `-atime`, `-ctime`, `-rdev`) where an object
//! carries them. The mode's type bits say what the object is: a regular file, a directory
//! marker, a symlink (the body is the target) or a FIFO, socket or device node (empty body).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::store::ObjectInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind a mode's type bits (`S_IFMT`) name; regular file when they name nothing known.
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::File,
        }
    }

    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
        }
    }

    pub fn is_dir(self) -> bool {
        self == Kind::Dir
    }

    /// FIFOs, sockets and device nodes: empty objects whose meaning is all in their mode.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }
}

/// Owner and permission bits used when an object carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrDefaults {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    /// `--uid`/`--gid` given: the owner every file and directory shows, whatever its stored
    /// metadata says (applied where attributes reach the kernel).
    pub forced_owner: Owner,
}

/// An owner shown instead of the stored one (`--uid`, `--gid`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for AttrDefaults {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            forced_owner: Owner::default(),
        }
    }
}

/// What `stat` shows for one entry, without any FUSE type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    /// Moves on every change of content or attributes (kept in `x-amz-meta-ctime`, as s3fs).
    pub ctime: SystemTime,
    /// Permission bits only (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
    pub etag: Option<String>,
    /// Unlinked while open (st_nlink 0).
    pub unlinked: bool,
}

impl Attributes {
    /// A new entry made in this mount now.
    pub fn new(kind: Kind, perm: u32, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self {
            kind,
            size: 0,
            mtime: now,
            atime: now,
            ctime: now,
            perm: perm & 0o7777,
            uid,
            gid,
            rdev: 0,
            etag: None,
            unlinked: false,
        }
    }

    pub fn directory(mtime: SystemTime, defaults: &AttrDefaults) -> Self {
        Self {
            kind: Kind::Dir,
            size: 0,
            mtime,
            atime: mtime,
            ctime: mtime,
            perm: defaults.dir_mode & 0o7777,
            uid: defaults.uid,
            gid: defaults.gid,
            rdev: 0,
            etag: None,
            unlinked: false,
        }
    }

    /// Attributes of an object (a file, or anything else its mode says); `info.user_metadata`
    /// overrides the defaults when present.
    pub fn file(info: &ObjectInfo, defaults: &AttrDefaults) -> Self {
        let meta = PosixMetadata::parse(&info.user_metadata);
        let kind = match meta.mode.map(Kind::from_mode) {
            // A key without a trailing slash is never shown as a directory.
            Some(Kind::Dir) | None => Kind::File,
            Some(kind) => kind,
        };
        let mtime = meta.mtime.unwrap_or(info.last_modified);
        let default_perm = if kind == Kind::Symlink {
            0o777
        } else {
            defaults.file_mode & 0o7777
        };
        Self {
            kind,
            size: info.size,
            mtime,
            atime: meta.atime.unwrap_or(mtime),
            ctime: meta.ctime.unwrap_or(mtime),
            perm: meta.mode.map(|m| m & 0o7777).unwrap_or(default_perm),
            uid: meta.uid.unwrap_or(defaults.uid),
            gid: meta.gid.unwrap_or(defaults.gid),
            rdev: meta.rdev.unwrap_or(0),
            etag: info.etag.clone(),
            unlinked: false,
        }
    }

    /// A directory whose marker object carries metadata (mode, owner, times), as mkdir and
    /// chmod of this mount and s3fs write it.
    /// These attributes with what the POSIX headers `metadata` carries (what a self-copy
    /// stored): the stored values win over the cached ones.
    pub fn with_posix_metadata(mut self, metadata: &HashMap<String, String>) -> Self {
        let meta = PosixMetadata::parse(metadata);
        if let Some(mode) = meta.mode {
            self.perm = mode & 0o7777;
        }
        self.uid = meta.uid.unwrap_or(self.uid);
        self.gid = meta.gid.unwrap_or(self.gid);
        self.mtime = meta.mtime.unwrap_or(self.mtime);
        self.atime = meta.atime.unwrap_or(self.atime);
        self.ctime = meta.ctime.unwrap_or(self.ctime);
        self
    }

    pub fn directory_from_marker(info: &ObjectInfo, defaults: &AttrDefaults) -> Self {
        let meta = PosixMetadata::parse(&info.user_metadata);
        let mtime = meta.mtime.unwrap_or(info.last_modified);
        Self {
            kind: Kind::Dir,
            size: 0,
            mtime,
            atime: meta.atime.unwrap_or(mtime),
            ctime: meta.ctime.unwrap_or(mtime),
            perm: meta
                .mode
                .map(|m| m & 0o7777)
                .unwrap_or(defaults.dir_mode & 0o7777),
            uid: meta.uid.unwrap_or(defaults.uid),
            gid: meta.gid.unwrap_or(defaults.gid),
            rdev: 0,
            etag: None,
            unlinked: false,
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
    pub atime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    pub rdev: Option<u32>,
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
            atime: get("atime").and_then(parse_mtime),
            ctime: get("ctime").and_then(parse_mtime),
            rdev: get("rdev").and_then(|v| v.parse().ok()),
        }
    }
}

/// The user metadata s3fs writes for an entry (mode with type bits in decimal, uid, gid, and
/// times as `sec` or `sec.nanoseconds`), so buckets written by bucketfs look right to s3fs and
/// back. Device nodes add `rdev`.
pub fn posix_headers(attrs: &Attributes) -> HashMap<String, String> {
    let mut headers = HashMap::from([
        (
            "mode".to_string(),
            (attrs.kind.type_bits() | (attrs.perm & 0o7777)).to_string(),
        ),
        ("uid".to_string(), attrs.uid.to_string()),
        ("gid".to_string(), attrs.gid.to_string()),
        ("mtime".to_string(), format_time(attrs.mtime)),
        ("atime".to_string(), format_time(attrs.atime)),
        ("ctime".to_string(), format_time(attrs.ctime)),
    ]);
    if matches!(attrs.kind, Kind::CharDevice | Kind::BlockDevice) {
        headers.insert("rdev".to_string(), attrs.rdev.to_string());
    }
    headers
}

/// The names `posix_headers` writes: other user metadata (xattrs) is kept beside them.
pub const POSIX_HEADER_NAMES: [&str; 7] = ["mode", "uid", "gid", "mtime", "atime", "ctime", "rdev"];

/// `sec` or `sec.nanoseconds` (nine digits); times before 1970 as a negative second count with
/// positive nanoseconds (`-2.250000000` is 1.75 s before the epoch).
fn format_time(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let mut secs = -(before.as_secs() as i64);
            let mut nanos = before.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    match nanos {
        0 => secs.to_string(),
        nanos => format!("{secs}.{nanos:09}"),
    }
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

/// `sec`, `sec.nanoseconds` (s3fs) or a float of seconds (rclone); a negative second count is
/// before 1970 (see `format_time`).
fn parse_mtime(value: &str) -> Option<SystemTime> {
    let (secs, frac) = match value.split_once('.') {
        Some((s, f)) => (s, f),
        None => (value, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<9}").parse::<u32>().ok()?
    };
    if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos as u64))
    }
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
            mtime: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            ..Attributes::new(Kind::File, 0o640, 1001, 1002)
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
    fn times_past_2038_and_before_1970_round_trip() {
        let epoch = SystemTime::UNIX_EPOCH;
        for time in [
            epoch + Duration::new(4_102_444_800, 123_456_789), // 2100
            epoch - Duration::new(1, 750_000_000),
            epoch - Duration::from_secs(86_400),
            epoch,
        ] {
            assert_eq!(parse_mtime(&format_time(time)), Some(time), "{time:?}");
        }
        assert_eq!(
            format_time(epoch - Duration::new(1, 750_000_000)),
            "-2.250000000"
        );
    }

    #[test]
    fn the_mode_says_what_an_object_is() {
        let object = |mode: &str| ObjectInfo {
            key: "x".into(),
            size: 4,
            etag: None,
            last_modified: SystemTime::UNIX_EPOCH,
            user_metadata: meta(&[("mode", mode), ("rdev", "2049")]),
            content_type: None,
            storage_class: None,
            version_id: None,
            restore: None,
        };
        let defaults = AttrDefaults::default();
        let link = Attributes::file(&object("41471"), &defaults); // 0120777
        assert_eq!((link.kind, link.perm), (Kind::Symlink, 0o777));
        assert_eq!(
            Attributes::file(&object("4516"), &defaults).kind,
            Kind::Fifo
        ); // 010644
        let device = Attributes::file(&object("8630"), &defaults); // 020666
        assert_eq!((device.kind, device.rdev), (Kind::CharDevice, 2049));
        assert_eq!(
            Attributes::file(&object("16877"), &defaults).kind,
            Kind::File,
            "a key without a slash is never a directory"
        );
        let headers = posix_headers(&device);
        assert_eq!(headers["mode"], "8630");
        assert_eq!(headers["rdev"], "2049");
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
            storage_class: None,
            version_id: None,
            restore: None,
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

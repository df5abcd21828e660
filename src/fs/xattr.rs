//! Extended attributes. `user.NAME` is the object's user metadata `x-amz-meta-NAME` (as goofys
//! and geesefs store them), changed by a server-side self-copy; S3's 2 KiB limit on user
//! metadata is enforced with E2BIG. `bucketfs.*` names are read-only and describe the object
//! (its ETag, storage class, content type, version id, `s3://` URI, and a presigned GET URL);
//! they are read by name only and never listed, so `cp --preserve=xattr` and `rsync -X` copy
//! the user attributes and nothing else.
//!
//! Header values must be printable ASCII: other values (binary, UTF-8, leading or trailing
//! blanks) are stored in RFC 2047's base64 form `=?UTF-8?B?...?=`, which is also how S3 itself
//! returns non-ASCII metadata, and decoded on the way back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use base64::Engine;
use tracing::debug;

use super::attrs::{Kind, POSIX_HEADER_NAMES};
use super::error::{FsError, FsResult};
use super::{Entry, Fs};
use crate::store::{ObjectStore, StoreError};

/// S3's limit on user metadata: keys and values, in bytes, together.
pub const MAX_USER_METADATA_BYTES: usize = 2048;

const USER_PREFIX: &str = "user.";
const VIRTUAL_PREFIX: &str = "bucketfs.";
const ENCODED_START: &str = "=?UTF-8?B?";
const ENCODED_END: &str = "?=";

/// `setxattr` flags (linux/xattr.h).
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// The metadata key a `user.` attribute is stored under; EINVAL for a name S3 cannot keep as
/// it is (S3 lowercases metadata names, and allows only header token characters) or one the
/// POSIX attributes use.
fn metadata_key(name: &str) -> FsResult<&str> {
    let key = name
        .strip_prefix(USER_PREFIX)
        .ok_or(FsError::NotSupported)?;
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !valid || POSIX_HEADER_NAMES.contains(&key) {
        debug!(name, "xattr name S3 metadata cannot hold as it is");
        return Err(FsError::Invalid);
    }
    Ok(key)
}

/// A value as an HTTP header can carry it.
pub fn encode_value(value: &[u8]) -> String {
    let plain = value.iter().all(|b| (0x20..0x7f).contains(b))
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
        && !value.starts_with(ENCODED_START.as_bytes());
    if plain {
        String::from_utf8(value.to_vec()).expect("ASCII")
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        format!("{ENCODED_START}{encoded}{ENCODED_END}")
    }
}

pub fn decode_value(value: &str) -> Vec<u8> {
    value
        .strip_prefix(ENCODED_START)
        .and_then(|v| v.strip_suffix(ENCODED_END))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .unwrap_or_else(|| value.as_bytes().to_vec())
}

/// Bytes S3 counts against its user metadata limit.
fn metadata_bytes(metadata: &HashMap<String, String>) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The user attributes among an object's metadata (everything but the POSIX headers).
pub fn user_attributes(metadata: &HashMap<String, String>) -> HashMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| !POSIX_HEADER_NAMES.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

impl<S: ObjectStore> Fs<S> {
    /// The user metadata the file has now: its writer's when it is open for writing (what the
    /// next commit stores), else the object's (HEAD; a directory's marker).
    async fn current_metadata(&self, ino: u64) -> FsResult<HashMap<String, String>> {
        if let Some(writer) = self.writer_of(ino) {
            return Ok(writer.lock().await.opts().user_metadata.clone());
        }
        let key = self.object_key(ino)?;
        match self.store.head(&key).await {
            Ok(info) => Ok(info.user_metadata),
            // An implicit directory (no marker) has no metadata yet.
            Err(StoreError::NotFound) if key.ends_with('/') || key.is_empty() => Ok(HashMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The key holding an inode's metadata: a file's object, a directory's marker.
    fn object_key(&self, ino: u64) -> FsResult<String> {
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok(inode.key.clone())
    }

    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| FsError::NoData)?;
        if let Some(field) = name.strip_prefix(VIRTUAL_PREFIX) {
            return self.virtual_attribute(ino, field).await;
        }
        if !name.starts_with(USER_PREFIX) || !self.config.user_xattrs {
            // security.*, system.* (ACLs), trusted.*: none is kept, and asking costs nothing.
            return Err(FsError::NoData);
        }
        let key = metadata_key(name).map_err(|_| FsError::NoData)?;
        let metadata = self.current_metadata(ino).await?;
        metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| decode_value(v))
            .ok_or(FsError::NoData)
    }

    /// The names of the user attributes (never the read-only `bucketfs.*` ones).
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        if !self.config.user_xattrs {
            return Err(FsError::NotSupported);
        }
        let metadata = self.current_metadata(ino).await?;
        let mut names: Vec<String> = user_attributes(&metadata)
            .into_keys()
            .map(|k| format!("{USER_PREFIX}{k}"))
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| FsError::Invalid)?;
        if name == RESTORE_ATTRIBUTE {
            return self.request_restore(ino, value).await;
        }
        if name.starts_with(VIRTUAL_PREFIX) {
            return Err(FsError::PermissionDenied);
        }
        if !self.config.user_xattrs {
            return Err(FsError::NotSupported);
        }
        let key = metadata_key(name)?.to_string();
        let value = encode_value(value);
        self.change_user_metadata(ino, move |metadata| {
            let exists = metadata.keys().any(|k| k.eq_ignore_ascii_case(&key));
            if flags & XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoData);
            }
            metadata.retain(|k, _| !k.eq_ignore_ascii_case(&key));
            metadata.insert(key, value);
            Ok(())
        })
        .await
    }

    pub async fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<Entry> {
        self.check_writable()?;
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| FsError::NoData)?;
        if name.starts_with(VIRTUAL_PREFIX) {
            return Err(FsError::PermissionDenied);
        }
        let key = metadata_key(name).map_err(|_| FsError::NoData)?.to_string();
        self.change_user_metadata(ino, move |metadata| {
            let before = metadata.len();
            metadata.retain(|k, _| !k.eq_ignore_ascii_case(&key));
            if metadata.len() == before {
                return Err(FsError::NoData);
            }
            Ok(())
        })
        .await
    }

    /// Applies `change` to the file's user metadata and stores it: in the writer's options for
    /// a file open for writing (stored by its commit; at once too when it is in S3 and clean),
    /// else by a server-side self-copy. ctime moves.
    async fn change_user_metadata(
        &self,
        ino: u64,
        change: impl FnOnce(&mut HashMap<String, String>) -> FsResult<()>,
    ) -> FsResult<Entry> {
        // The metadata is read, changed and written back under the key's claim, so no other
        // change of it (a chmod, another setxattr) lands in between and is lost.
        let (_owned, binding) = self.own_inode(ino).await?;
        let (_, name, key, mut attrs) = self.current_parts(ino).await?;
        let mut metadata = self.current_metadata(ino).await?;
        change(&mut metadata)?;
        attrs.ctime = std::time::SystemTime::now();
        // The POSIX headers as they will be written, for the size check and the store: those
        // S3 holds stay (read under the claim, they are newer than cached attributes), only
        // ctime moves; an object without them gets the attributes shown.
        for (header, value) in self.put_options(&name, &attrs).user_metadata {
            if header == "ctime" || !metadata.contains_key(&header) {
                metadata.insert(header, value);
            }
        }
        let mut attrs = attrs.with_posix_metadata(&metadata);
        if metadata_bytes(&metadata) > MAX_USER_METADATA_BYTES {
            return Err(FsError::TooBig);
        }
        // Not in S3 (yet), or unlinked (its key may belong to a new file now): the change
        // stays in this mount.
        let local_only = binding == super::claims::Binding::Ended
            || self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .is_some_and(|i| i.is_pending());
        match self.writer_of(ino) {
            Some(writer) => {
                let mut writer = writer.lock().await;
                let previous =
                    std::mem::replace(&mut writer.opts_mut().user_metadata, metadata.clone());
                // Unsent content carries them at its commit; else a self-copy now, under the
                // writer's lock, and later changes in place start from the copy.
                if !writer.is_dirty() && !writer.is_discarded() && !local_only {
                    let pinned = writer
                        .base()
                        .filter(|b| b.key == key)
                        .and_then(|b| b.etag.clone());
                    let stored = self
                        .store_metadata(&key, attrs.kind, metadata, pinned.as_deref())
                        .await;
                    let etag = match stored {
                        Ok(etag) => etag,
                        Err(e) => {
                            // A change that failed changes nothing, not even later.
                            writer.opts_mut().user_metadata = previous;
                            return Err(e);
                        }
                    };
                    writer.rebase(key.clone(), etag.clone());
                    if attrs.kind != Kind::Dir {
                        attrs.etag = etag;
                    }
                }
            }
            None if !local_only => {
                let etag = self
                    .store_metadata(&key, attrs.kind, metadata, None)
                    .await?;
                if attrs.kind != Kind::Dir {
                    attrs.etag = etag;
                }
            }
            None => {}
        }
        self.inodes
            .lock()
            .unwrap()
            .set_attrs(ino, attrs.clone(), self.expiry());
        Ok(Entry { ino, attrs })
    }

    /// Replaces the user metadata of `key` by a self-copy (content type kept); a directory
    /// without a marker gets one.
    async fn store_metadata(
        &self,
        key: &str,
        kind: Kind,
        metadata: HashMap<String, String>,
        if_match: Option<&str>,
    ) -> FsResult<Option<String>> {
        let mut opts = self.config.upload.clone();
        opts.user_metadata = metadata;
        match self.store.head(key).await {
            Ok(info) => {
                opts.content_type = info.content_type;
                // Pinned to the version read (see `persist_metadata`).
                let pinned = if_match.or(info.etag.as_deref());
                self.copy_object_pinned(key, key, info.size, &opts, true, pinned)
                    .await
            }
            Err(StoreError::NotFound) if kind == Kind::Dir => {
                opts.content_type = Some("application/x-directory".to_string());
                Ok(self.store.put(key, bytes::Bytes::new(), &opts).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `setfattr -n bucketfs.restore -v "DAYS [TIER]"`: asks S3 to restore an archived object
    /// for DAYS days (TIER: standard, bulk or expedited). Asking again while a restore runs
    /// is fine; an object that is not archived is EINVAL.
    async fn request_restore(&self, ino: u64, value: &[u8]) -> FsResult<Entry> {
        let (days, tier) = parse_restore_request(value)?;
        let key = self.object_key(ino)?;
        let info = self.store.head(&key).await?;
        if !is_archive_class(info.storage_class.as_deref()) {
            tracing::info!(
                key,
                class = info.storage_class.as_deref().unwrap_or("STANDARD"),
                "restore refused: the object is not archived"
            );
            return Err(FsError::Invalid);
        }
        match self.store.restore(&key, days, tier).await {
            Ok(()) => {}
            // S3 answers 409 RestoreAlreadyInProgress to a second request: what was asked for
            // is happening.
            Err(StoreError::InvalidRequest(m)) if m.contains("RestoreAlreadyInProgress") => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            key,
            days,
            tier = tier.unwrap_or("default"),
            "restore requested"
        );
        self.getattr(ino).await
    }

    /// `bucketfs.FIELD`: what S3 says about the object.
    async fn virtual_attribute(&self, ino: u64, field: &str) -> FsResult<Vec<u8>> {
        let key = self.object_key(ino)?;
        let info = || async {
            match self.store.head(&key).await {
                Ok(info) => Ok(info),
                Err(StoreError::NotFound) => Err(FsError::NoData),
                Err(e) => Err(FsError::from(e)),
            }
        };
        let text = match field {
            // A mount of every bucket has the bucket as the key's first component.
            "uri" if self.config.bucket_name.is_empty() => format!("s3://{key}"),
            "uri" => format!("s3://{}/{key}", self.config.bucket_name),
            "etag" => info().await?.etag.ok_or(FsError::NoData)?,
            "storage_class" => info()
                .await?
                .storage_class
                .unwrap_or_else(|| "STANDARD".to_string()),
            "content_type" => info().await?.content_type.ok_or(FsError::NoData)?,
            "version_id" => info().await?.version_id.ok_or(FsError::NoData)?,
            "restore" => restore_status(&info().await?),
            "presigned_url" => {
                info().await?;
                self.store
                    .presign_get(&key, self.config.presign_expiry)
                    .await?
            }
            _ => return Err(FsError::NoData),
        };
        Ok(text.into_bytes())
    }
}

/// The name that requests a restore (set) and tells its progress (get).
const RESTORE_ATTRIBUTE: &str = "bucketfs.restore";

/// Storage classes whose bytes are offline until restored.
fn is_archive_class(class: Option<&str>) -> bool {
    matches!(class, Some("GLACIER" | "DEEP_ARCHIVE"))
}

/// "DAYS" or "DAYS TIER" (a comma also separates); days 1 to 36,500.
fn parse_restore_request(value: &[u8]) -> FsResult<(u32, Option<&'static str>)> {
    let text = std::str::from_utf8(value).map_err(|_| FsError::Invalid)?;
    let mut words = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty());
    let days: u32 = words
        .next()
        .and_then(|d| d.parse().ok())
        .filter(|d| (1..=36_500).contains(d))
        .ok_or(FsError::Invalid)?;
    let tier = match words.next().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("standard") => Some("Standard"),
        Some("bulk") => Some("Bulk"),
        Some("expedited") => Some("Expedited"),
        Some(_) => return Err(FsError::Invalid),
    };
    if words.next().is_some() {
        return Err(FsError::Invalid);
    }
    Ok((days, tier))
}

/// `bucketfs.restore` read back: `not archived`, `archived` (no restore asked),
/// `in progress`, or `restored until DATE`.
fn restore_status(info: &crate::store::ObjectInfo) -> String {
    match info.restore.as_deref() {
        Some(r) if r.contains("ongoing-request=\"true\"") => "in progress".to_string(),
        Some(r) => {
            let expiry = r
                .split("expiry-date=")
                .nth(1)
                .map(|d| d.trim().trim_matches('"'));
            match expiry {
                Some(date) => format!("restored until {date}"),
                None => "restored".to_string(),
            }
        }
        None if is_archive_class(info.storage_class.as_deref()) => "archived".to_string(),
        None => "not archived".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_headers() {
        for value in [
            &b"plain text"[..],
            b"",
            b" leading blank",
            b"\x00\xffbinary",
            "ünïcode".as_bytes(),
            b"=?UTF-8?B?looks encoded?=",
        ] {
            let encoded = encode_value(value);
            assert!(
                encoded.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{encoded}"
            );
            assert_eq!(decode_value(&encoded), value);
        }
        assert_eq!(encode_value(b"plain text"), "plain text");
    }

    #[test]
    fn names_s3_cannot_keep_are_refused() {
        assert_eq!(
            metadata_key("user.checksum.sha256").unwrap(),
            "checksum.sha256"
        );
        assert_eq!(
            metadata_key("user.Upper").unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(metadata_key("user.mode").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(metadata_key("user.").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            metadata_key("trusted.x").unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
    }
}

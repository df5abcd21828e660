//! Object store layer: everything bucketfs needs from S3, and nothing about files.
//!
//! The filesystem (`crate::fs`) is generic over [`ObjectStore`], so its semantics are tested
//! against [`memory::MemoryStore`] and run unchanged on [`s3::S3Store`].

pub mod buckets;
pub mod buffers;
pub mod faulty;
pub mod memory;
pub mod observe;
pub mod s3;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// What went wrong, by kind: the filesystem maps each kind to an errno on purpose.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("no such bucket: {0}")]
    NoSuchBucket(String),
    /// CreateBucket of a name that is taken (by us or by anyone: names are global on AWS).
    #[error("bucket exists: {0}")]
    BucketExists(String),
    /// A bucket name S3 does not accept (mkdir at the top of a mount of every bucket).
    #[error("invalid bucket name: {0}")]
    InvalidBucketName(String),
    /// DeleteBucket of a bucket that still holds objects.
    #[error("bucket not empty: {0}")]
    BucketNotEmpty(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// An `If-Match` condition failed: the object changed under us.
    #[error("object changed (precondition failed)")]
    PreconditionFailed,
    #[error("throttled by the server: {0}")]
    Throttled(String),
    /// Network trouble or a 5xx that survived the retries.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The server refused the request as malformed (for example a key it cannot store).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The object's storage class keeps its bytes offline (GLACIER, DEEP_ARCHIVE, some
    /// tiers of INTELLIGENT_TIERING): S3 answers InvalidObjectState until it is restored.
    #[error("archived: {0}")]
    Archived(String),
    #[error("{0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One object as the store describes it. `user_metadata` is only filled by `head`
/// (listings do not carry it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: SystemTime,
    pub user_metadata: HashMap<String, String>,
    pub content_type: Option<String>,
    /// Only from `head`; `None` from listings (and for STANDARD on servers that omit it).
    pub storage_class: Option<String>,
    /// Only from `head`, on versioned buckets.
    pub version_id: Option<String>,
    /// Only from `head`: the `x-amz-restore` header of an archived object whose restore was
    /// asked for (`ongoing-request="true"`, or `"false"` with the copy's expiry date).
    pub restore: Option<String>,
}

/// One page of a delimited listing, in the store's key order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes, each ending with the delimiter.
    pub prefixes: Vec<String>,
    /// Continuation token for the next page; `None` when the listing is complete.
    pub next_token: Option<String>,
}

/// What a new object carries besides its bytes: content type, user metadata (the POSIX
/// attributes in s3fs form) and the mount-wide upload options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub user_metadata: HashMap<String, String>,
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// A canned ACL such as `private` or `bucket-owner-full-control`.
    pub acl: Option<String>,
}

/// A multipart upload neither completed nor aborted (ListMultipartUploads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// What a conditional write or delete expects the key to hold, so that it never replaces or
/// deletes a version it did not see (another client's write since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing (`If-None-Match: *`).
    Absent,
    /// This version, by its ETag (`If-Match`).
    Version(String),
}

/// Checks `expect` against what `key` holds now (a HEAD): the fallback of stores that cannot
/// send the condition with the request itself, leaving a window of one round trip.
pub async fn check_expected<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    expect: &Expect,
) -> StoreResult<()> {
    match (store.head(key).await, expect) {
        (Err(StoreError::NotFound), Expect::Absent) => Ok(()),
        (Ok(_), Expect::Absent) | (Err(StoreError::NotFound), Expect::Version(_)) => {
            Err(StoreError::PreconditionFailed)
        }
        (Ok(info), Expect::Version(etag)) if info.etag.as_ref() == Some(etag) => Ok(()),
        (Ok(_), Expect::Version(_)) => Err(StoreError::PreconditionFailed),
        (Err(e), _) => Err(e),
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: i32,
    pub etag: Option<String>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Reusable buffers for large bodies (see [`buffers`]), when the store keeps them: writers
    /// fill their parts in them, so upload buffers are recycled too.
    fn buffers(&self) -> Option<&Arc<buffers::BufferPool>> {
        None
    }

    /// Checks that the bucket exists and is reachable with our credentials.
    async fn check_bucket(&self) -> StoreResult<()>;

    /// HEAD of one key.
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo>;

    /// One page of ListObjectsV2 with `/` as delimiter when `delimited` is set.
    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage>;

    /// Bytes `range` of `key` (clamped to the object's end). With `if_match`, fails with
    /// `PreconditionFailed` when the object's ETag is no longer that one.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes>;

    /// Whole-object PUT. Returns the new ETag.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>>;

    /// DeleteObject (succeeds when the key is already gone, as S3 does).
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Starts a multipart upload; returns its id.
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String>;

    /// Uploads part `number` (1-based) of an upload.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart>;

    /// Uploads part `number` from the first `len` bytes of `file` (a part staged on local
    /// disk). Stores that can send a body from a file override this so the part is never held
    /// in memory whole; this default reads it first.
    async fn upload_part_from_file(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        use std::os::unix::fs::FileExt;
        let mut body = vec![0; len as usize];
        file.read_exact_at(&mut body, 0)
            .map_err(|e| StoreError::Other(format!("reading a part staged on disk: {e}")))?;
        self.upload_part(key, upload_id, number, Bytes::from(body))
            .await
    }

    /// Copies bytes `range` of `source` into part `number` of an upload (UploadPartCopy). With
    /// `if_match` (`x-amz-copy-source-if-match`), fails with `PreconditionFailed` when the
    /// source's ETag is no longer that one.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart>;

    /// Completes an upload from its parts, in order. Returns the new ETag.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>>;

    /// Aborts an upload, dropping its parts.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;

    /// Every upload under `prefix` that is neither completed nor aborted (all pages).
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>>;

    /// `copy`, only if `source` is still the version with ETag `if_match`
    /// (`x-amz-copy-source-if-match`); `PreconditionFailed` otherwise. The default checks with a
    /// HEAD first (a wrapper that does not forward this); real stores send the condition.
    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        if self.head(source).await?.etag.as_deref() != Some(if_match) {
            return Err(StoreError::PreconditionFailed);
        }
        self.copy(source, dest, opts, replace_metadata).await
    }

    /// `put` only if `key` holds what `expect` says; `PreconditionFailed` otherwise. The
    /// default checks with a HEAD first; stores that can send the condition override it.
    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        check_expected(self, key, expect).await?;
        self.put(key, body, opts).await
    }

    /// `complete_multipart` only if `key` holds what `expect` says (as `put_expecting`); the
    /// upload stays open when the condition fails (the caller aborts it).
    async fn complete_multipart_expecting(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        check_expected(self, key, expect).await?;
        self.complete_multipart(key, upload_id, parts).await
    }

    /// `delete` only if `key` still holds version `etag`: Ok, deleting nothing, when it is
    /// gone or holds another version (not ours to delete).
    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        match check_expected(self, key, &Expect::Version(etag.to_string())).await {
            Ok(()) => self.delete(key).await,
            Err(StoreError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Asks S3 to restore an archived object for `days` days (RestoreObject), at `tier`
    /// (Standard, Bulk, Expedited; the store's default when None). Its progress shows in
    /// `ObjectInfo::restore`.
    async fn restore(&self, key: &str, days: u32, tier: Option<&str>) -> StoreResult<()> {
        let _ = (key, days, tier);
        Err(StoreError::InvalidRequest(
            "this store cannot restore archived objects".to_string(),
        ))
    }

    /// A presigned GET URL of `key`, valid for `expires`: anyone holding it can download the
    /// object without credentials. It carries a signature: never log it.
    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String>;

    /// Server-side copy of an object up to 5 GiB (CopyObject), with the mount's storage class,
    /// encryption and ACL from `opts`. With `replace_metadata` the copy gets `opts`' content
    /// type and user metadata; otherwise it keeps the source's. Returns the copy's ETag.
    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>>;
}

//! Object store layer: everything bucketfs needs from S3, and nothing about files.
//!
//! The filesystem (`crate::fs`) is generic over [`ObjectStore`], so its semantics are tested
//! against [`memory::MemoryStore`] and run unchanged on [`s3::S3Store`].

pub mod faulty;
pub mod memory;
pub mod s3;

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// What went wrong, by kind: the filesystem maps each kind to an errno on purpose.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no such key")]
    NotFound,
    #[error("no such bucket")]
    NoSuchBucket,
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

/// Options for a PUT of a whole object.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub user_metadata: HashMap<String, String>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
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
}

//! A test store that holds chosen requests at a gate, to run other requests in the middle
//! of one (the review tests' races).

use super::*;
use crate::store::{ListPage, ObjectInfo, PendingUpload, PutOptions, StoreError, StoreResult};
use crate::store::{ObjectStore, UploadedPart};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;

/// How long a held request waits for `go` at most.
const HOLD_AT_MOST: Duration = Duration::from_millis(300);

/// A memory store whose next HEAD or DELETE of a chosen key waits for `go`: before it reaches
/// the store ("head"/"delete"), or after the store answered ("head-after"). A held DELETE
/// fails (503) when `fail_held`. A copy of a chosen source can be held after it is done
/// ("copy-after").
#[derive(Default)]
pub(super) struct Gate {
    pub(super) inner: MemoryStore,
    pub(super) armed: std::sync::Mutex<Option<(&'static str, String)>>,
    pub(super) entered: tokio::sync::Notify,
    pub(super) go: tokio::sync::Notify,
    pub(super) fail_held: std::sync::atomic::AtomicBool,
    /// While set, every PUT fails (503).
    pub(super) fail_put: std::sync::atomic::AtomicBool,
}

impl Gate {
    pub(super) fn arm(&self, op: &'static str, key: &str) {
        *self.armed.lock().unwrap() = Some((op, key.to_string()));
    }
    async fn hold(&self, op: &'static str, key: &str) -> bool {
        let hit = {
            let mut armed = self.armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|(o, k)| *o == op && k == key);
            if hit {
                *armed = None;
            }
            hit
        };
        if hit {
            self.entered.notify_one();
            // Not forever: the operation a test runs meanwhile may now wait for the held one
            // (both claim the same key), and then the held one must go on first.
            let _ = tokio::time::timeout(HOLD_AT_MOST, self.go.notified()).await;
        }
        hit
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn check_bucket(&self) -> StoreResult<()> {
        self.inner.check_bucket().await
    }
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.hold("head", key).await;
        let answer = self.inner.head(key).await;
        self.hold("head-after", key).await;
        answer
    }
    async fn list_page(
        &self,
        p: &str,
        d: bool,
        t: Option<String>,
        m: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.inner.list_page(p, d, t, m).await
    }
    async fn get_range(&self, key: &str, r: Range<u64>, m: Option<&str>) -> StoreResult<Bytes> {
        self.inner.get_range(key, r, m).await
    }
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        if self.fail_put.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Transient("503".into()));
        }
        self.inner.put(key, body, opts).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        if self.hold("delete", key).await
            && self.fail_held.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Transient("503".into()));
        }
        self.inner.delete(key).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        self.inner.upload_part(key, id, n, body).await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        n: i32,
        s: &str,
        r: Range<u64>,
        m: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        self.inner.upload_part_copy(key, id, n, s, r, m).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, id).await
    }
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.inner.list_uploads(prefix).await
    }
    async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        self.inner.presign_get(key, expires).await
    }
    async fn copy(&self, s: &str, d: &str, o: &PutOptions, r: bool) -> StoreResult<Option<String>> {
        let answer = self.inner.copy(s, d, o, r).await;
        self.hold("copy-after", s).await;
        answer
    }
}

//! A store that holds every request until the explorer lets it through, one at a time, in an
//! order drawn from the seed; a request let through may be failed instead (a 503 before it
//! reaches the store, so a failed request changed nothing).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bucketfs::store::memory::MemoryStore;
use bucketfs::store::{
    Expect, ListPage, ObjectInfo, ObjectStore, PendingUpload, PutOptions, StoreError, StoreResult,
    UploadedPart,
};
use bytes::Bytes;
use tokio::sync::oneshot;

struct Held {
    what: String,
    go: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Gate {
    holding: bool,
    held: Vec<Held>,
    /// Counts every request made and every answer: the explorer waits until it stops moving.
    progress: u64,
}

#[derive(Default)]
pub struct ScheduledStore {
    pub inner: MemoryStore,
    gate: Mutex<Gate>,
}

impl ScheduledStore {
    /// From now on every request waits for `release` (`false`: they go through at once).
    pub fn hold(&self, holding: bool) {
        self.gate.lock().unwrap().holding = holding;
    }

    pub fn progress(&self) -> u64 {
        self.gate.lock().unwrap().progress
    }

    /// What the held requests are, in the order they arrived.
    pub fn held(&self) -> Vec<String> {
        let gate = self.gate.lock().unwrap();
        gate.held.iter().map(|h| h.what.clone()).collect()
    }

    /// Lets held request `index` go on (`fail`: it answers 503 without reaching the store).
    pub fn release(&self, index: usize, fail: bool) -> String {
        let held = self.gate.lock().unwrap().held.remove(index);
        let _ = held.go.send(fail);
        held.what
    }

    async fn pass(&self, what: impl FnOnce() -> String) -> StoreResult<()> {
        let wait = {
            let mut gate = self.gate.lock().unwrap();
            gate.progress += 1;
            if !gate.holding {
                return Ok(());
            }
            let (go, wait) = oneshot::channel();
            gate.held.push(Held { what: what(), go });
            wait
        };
        let fail = wait.await.unwrap_or(true);
        self.gate.lock().unwrap().progress += 1;
        if fail {
            Err(StoreError::Transient("injected 503".into()))
        } else {
            Ok(())
        }
    }

    /// Every object: key -> (bytes, user metadata).
    pub fn objects(&self) -> HashMap<String, (Bytes, HashMap<String, String>)> {
        self.inner
            .keys()
            .into_iter()
            .map(|key| {
                let data = self.inner.get(&key).unwrap_or_default();
                let meta = self
                    .inner
                    .info(&key)
                    .map(|i| i.user_metadata)
                    .unwrap_or_default();
                (key, (data, meta))
            })
            .collect()
    }
}

#[async_trait]
impl ObjectStore for ScheduledStore {
    async fn check_bucket(&self) -> StoreResult<()> {
        self.inner.check_bucket().await
    }
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.pass(|| format!("HEAD {key}")).await?;
        self.inner.head(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.pass(|| format!("LIST {prefix}")).await?;
        self.inner.list_page(prefix, delimited, token, max).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.pass(|| format!("GET {key}")).await?;
        self.inner.get_range(key, range, if_match).await
    }
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        self.pass(|| format!("PUT {key} ({} bytes)", body.len()))
            .await?;
        self.inner.put(key, body, opts).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.pass(|| format!("DELETE {key}")).await?;
        self.inner.delete(key).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.pass(|| format!("CREATE-MPU {key}")).await?;
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        self.pass(|| format!("PART {key} #{number}")).await?;
        self.inner.upload_part(key, id, number, body).await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        self.pass(|| format!("PART-COPY {source} -> {key} #{number}"))
            .await?;
        self.inner
            .upload_part_copy(key, id, number, source, range, if_match)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.pass(|| format!("COMPLETE {key}")).await?;
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> StoreResult<()> {
        self.pass(|| format!("ABORT {key}")).await?;
        self.inner.abort_multipart(key, id).await
    }
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.pass(|| format!("LIST-UPLOADS {prefix}")).await?;
        self.inner.list_uploads(prefix).await
    }
    async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        self.inner.presign_get(key, expires).await
    }
    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace: bool,
    ) -> StoreResult<Option<String>> {
        self.pass(|| format!("COPY {source} -> {dest}")).await?;
        self.inner.copy(source, dest, opts, replace).await
    }
    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        self.pass(|| format!("COPY {source} -> {dest} if-match"))
            .await?;
        self.inner
            .copy_if_match(source, dest, opts, replace, if_match)
            .await
    }
    // A server that honours conditions (AWS, MinIO, moto): each conditional request is one
    // atomic step, as it is there. (Where a server ignores them, bucketfs checks with a HEAD
    // just before, a window the README documents; the explorer does not search that.)
    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.pass(|| format!("PUT {key} ({} bytes) {expect:?}", body.len()))
            .await?;
        self.inner.put_expecting(key, body, opts, expect).await
    }
    async fn complete_multipart_expecting(
        &self,
        key: &str,
        id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.pass(|| format!("COMPLETE {key} {expect:?}")).await?;
        self.inner
            .complete_multipart_expecting(key, id, parts, expect)
            .await
    }
    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        self.pass(|| format!("DELETE {key} if-match")).await?;
        self.inner.delete_version(key, etag).await
    }
}

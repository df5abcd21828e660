//! A wrapper store that injects failures, for fault tests of the filesystem layer.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ObjectInfo, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart};

/// The store operations a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CheckBucket,
    Head,
    List,
    Get,
    Put,
    Delete,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    Copy,
}

struct Fault {
    op: Op,
    error: StoreError,
    remaining: usize,
}

/// Wraps a store; each call first consumes a matching injected fault, if any.
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<Vec<Fault>>,
    calls: [AtomicUsize; 11],
}

impl<S: ObjectStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Mutex::new(Vec::new()),
            calls: Default::default(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `times` calls of `op` fail with `error`.
    pub fn fail(&self, op: Op, error: StoreError, times: usize) {
        self.faults.lock().unwrap().push(Fault {
            op,
            error,
            remaining: times,
        });
    }

    /// How many calls of `op` reached this store (failed ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    fn check(&self, op: Op) -> StoreResult<()> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let mut faults = self.faults.lock().unwrap();
        if let Some(fault) = faults.iter_mut().find(|f| f.op == op && f.remaining > 0) {
            fault.remaining -= 1;
            return Err(fault.error.clone());
        }
        Ok(())
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    fn buffers(&self) -> Option<&std::sync::Arc<super::buffers::BufferPool>> {
        self.inner.buffers()
    }

    async fn check_bucket(&self) -> StoreResult<()> {
        self.check(Op::CheckBucket)?;
        self.inner.check_bucket().await
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.check(Op::Head)?;
        self.inner.head(key).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.check(Op::List)?;
        self.inner
            .list_page(prefix, delimited, token, max_keys)
            .await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        self.check(Op::Get)?;
        self.inner.get_range(key, range, if_match).await
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        self.check(Op::Put)?;
        self.inner.put(key, body, opts).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check(Op::Delete)?;
        self.inner.delete(key).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.check(Op::CreateMultipart)?;
        self.inner.create_multipart(key, opts).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        self.check(Op::UploadPart)?;
        self.inner.upload_part(key, upload_id, number, body).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
    ) -> StoreResult<UploadedPart> {
        self.check(Op::UploadPart)?;
        self.inner
            .upload_part_copy(key, upload_id, number, source, range)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.check(Op::CompleteMultipart)?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.check(Op::AbortMultipart)?;
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<super::PendingUpload>> {
        self.check(Op::List)?;
        self.inner.list_uploads(prefix).await
    }

    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>> {
        self.check(Op::Copy)?;
        self.inner.copy(source, dest, opts, replace_metadata).await
    }
}

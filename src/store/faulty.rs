//! A wrapper store that injects failures and delays, for fault and stress tests of the
//! filesystem layer: scripted faults (the next N calls of an operation fail) and seeded random
//! chaos (each call of chosen operations fails with some probability, and any call may be
//! delayed).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Expect, ListPage, ObjectInfo, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart,
};

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
    UploadPartCopy,
}

struct Fault {
    op: Op,
    error: StoreError,
    remaining: usize,
}

/// Seeded random faults and delays.
struct Chaos {
    ops: Vec<Op>,
    per_mille: u64,
    max_delay: Duration,
    rng: crate::testdata::SeededRng,
}

impl Chaos {
    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// Wraps a store; each call first consumes a matching injected fault, if any.
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<Vec<Fault>>,
    chaos: Mutex<Option<Chaos>>,
    injected: AtomicUsize,
    calls: [AtomicUsize; 12],
    /// Body bytes sent by PutObject and UploadPart (what a client pushes over the network).
    bytes_sent: std::sync::atomic::AtomicU64,
    /// Part uploads started and not yet finished (or dropped).
    parts_in_flight: AtomicUsize,
    /// Parts uploaded from a file (staged on disk) rather than from memory.
    staged_parts: AtomicUsize,
}

/// Counts a part upload as in flight until dropped (finished or cancelled).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: ObjectStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Mutex::new(Vec::new()),
            chaos: Mutex::new(None),
            injected: AtomicUsize::new(0),
            parts_in_flight: AtomicUsize::new(0),
            staged_parts: AtomicUsize::new(0),
            calls: Default::default(),
            bytes_sent: Default::default(),
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

    /// From now on every call of `ops` fails with probability `per_mille`/1000 (a transient
    /// error), and every call of any operation first waits a random time up to `max_delay`;
    /// the same seed gives the same sequence of draws.
    pub fn chaos(&self, ops: &[Op], per_mille: u64, max_delay: Duration, seed: u64) {
        *self.chaos.lock().unwrap() = Some(Chaos {
            ops: ops.to_vec(),
            per_mille,
            max_delay,
            rng: crate::testdata::SeededRng::new(seed),
        });
    }

    /// Ends the random faults and delays.
    pub fn calm(&self) {
        *self.chaos.lock().unwrap() = None;
    }

    /// How many random faults were injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Body bytes sent by PutObject and UploadPart so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }

    /// How many calls of `op` reached this store (failed ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// Parts uploaded from a file staged on local disk so far.
    pub fn staged_parts(&self) -> usize {
        self.staged_parts.load(Ordering::SeqCst)
    }

    /// Part uploads running now: none may run on after their upload was aborted.
    pub fn parts_in_flight(&self) -> usize {
        self.parts_in_flight.load(Ordering::SeqCst)
    }

    async fn check(&self, op: Op) -> StoreResult<()> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        {
            let mut faults = self.faults.lock().unwrap();
            if let Some(fault) = faults.iter_mut().find(|f| f.op == op && f.remaining > 0) {
                fault.remaining -= 1;
                return Err(fault.error.clone());
            }
        }
        let (fail, delay) = match self.chaos.lock().unwrap().as_mut() {
            None => (false, Duration::ZERO),
            Some(chaos) => {
                let fail = chaos.ops.contains(&op) && chaos.next() % 1000 < chaos.per_mille;
                let max = chaos.max_delay.as_micros() as u64;
                let delay = if max == 0 { 0 } else { chaos.next() % max };
                (fail, Duration::from_micros(delay))
            }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Transient(format!("injected fault in {op:?}")));
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
        self.check(Op::CheckBucket).await?;
        self.inner.check_bucket().await
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.check(Op::Head).await?;
        self.inner.head(key).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.check(Op::List).await?;
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
        self.check(Op::Get).await?;
        self.inner.get_range(key, range, if_match).await
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        self.check(Op::Put).await?;
        self.bytes_sent
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        self.inner.put(key, body, opts).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check(Op::Delete).await?;
        self.inner.delete(key).await
    }

    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.check(Op::Put).await?;
        self.bytes_sent
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        self.inner.put_expecting(key, body, opts, expect).await
    }

    async fn complete_multipart_expecting(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.check(Op::CompleteMultipart).await?;
        self.inner
            .complete_multipart_expecting(key, upload_id, parts, expect)
            .await
    }

    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        self.check(Op::Delete).await?;
        self.inner.delete_version(key, etag).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.check(Op::CreateMultipart).await?;
        self.inner.create_multipart(key, opts).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        self.parts_in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&self.parts_in_flight);
        self.check(Op::UploadPart).await?;
        self.bytes_sent
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        self.inner.upload_part(key, upload_id, number, body).await
    }

    async fn upload_part_from_file(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        self.parts_in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&self.parts_in_flight);
        self.check(Op::UploadPart).await?;
        self.bytes_sent.fetch_add(len, Ordering::SeqCst);
        self.staged_parts.fetch_add(1, Ordering::SeqCst);
        self.inner
            .upload_part_from_file(key, upload_id, number, file, len)
            .await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        self.check(Op::UploadPartCopy).await?;
        self.inner
            .upload_part_copy(key, upload_id, number, source, range, if_match)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.check(Op::CompleteMultipart).await?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.check(Op::AbortMultipart).await?;
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<super::PendingUpload>> {
        self.check(Op::List).await?;
        self.inner.list_uploads(prefix).await
    }

    async fn restore(&self, key: &str, days: u32, tier: Option<&str>) -> StoreResult<()> {
        self.inner.restore(key, days, tier).await
    }

    async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        self.inner.presign_get(key, expires).await
    }

    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>> {
        self.check(Op::Copy).await?;
        self.inner.copy(source, dest, opts, replace_metadata).await
    }

    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        self.check(Op::Copy).await?;
        self.inner
            .copy_if_match(source, dest, opts, replace_metadata, if_match)
            .await
    }
}

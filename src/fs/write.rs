//! Writing one file: bytes stream into a multipart upload while the application writes (parts
//! uploaded concurrently in the background, memory held against the shared budget), or into
//! one PutObject at close for files smaller than a part.
//!
//! Nothing is visible in S3 before `commit` (close or fsync), and `commit` returns Ok only once
//! S3 confirmed the object. On any failure the multipart upload is aborted (no orphan parts)
//! and the error is returned to the caller, never swallowed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::store::buffers::{BufferPool, PooledBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::copy::ServerCopy;
use super::disk_cache::DiskCache;
use super::error::{FsError, FsResult};
use super::journal::UploadJournal;
pub use super::parts::{part_size_for, MAX_PARTS, MIN_PART_SIZE};
use super::patch::{base_error, Base, PartPlan, PatchFile};
use crate::store::{Expect, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart};

mod buffer;
mod patching;
mod stream;

use buffer::{PartBody, PartBuffer};
use stream::hold_budget;
/// Part uploads of one file running at once.
const MAX_PARTS_IN_FLIGHT: usize = 16;

/// The start of a file is buffered in a small growing buffer, outside the memory budget, up to
/// this size; past it the buffer is a whole part held against the budget.
const SMALL_START: usize = 1 << 20;

/// How long a writer waits for a part's budget before filling that part over budget (see
/// `hold_part_budget`).
const BUDGET_WAIT: Duration = if cfg!(test) {
    Duration::from_millis(50) // the unit tests wait on it many times
} else {
    Duration::from_secs(5)
};

struct Upload {
    /// The key the upload was started for. A multipart upload cannot change its key, so a
    /// file renamed while being written keeps uploading here and is moved at commit.
    key: String,
    id: String,
    /// The metadata it was created with: a chmod or setxattr during the upload changes
    /// `FileWriter::opts`, which the commit then applies by a self-copy.
    opts: PutOptions,
    next_number: i32,
    /// Bytes sent (or copied) as parts so far, in part order.
    bytes: u64,
    running: Vec<JoinHandle<StoreResult<UploadedPart>>>,
}

/// What state the file's content is in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Accepting sequential writes.
    Open,
    /// The object is in S3 (or was opened without truncation); nothing new since.
    Committed,
    /// A background part upload failed; every later call reports it.
    Failed(FsError),
    /// The file was unlinked, or another file was renamed over it, while open: its bytes have
    /// no name to go to. Writes are accepted and dropped; nothing is uploaded.
    Discarded,
    /// Committed and closed, then replaced as the file's writer by a newer open before its
    /// release arrived: later writes through it are refused (EBUSY), it commits nothing.
    Superseded,
    /// Unlinked while open: the handles that have it open go on reading and writing it here
    /// (changes kept on local disk), and nothing is uploaded any more.
    Orphaned,
}

pub struct FileWriter<S> {
    store: Arc<S>,
    key: String,
    opts: PutOptions,
    base_part_size: u64,
    budget: Arc<Semaphore>,
    /// The budget's size: no part holds more.
    budget_total: usize,
    buffer: PartBuffer,
    /// Budget held for `buffer`.
    buffer_permit: Option<OwnedSemaphorePermit>,
    /// Memory outside the budget, shared by all writers (see `with_overdraft`): the small
    /// start of a file, and a part filled over budget.
    overdraft: Option<Arc<Semaphore>>,
    /// What this file's small start holds of it.
    small_permit: Option<OwnedSemaphorePermit>,
    /// The start went to local disk for want of overdraft (not for a write out of order):
    /// written on in order past the small start, the file streams again (`unspill`).
    spilled_start: bool,
    /// The part being filled has been given its budget (or went on without, see
    /// `hold_part_budget`).
    part_budgeted: bool,
    /// A part upload failure found while waiting for budget, reported at the next write.
    parked_error: Option<FsError>,
    size: u64,
    upload: Option<Upload>,
    done_parts: Vec<UploadedPart>,
    state: State,
    /// Where multipart uploads in flight are recorded, so a crash leaves no orphan unknown.
    journal: Option<Arc<UploadJournal>>,
    /// A close (flush) came and nothing was written or truncated since.
    closed: bool,
    /// Local disk for the changed bytes of files written in place; without it, writes that
    /// are not a plain stream from the start are refused (EOPNOTSUPP).
    disk: Option<Arc<DiskCache>>,
    /// The object the file's content starts from (opened without truncation, or committed):
    /// writes after that change it in place.
    base: Option<Base>,
    /// Created with O_EXCL and not stored yet under this key: the first upload expects no
    /// object there.
    exclusive: bool,
    /// The content being changed in place (see `patch`).
    patch: Option<PatchFile>,
    /// Opened for reading too (O_RDWR): writes go to a patch from the first byte, so the
    /// handle can read back what it wrote.
    random_access: bool,
}

impl<S: ObjectStore> FileWriter<S> {
    /// A writer for a new (or truncated) object.
    pub fn new(
        store: Arc<S>,
        key: String,
        opts: PutOptions,
        part_size: u64,
        budget: Arc<Semaphore>,
        budget_total: usize,
    ) -> Self {
        Self {
            store,
            key,
            opts,
            base_part_size: part_size,
            budget,
            budget_total: budget_total.max(1),
            buffer: PartBuffer::default(),
            buffer_permit: None,
            overdraft: None,
            small_permit: None,
            spilled_start: false,
            part_budgeted: false,
            parked_error: None,
            size: 0,
            upload: None,
            done_parts: Vec::new(),
            state: State::Open,
            journal: None,
            closed: false,
            disk: None,
            base: None,
            exclusive: false,
            patch: None,
            random_access: false,
        }
    }

    /// Bounds what all writers hold outside the memory budget together: the first MiB of each
    /// file and the parts filled over budget come from here, and when it is used up a file's
    /// start goes to local disk instead (as a file written in place), and a part waits for
    /// the budget.
    pub fn with_overdraft(mut self, overdraft: Arc<Semaphore>) -> Self {
        self.overdraft = Some(overdraft);
        self
    }

    /// Where changed bytes of files written in place are kept.
    pub fn with_disk(mut self, disk: Option<Arc<DiskCache>>) -> Self {
        self.disk = disk;
        self
    }

    /// The file was opened for reading and writing.
    pub fn random_access(mut self) -> Self {
        self.random_access = true;
        self
    }

    pub fn set_random_access(&mut self) {
        self.random_access = true;
    }

    /// Records this writer's multipart uploads in `journal` while they are open.
    pub fn with_journal(mut self, journal: Option<Arc<UploadJournal>>) -> Self {
        self.journal = journal;
        self
    }

    /// A file created with `O_EXCL`: its first upload expects no object under its key.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// A writer on an existing object, opened without `O_TRUNC`: nothing is uploaded unless
    /// it is written to or truncated; writes change the object in place.
    pub fn existing(mut self, base: Base) -> Self {
        self.size = base.size;
        self.state = State::Committed;
        self.base = Some(base);
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The file was renamed: its content goes to `key` at commit. A multipart upload in
    /// progress goes on under its own key; the commit completes it there, copies it to `key`
    /// server-side and deletes it (a crash in between leaves the content under the old name).
    /// Nothing touches S3 here, so a rename that fails afterwards has changed nothing.
    pub fn set_key(&mut self, key: String) {
        self.key = key;
        // A rename may have replaced an object under the new key: the next upload replaces
        // it, as the rename said.
        self.exclusive = false;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn opts(&self) -> &PutOptions {
        &self.opts
    }

    pub fn opts_mut(&mut self) -> &mut PutOptions {
        &mut self.opts
    }

    /// True while written bytes are not in S3 yet.
    pub fn is_dirty(&self) -> bool {
        matches!(self.state, State::Open | State::Failed(_))
    }

    /// True when the new content is empty so far: nothing written since the open (of a new
    /// file, or with a truncate to 0).
    pub fn is_empty_replacement(&self) -> bool {
        self.state == State::Open && self.size == 0
    }

    /// True once an upload failed: the file's new content will never reach S3.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    pub fn is_discarded(&self) -> bool {
        matches!(self.state, State::Discarded | State::Orphaned)
    }

    /// A writer whose content is all in S3 (or that changed nothing) may hand the file over
    /// to a newer open before its release arrives (the kernel sends release asynchronously).
    pub fn can_be_superseded(&self) -> bool {
        self.closed && self.state == State::Committed
    }

    /// The program closed a descriptor of the file (flush).
    pub fn note_close(&mut self) {
        self.closed = true;
    }

    pub fn supersede(&mut self) {
        debug_assert!(self.can_be_superseded());
        self.state = State::Superseded;
    }

    /// The file lost its name (unlink, or a rename over it): stops and aborts any upload now;
    /// later writes are dropped and close uploads nothing.
    pub async fn discard(&mut self) {
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
        self.small_permit = None;
        self.buffer_permit = None;
        self.part_budgeted = false;
        self.state = State::Discarded;
    }

    /// The file was unlinked while open: its content stays readable and writable through the
    /// handles that have it open, and is never uploaded. Bytes streamed but not kept (parts
    /// already uploaded) cannot be kept: then it is discarded as `discard` does.
    pub async fn orphan(&mut self) {
        if self.is_dirty() && self.patch.is_none() && self.ensure_patch().is_err() {
            self.discard().await;
            return;
        }
        self.abort().await;
        self.buffer = PartBuffer::default();
        self.small_permit = None;
        self.buffer_permit = None;
        self.part_budgeted = false;
        self.state = State::Orphaned;
    }

    /// The file lost its name (found gone, not unlinked or renamed over here) while this
    /// writer had content to store: the writer fails, so this and every later call through it
    /// report it (ESTALE), never a silent drop.
    pub async fn lose_name(&mut self) -> FsError {
        self.fail(FsError::Stale).await
    }

    /// The key of a multipart upload in progress when the file was renamed away from it since
    /// (see `set_key`): the object appears there for a moment at commit.
    pub fn displaced_key(&self) -> Option<&str> {
        self.upload
            .as_ref()
            .map(|u| u.key.as_str())
            .filter(|k| *k != self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;
    use std::time::Duration;

    fn memory(body: PartBody) -> Bytes {
        match body {
            PartBody::Memory(bytes) => bytes,
            PartBody::Staged(_) => panic!("a part in memory was staged"),
        }
    }

    #[test]
    fn a_part_buffer_moves_into_a_pooled_part_keeping_its_bytes() {
        let pool = BufferPool::new(64 << 20);
        let mut buffer = PartBuffer::default();
        buffer.reserve_small(4096);
        buffer.extend_from_slice(b"head").unwrap();
        buffer.reserve_part(8 << 20, Some(&pool));
        assert!(matches!(buffer, PartBuffer::Pooled(_)));
        assert!(buffer.capacity() >= 8 << 20);
        buffer.extend_from_slice(b"-tail").unwrap();
        let part = memory(buffer.into_body());
        assert_eq!(&part[..], b"head-tail");
        drop(part);
        assert!(
            pool.idle_bytes() >= 8 << 20,
            "the part's buffer went back to the pool"
        );
        // Without a pool the part is an ordinary allocation.
        let mut plain = PartBuffer::default();
        plain.extend_from_slice(b"x").unwrap();
        plain.reserve_part(1 << 20, None);
        assert!(matches!(plain, PartBuffer::Small(_)));
        assert!(plain.capacity() >= 1 << 20);
        assert_eq!(&memory(plain.into_body())[..], b"x");
    }

    #[test]
    fn a_part_staged_on_disk_keeps_its_bytes_and_gives_its_room_back() {
        let disk = DiskCache::new(crate::fs::disk_cache::DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes: 10 << 20,
            chunk_size: 1 << 20,
            concurrency: 1,
        });
        let mut buffer = PartBuffer::default();
        buffer.extend_from_slice(b"head").unwrap();
        buffer.stage(disk.clone(), 8 << 20).unwrap();
        assert!(buffer.is_staged());
        assert_eq!(disk.reserved_bytes(), 8 << 20, "the whole part is reserved");
        buffer.extend_from_slice(b"-tail").unwrap();
        buffer.overwrite(0, b"H").unwrap();
        assert_eq!(&buffer.contents().unwrap()[..], b"Head-tail");
        buffer.truncate(6).unwrap();
        assert_eq!(buffer.len(), 6);
        assert_eq!(&buffer.contents().unwrap()[..], b"Head-t");
        // A second part does not fit in what is left of the cache: refused, nothing changed.
        let mut other = PartBuffer::default();
        other.extend_from_slice(b"x").unwrap();
        assert_eq!(other.stage(disk.clone(), 8 << 20), Err(FsError::NoSpace));
        assert_eq!(&other.contents().unwrap()[..], b"x");
        let body = buffer.into_body();
        assert!(matches!(body, PartBody::Staged(_)));
        assert_eq!(body.len(), 6);
        drop(body);
        assert_eq!(disk.reserved_bytes(), 0, "its room is given back once sent");
    }

    fn writer(
        store: &Arc<FaultyStore<MemoryStore>>,
        part: u64,
    ) -> FileWriter<FaultyStore<MemoryStore>> {
        FileWriter::new(
            store.clone(),
            "k".into(),
            PutOptions::default(),
            part,
            Arc::new(Semaphore::new(64 << 20)),
            64 << 20,
        )
    }

    fn store() -> Arc<FaultyStore<MemoryStore>> {
        Arc::new(FaultyStore::new(
            MemoryStore::new().with_min_part_size(MIN_PART_SIZE as usize),
        ))
    }

    async fn write_all(
        w: &mut FileWriter<FaultyStore<MemoryStore>>,
        data: &[u8],
        chunk: usize,
    ) -> FsResult<()> {
        let mut offset = 0;
        for piece in data.chunks(chunk) {
            w.write(offset, piece).await?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    #[test]
    fn part_sizes_grow_to_reach_five_tebibytes() {
        let base = 8 << 20;
        assert_eq!(part_size_for(base, 1), base);
        assert_eq!(part_size_for(base, 1000), base);
        assert_eq!(part_size_for(base, 1001), 2 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size_for(base, n)).sum();
        assert!(total >= 5 << 40, "{total}");
        assert_eq!(
            part_size_for(1, 1),
            MIN_PART_SIZE,
            "never below S3's minimum"
        );
    }

    #[tokio::test]
    async fn writers_sharing_a_small_budget_all_finish_within_it() {
        let store = store();
        let budget_total = 12 << 20;
        let budget = Arc::new(Semaphore::new(budget_total));
        let data: Vec<u8> = (0..(12 << 20) + 77).map(|i| (i % 249) as u8).collect();
        let mut tasks = Vec::new();
        for n in 0..6 {
            let (store, budget, data) = (store.clone(), budget.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("k{n}");
                let mut w = FileWriter::new(
                    store.clone(),
                    key.clone(),
                    PutOptions::default(),
                    MIN_PART_SIZE,
                    budget,
                    budget_total,
                );
                write_all(&mut w, &data, 128 << 10).await.unwrap();
                w.commit().await.unwrap();
                assert_eq!(store.inner().get(&key).unwrap(), data);
            }));
        }
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(Duration::from_secs(30), all).await;
        for result in done.expect("writers deadlocked on the budget") {
            result.unwrap();
        }
        assert_eq!(
            budget.available_permits(),
            budget_total,
            "all budget returned"
        );
    }

    #[tokio::test]
    async fn small_and_empty_files_are_one_put() {
        let store = store();
        let mut w = writer(&store, 8 << 20);
        assert_eq!(w.commit().await.unwrap().map(|(s, _)| s), Some(0));
        assert_eq!(store.inner().get("k").unwrap().len(), 0);
        let mut w = writer(&store, 8 << 20);
        write_all(&mut w, b"hello", 2).await.unwrap();
        assert!(
            store.inner().get("k").unwrap().is_empty(),
            "not visible before commit"
        );
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"hello");
        assert_eq!(store.calls(Op::CreateMultipart), 0);
    }

    #[tokio::test]
    async fn large_files_stream_as_multipart() {
        let store = store();
        let data: Vec<u8> = (0..(12 << 20) + 123).map(|i| (i % 253) as u8).collect();
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &data, 128 << 10).await.unwrap();
        assert_eq!(
            store.calls(Op::CreateMultipart),
            1,
            "the upload started while writing"
        );
        assert!(store.inner().get("k").is_none());
        w.commit().await.unwrap();
        assert_eq!(store.inner().get("k").unwrap(), data);
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_fails_the_close_and_aborts_the_upload() {
        let store = store();
        store.fail(Op::UploadPart, StoreError::Transient("reset".into()), 1);
        let data = vec![7u8; 11 << 20];
        let mut w = writer(&store, MIN_PART_SIZE);
        let written = write_all(&mut w, &data, 1 << 20).await;
        let committed = w.commit().await;
        assert!(written.is_err() || committed.is_err());
        assert_eq!(
            w.commit().await.unwrap_err().errno(),
            libc::EIO,
            "stays failed"
        );
        assert!(store.inner().get("k").is_none(), "nothing visible");
        assert_eq!(store.inner().open_uploads(), 0, "upload aborted");
    }

    #[tokio::test]
    async fn no_part_upload_runs_on_after_a_failure_aborted_the_upload() {
        let store = store();
        // Slow parts, so several are in flight when one fails.
        store.chaos(&[], 0, Duration::from_millis(40), 7);
        store.fail(Op::UploadPart, StoreError::Transient("reset".into()), 1);
        let mut w = writer(&store, MIN_PART_SIZE);
        // More parts than may be in flight at once, so the writer waits on the failed one.
        let written = write_all(&mut w, &vec![3u8; 120 << 20], 1 << 20).await;
        let committed = w.commit().await;
        assert!(written.is_err() || committed.is_err());
        assert!(
            w.commit().await.is_err(),
            "stays failed: nothing else is stored"
        );
        assert!(store.inner().get("k").is_none());
        assert_eq!(
            store.parts_in_flight(),
            0,
            "a part upload outlived the abort"
        );
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_complete_fails_the_close_and_aborts() {
        let store = store();
        store.fail(
            Op::CompleteMultipart,
            StoreError::Transient("500".into()),
            1,
        );
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &vec![1u8; 6 << 20], 1 << 20)
            .await
            .unwrap();
        assert_eq!(w.commit().await.unwrap_err().errno(), libc::EIO);
        assert!(store.inner().get("k").is_none());
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_single_put_fails_the_close() {
        let store = store();
        store.fail(Op::Put, StoreError::Transient("503".into()), 1);
        let mut w = writer(&store, 8 << 20);
        write_all(&mut w, b"data", 4).await.unwrap();
        assert_eq!(w.commit().await.unwrap_err().errno(), libc::EIO);
        assert!(store.inner().get("k").is_none());
    }

    #[tokio::test]
    async fn non_sequential_writes_and_overwrites_are_refused() {
        let store = store();
        let mut w = writer(&store, 8 << 20);
        w.write(0, b"abc").await.unwrap();
        assert_eq!(
            w.write(10, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            w.write(1, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        // Without a disk to keep changed bytes, an existing object cannot change in place.
        let mut existing = writer(&store, 8 << 20).existing(Base {
            key: "k".into(),
            etag: None,
            size: 5,
        });
        assert_eq!(
            existing.write(0, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        existing.truncate().await.unwrap();
        existing.write(0, b"new").await.unwrap();
        existing.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"new");
    }

    #[tokio::test]
    async fn truncating_mid_upload_starts_over_cleanly() {
        let store = store();
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &vec![1u8; 6 << 20], 1 << 20)
            .await
            .unwrap();
        w.truncate().await.unwrap();
        w.write(0, b"short").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"short");
        assert_eq!(store.inner().open_uploads(), 0);
    }

    fn disk() -> Arc<DiskCache> {
        DiskCache::new(crate::fs::disk_cache::DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes: 1 << 30,
            chunk_size: 1 << 20,
            concurrency: 1,
        })
    }

    fn patcher(
        store: &Arc<FaultyStore<MemoryStore>>,
        key: &str,
    ) -> FileWriter<FaultyStore<MemoryStore>> {
        let info = store.inner().info(key).unwrap();
        FileWriter::new(
            store.clone(),
            key.into(),
            PutOptions::default(),
            MIN_PART_SIZE,
            Arc::new(Semaphore::new(64 << 20)),
            64 << 20,
        )
        .with_disk(Some(disk()))
        .existing(Base {
            key: key.into(),
            etag: info.etag,
            size: info.size,
        })
    }

    #[tokio::test]
    async fn writes_anywhere_in_a_small_object_rewrite_it_with_one_put() {
        let store = store();
        store
            .inner()
            .insert("k", Bytes::from_static(b"hello world"));
        let mut w = patcher(&store, "k");
        w.write(0, b"J").await.unwrap();
        w.write(11, b"!").await.unwrap(); // append
        assert_eq!(&w.read(0, 100).await.unwrap().unwrap()[..], b"Jello world!");
        assert_eq!(
            &store.inner().get("k").unwrap()[..],
            b"hello world",
            "the old object stays until the commit"
        );
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"Jello world!");
        // Committed, then changed again: from the new object.
        w.truncate_to(5).await.unwrap();
        w.truncate_to(8).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"Jello\0\0\0");
        assert_eq!(store.calls(Op::CreateMultipart), 0);
    }

    #[tokio::test]
    async fn appending_to_a_large_object_copies_it_server_side() {
        let store = store();
        let data = crate::testdata::random_bytes(64 << 20, 3);
        store.inner().insert("k", data.clone());
        let sent_before = store.bytes_sent();
        let mut w = patcher(&store, "k");
        w.write(64 << 20, &[7u8; 1024]).await.unwrap();
        w.commit().await.unwrap();
        let sent = store.bytes_sent() - sent_before;
        assert!(
            sent <= MIN_PART_SIZE + 1024,
            "sent {sent} bytes to append 1 KiB"
        );
        assert_eq!(store.calls(Op::UploadPartCopy), 1);
        let stored = store.inner().get("k").unwrap();
        assert_eq!(stored.len(), (64 << 20) + 1024);
        assert_eq!(&stored[..64 << 20], &data[..]);
        assert!(stored[64 << 20..].iter().all(|&b| b == 7));
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_base_changed_on_the_server_fails_the_commit_and_is_left_alone() {
        let store = store();
        store
            .inner()
            .insert("k", crate::testdata::random_bytes(20 << 20, 4));
        let mut w = patcher(&store, "k");
        w.write(1 << 20, b"change").await.unwrap();
        // Another client replaces the object meanwhile.
        let theirs = crate::testdata::random_bytes(20 << 20, 5);
        store.inner().insert("k", theirs.clone());
        let err = w.commit().await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
        assert_eq!(store.inner().get("k").unwrap(), theirs, "never a blend");
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_stream_that_turns_random_before_its_first_part_keeps_every_byte() {
        let store = store();
        let mut w = writer(&store, 8 << 20).with_disk(Some(disk()));
        w.write(0, b"0123456789").await.unwrap();
        w.write(2, b"ab").await.unwrap(); // back into the buffered start
        w.write(12, b"Z").await.unwrap(); // past the end: a hole of zeros
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"01ab456789\0\0Z");
    }
}

//! Reading one open file: sequential streams through a prefetcher with a growing window of
//! concurrent ranged GETs; random reads through the shared block cache.
//!
//! Every GET is pinned to the ETag seen at open (`If-Match`), so an object replaced while it is
//! read gives `FsError::Stale`, never a mix of two versions.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;

use super::cache::{BlockCache, BlockId};
use super::disk_cache::{DiskCache, StagedObject};
use super::error::{FsError, FsResult};
use crate::metrics::{metrics, Cache};
use crate::store::{ObjectStore, StoreResult};

/// Read tuning, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTuning {
    /// Size of each ranged GET once the window has grown (`--read-part-size`).
    pub part_size: u64,
    /// Window a new sequential stream starts with: small, so the first byte comes fast.
    pub initial_window: u64,
    /// Largest window one stream may grow to.
    pub max_window: u64,
    /// Aligned block fetched for a random read (and cached).
    pub block_size: u64,
}

impl Default for ReadTuning {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            initial_window: 1 << 20,
            max_window: 64 << 20,
            block_size: 256 << 10,
        }
    }
}

/// Distance around the prefetched range within which a read that is not next in line keeps the
/// stream alive: the kernel sends readahead requests concurrently, so they may arrive slightly
/// out of order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;

/// Jumps (reads more than `SEQUENTIAL_SLACK` away from where the last one ended, with no
/// streaming in between) after which an open file's object is staged on local disk (see
/// `disk_cache`): enough to tell a random reader from one that read a header and a footer.
const STAGE_AFTER_RANDOM_READS: u32 = 4;

/// Objects below this size are not staged: the memory block cache holds them whole.
const STAGE_MIN_SIZE: u64 = 1 << 20;

/// A GET running in the background; aborted when dropped (file closed, stream abandoned).
struct Fetch(JoinHandle<StoreResult<Bytes>>);

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum PartData {
    Pending(Fetch),
    Ready(Bytes),
}

struct Part {
    range: Range<u64>,
    data: PartData,
    /// Holds this part's bytes against the memory budget until the part is dropped.
    _budget: Option<OwnedSemaphorePermit>,
    /// The window already grew when the reader finished this part.
    counted: bool,
}

impl Part {
    async fn bytes(&mut self) -> FsResult<&Bytes> {
        if let PartData::Pending(fetch) = &mut self.data {
            let result = (&mut fetch.0)
                .await
                .map_err(|e| FsError::Io(format!("prefetch task failed: {e}")))?;
            let data = result?;
            self.data = PartData::Ready(data);
        }
        match &self.data {
            PartData::Ready(bytes) => Ok(bytes),
            PartData::Pending(_) => unreachable!("resolved above"),
        }
    }
}

/// Shared by every open file: the store, the block cache and the memory budget for prefetch.
pub struct ReadContext<S> {
    pub store: Arc<S>,
    pub cache: Arc<BlockCache>,
    /// Permits are bytes of write buffers and staging transfers.
    pub budget: Arc<Semaphore>,
    /// Permits are bytes of sequential read-ahead, all streams together.
    pub readahead: Arc<Semaphore>,
    pub tuning: ReadTuning,
    /// Local disk staging for random readers; `None` when disabled.
    pub disk: Option<Arc<DiskCache>>,
}

impl<S> Clone for ReadContext<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            cache: self.cache.clone(),
            budget: self.budget.clone(),
            readahead: self.readahead.clone(),
            tuning: self.tuning,
            disk: self.disk.clone(),
        }
    }
}

pub struct FileReader<S> {
    ctx: ReadContext<S>,
    key: String,
    etag: Option<String>,
    size: u64,
    /// Contiguous, ascending ranges being prefetched or held.
    parts: VecDeque<Part>,
    /// End of the prefetched range (where the next part starts).
    fetched_to: u64,
    /// Where a sequential reader reads next.
    expected: u64,
    /// How many reads in a row started where the previous one ended.
    streak: u32,
    window: u64,
    /// This version of the object on local disk (being) staged, if it is.
    staged: Option<Arc<StagedObject>>,
    random_reads: u32,
    /// The disk cache declined this object (too large, no room): not asked again by this open,
    /// whose every further random read would otherwise ask.
    staging_declined: bool,
}

impl<S: ObjectStore> FileReader<S> {
    pub fn new(ctx: ReadContext<S>, key: String, etag: Option<String>, size: u64) -> Self {
        let window = ctx.tuning.initial_window;
        let staged = match (&ctx.disk, &etag) {
            (Some(disk), Some(etag)) => disk.get(&key, etag),
            _ => None,
        };
        Self {
            ctx,
            key,
            etag,
            size,
            parts: VecDeque::new(),
            fetched_to: 0,
            expected: 0,
            streak: 0,
            window,
            staged,
            random_reads: 0,
            staging_declined: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object version this handle reads (the source of a server-side copy).
    pub fn object(&self) -> super::patch::Base {
        super::patch::Base {
            key: self.key.clone(),
            etag: self.etag.clone(),
            size: self.size,
        }
    }

    /// Current prefetch window (for tests and logs).
    pub fn window(&self) -> u64 {
        self.window
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> FsResult<Bytes> {
        if offset >= self.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len as u64).min(self.size);
        if let Some(bytes) = self.read_staged(offset, end) {
            self.expected = end;
            return Ok(bytes);
        }
        let in_stream = self
            .parts
            .front()
            .is_some_and(|p| p.range.start <= offset && offset < self.fetched_to);
        // A stream starts at the beginning of the file, or once two reads in a row followed each
        // other: one read that happens to start where the last ended (a random reader, or the
        // kernel's readahead after it) must not set off a prefetch nobody will use.
        let follows = offset == self.expected;
        self.streak = if follows { self.streak + 1 } else { 0 };
        let starts_stream = follows && (offset == 0 || self.streak >= 2);
        let result = if in_stream || starts_stream {
            if !in_stream {
                self.restart_stream(offset);
            }
            self.random_reads = 0; // a streaming reader is not a random one
            self.read_streamed(offset, end).await
        } else {
            // Out of order by a little (concurrent kernel readahead) keeps the stream; anything
            // else abandons it and gives its memory back.
            let near_stream = self.parts.front().is_some_and(|p| {
                offset + SEQUENTIAL_SLACK >= p.range.start
                    && offset <= self.fetched_to + SEQUENTIAL_SLACK
            });
            if !near_stream {
                if !self.parts.is_empty() {
                    debug!(key = %self.key, offset, prefetched_to = self.fetched_to, "random read: prefetch stream abandoned");
                }
                self.parts.clear();
                self.window = self.ctx.tuning.initial_window;
            }
            // Only a jump counts towards staging: the kernel's concurrent readahead requests
            // arrive slightly out of order at the start of every sequential read.
            let jump = offset.abs_diff(self.expected) > SEQUENTIAL_SLACK;
            if jump && !near_stream {
                self.random_reads += 1;
                if self.random_reads >= STAGE_AFTER_RANDOM_READS {
                    self.stage();
                }
            }
            self.read_blocks(offset, end).await
        };
        if result.is_err() {
            self.parts.clear();
        }
        self.expected = end;
        result
    }

    /// The read answered without waiting on anything, from the staging file; `None` when it
    /// needs S3 (then `read` does it).
    pub fn read_local(&mut self, offset: u64, len: u32) -> Option<Bytes> {
        if offset >= self.size || len == 0 {
            return Some(Bytes::new());
        }
        let end = (offset + len as u64).min(self.size);
        let bytes = self.read_staged(offset, end)?;
        self.expected = end;
        Some(bytes)
    }

    /// The read from the staging file, when the object is staged there as far as it needs.
    fn read_staged(&mut self, offset: u64, end: u64) -> Option<Bytes> {
        let staged = self.staged.as_ref()?;
        if staged.has_failed() {
            self.staged = None;
            self.random_reads = 0;
            return None;
        }
        match staged.read(offset..end)? {
            Ok(bytes) => {
                metrics().cache_lookup(Cache::Staged, true);
                if staged.is_complete() {
                    self.parts.clear(); // nothing left to stream from S3
                }
                Some(bytes)
            }
            Err(e) => {
                tracing::warn!(key = %self.key, "reading the staging file: {e}; reading from S3");
                self.staged = None;
                None
            }
        }
    }

    fn stage(&mut self) {
        if self.staged.is_some() || self.staging_declined || self.size < STAGE_MIN_SIZE {
            return;
        }
        let (Some(disk), Some(etag)) = (&self.ctx.disk, &self.etag) else {
            return;
        };
        metrics().cache_lookup(Cache::Staged, false);
        self.staged = disk.stage(
            self.ctx.store.clone(),
            self.ctx.budget.clone(),
            &self.key,
            etag,
            self.size,
        );
        self.staging_declined = self.staged.is_none();
    }

    fn restart_stream(&mut self, offset: u64) {
        if !self.parts.is_empty() {
            debug!(key = %self.key, offset, prefetched_to = self.fetched_to, "prefetch stream restarted");
        }
        self.parts.clear();
        self.fetched_to = offset;
        self.window = self.ctx.tuning.initial_window;
    }

    /// Starts GETs until the prefetched range reaches `from + window`. When the memory budget is
    /// exhausted the window shrinks instead, except for bytes the current read needs (below
    /// `needed_to`): those are fetched regardless, so a stream always progresses and the overrun
    /// is bounded by one read per open file.
    fn fill_window(&mut self, from: u64, needed_to: u64) {
        let target = (from + self.window).min(self.size).max(needed_to);
        while self.fetched_to < target {
            let len = self
                .ctx
                .tuning
                .part_size
                .min(self.window)
                .min(self.size - self.fetched_to);
            // The store streams a body of this size into one buffer (`store::buffers`), so a
            // part costs its own size, in flight and after.
            let permits = len.min(u32::MAX as u64) as u32;
            let budget = match self.ctx.readahead.clone().try_acquire_many_owned(permits) {
                Ok(permit) => Some(permit),
                Err(_) if self.fetched_to < needed_to => None,
                Err(_) => {
                    self.window = (self.window / 2).max(self.ctx.tuning.initial_window);
                    return;
                }
            };
            let range = self.fetched_to..self.fetched_to + len;
            let store = self.ctx.store.clone();
            let key = self.key.clone();
            let etag = self.etag.clone();
            let fetch_range = range.clone();
            let handle =
                tokio::spawn(
                    async move { store.get_range(&key, fetch_range, etag.as_deref()).await },
                );
            self.parts.push_back(Part {
                range,
                data: PartData::Pending(Fetch(handle)),
                _budget: budget,
                counted: false,
            });
            self.fetched_to += len;
        }
    }

    async fn read_streamed(&mut self, offset: u64, end: u64) -> FsResult<Bytes> {
        // Parts the reader has moved well past are done with.
        while self
            .parts
            .front()
            .is_some_and(|p| p.range.end + SEQUENTIAL_SLACK <= offset)
        {
            self.parts.pop_front();
        }
        self.fill_window(offset, end);
        let mut out: Option<BytesMut> = None;
        let mut single: Option<Bytes> = None;
        let mut grow = 0;
        for part in self.parts.iter_mut() {
            if part.range.end <= offset {
                continue;
            }
            if part.range.start >= end {
                break;
            }
            let start_in = offset.max(part.range.start);
            let end_in = end.min(part.range.end);
            let part_start = part.range.start;
            let part_end = part.range.end;
            let bytes = part.bytes().await?.clone();
            let slice_start = (start_in - part_start) as usize;
            let slice_end = ((end_in - part_start) as usize).min(bytes.len());
            if slice_start > slice_end {
                return Err(FsError::Io("object shorter than its listed size".into()));
            }
            let piece = bytes.slice(slice_start..slice_end);
            if end >= part_end && !part.counted {
                part.counted = true;
                grow += 1;
            }
            match (&mut out, &single) {
                (None, None) if end_in == end => {
                    single = Some(piece);
                    break;
                }
                (None, None) => {
                    let mut buf = BytesMut::with_capacity((end - offset) as usize);
                    buf.extend_from_slice(&piece);
                    out = Some(buf);
                }
                (Some(buf), _) => buf.extend_from_slice(&piece),
                (None, Some(_)) => unreachable!("single piece ends the read"),
            }
        }
        for _ in 0..grow {
            self.window = (self.window * 2).min(self.ctx.tuning.max_window);
        }
        if grow > 0 {
            self.fill_window(end, end);
        }
        Ok(single.unwrap_or_else(|| out.map(BytesMut::freeze).unwrap_or_default()))
    }

    /// A random read: the aligned blocks covering it, from the cache; the missing ones in one
    /// ranged GET (one round trip, however many blocks the read spans), then cached.
    async fn read_blocks(&mut self, offset: u64, end: u64) -> FsResult<Bytes> {
        let block_size = self.ctx.tuning.block_size;
        let first = offset / block_size;
        let last = (end - 1) / block_size;
        let mut blocks: Vec<Option<Bytes>> = (first..=last).map(|i| self.cached_block(i)).collect();
        let missing_first = blocks.iter().position(Option::is_none);
        let missing_last = blocks.iter().rposition(Option::is_none);
        if let (Some(lo), Some(hi)) = (missing_first, missing_last) {
            let start = (first + lo as u64) * block_size;
            let stop = ((first + hi as u64 + 1) * block_size).min(self.size);
            let data = self
                .ctx
                .store
                .get_range(&self.key, start..stop, self.etag.as_deref())
                .await?;
            for (slot, index) in blocks[lo..=hi].iter_mut().zip(first + lo as u64..) {
                let from = ((index * block_size - start) as usize).min(data.len());
                let to = (from + block_size as usize).min(data.len());
                let block = data.slice(from..to);
                self.cache_block(index, block.clone());
                *slot = Some(block);
            }
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (index, block) in (first..=last).zip(blocks) {
            let block = block.expect("every block cached or fetched");
            let block_start = index * block_size;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            if from > to {
                return Err(FsError::Io("object shorter than its listed size".into()));
            }
            out.extend_from_slice(&block[from..to]);
        }
        Ok(out.freeze())
    }

    fn block_id(&self, index: u64) -> Option<BlockId> {
        self.etag.as_ref().map(|etag| BlockId {
            key: self.key.clone(),
            etag: etag.clone(),
            index,
        })
    }

    fn cached_block(&self, index: u64) -> Option<Bytes> {
        let id = self.block_id(index)?;
        let block = self.ctx.cache.get(&id);
        metrics().cache_lookup(Cache::Blocks, block.is_some());
        block
    }

    fn cache_block(&self, index: u64, data: Bytes) {
        if let Some(id) = self.block_id(index) {
            self.ctx.cache.insert(id, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn context<S: ObjectStore>(store: Arc<S>, budget: usize) -> ReadContext<S> {
        ReadContext {
            store,
            cache: Arc::new(BlockCache::new(1 << 20)),
            budget: Arc::new(Semaphore::new(budget)),
            readahead: Arc::new(Semaphore::new(budget)),
            tuning: ReadTuning {
                part_size: 64 << 10,
                initial_window: 16 << 10,
                max_window: 256 << 10,
                block_size: 8 << 10,
            },
            disk: None,
        }
    }

    async fn reader_for(
        data: &[u8],
        budget: usize,
    ) -> (
        Arc<FaultyStore<MemoryStore>>,
        FileReader<FaultyStore<MemoryStore>>,
    ) {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        store.inner().insert("obj", data.to_vec());
        let info = store.head("obj").await.unwrap();
        let reader = FileReader::new(
            context(store.clone(), budget),
            "obj".into(),
            info.etag,
            info.size,
        );
        (store, reader)
    }

    #[tokio::test]
    async fn sequential_reads_return_the_object_and_grow_the_window() {
        let data = pattern(3 << 20);
        let (store, mut reader) = reader_for(&data, 8 << 20).await;
        let mut got = Vec::new();
        let mut offset = 0u64;
        loop {
            let chunk = reader.read(offset, 128 << 10).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        assert_eq!(reader.window(), 256 << 10, "window grew to its maximum");
        // 3 MiB in parts of at most 64 KiB: far fewer GETs than 128 KiB reads would need if
        // each were fetched by blocks of 8 KiB.
        assert!(
            store.calls(Op::Get) <= (3 << 20) / (16 << 10),
            "{}",
            store.calls(Op::Get)
        );
    }

    #[tokio::test]
    async fn random_reads_use_aligned_cached_blocks() {
        let data = pattern(1 << 20);
        let (store, mut reader) = reader_for(&data, 8 << 20).await;
        for &(offset, len) in &[
            (500_000u64, 4096u32),
            (100_000, 100),
            (500_100, 10),
            (900_000, 20_000),
        ] {
            let got = reader.read(offset, len).await.unwrap();
            assert_eq!(
                &got[..],
                &data[offset as usize..offset as usize + len as usize]
            );
        }
        let gets = store.calls(Op::Get);
        // The third read falls in the block the first one cached.
        let again = reader.read(500_200, 100).await.unwrap();
        assert_eq!(&again[..], &data[500_200..500_300]);
        assert_eq!(store.calls(Op::Get), gets, "served from the block cache");
    }

    /// A store holding `data` as "obj" and a read context that stages on a temporary disk.
    async fn staging_setup(
        data: &[u8],
    ) -> (
        tempfile::TempDir,
        Arc<FaultyStore<MemoryStore>>,
        ReadContext<FaultyStore<MemoryStore>>,
        crate::store::ObjectInfo,
    ) {
        use crate::fs::disk_cache::{DiskCache, DiskCacheConfig};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        store.inner().insert("obj", data.to_vec());
        let info = store.head("obj").await.unwrap();
        let mut ctx = context(store.clone(), 8 << 20);
        ctx.disk = Some(DiskCache::new(DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 64 << 20,
            chunk_size: 256 << 10,
            concurrency: 4,
        }));
        (dir, store, ctx, info)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_readers_get_the_object_staged_on_disk() {
        let data = pattern(16 << 20);
        let (_dir, store, ctx, info) = staging_setup(&data).await;
        let check = |got: Bytes, offset: u64, len: usize| {
            assert_eq!(&got[..], &data[offset as usize..offset as usize + len]);
        };
        let mut reader = FileReader::new(ctx.clone(), "obj".into(), info.etag.clone(), info.size);
        for offset in [12_000_000u64, 1_000_000, 8_000_000] {
            check(reader.read(offset, 4096).await.unwrap(), offset, 4096);
        }
        assert!(reader.staged.is_none(), "a few random reads do not stage");
        assert!(
            reader.read_local(1_000_000, 4096).is_none(),
            "nothing local yet"
        );
        check(reader.read(4_000_000, 4096).await.unwrap(), 4_000_000, 4096);
        let staged = reader.staged.clone().expect("staging started");
        for _ in 0..500 {
            if staged.is_complete() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(staged.is_complete());
        let gets = store.calls(Op::Get);
        for offset in [7u64, 1_111_111, 16_000_000, 2_500_000] {
            check(reader.read(offset, 4096).await.unwrap(), offset, 4096);
            check(reader.read_local(offset, 4096).unwrap(), offset, 4096);
        }
        // Another open of the same version reads the staged copy from its first read.
        let mut again = FileReader::new(ctx, "obj".into(), info.etag, info.size);
        check(
            again.read(3_333_333, 100_000).await.unwrap(),
            3_333_333,
            100_000,
        );
        assert_eq!(store.calls(Op::Get), gets, "served from the staging file");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_the_disk_cache_declines_is_not_asked_for_again() {
        let data = pattern(40 << 20); // over half of the 64 MiB test cache
        let (_dir, _store, ctx, info) = staging_setup(&data).await;
        let mut reader = FileReader::new(ctx, "obj".into(), info.etag, info.size);
        for offset in [30_000_000u64, 1_000_000, 20_000_000, 5_000_000, 35_000_000] {
            let got = reader.read(offset, 4096).await.unwrap();
            assert_eq!(&got[..], &data[offset as usize..offset as usize + 4096]);
        }
        assert!(reader.staged.is_none());
        assert!(
            reader.staging_declined,
            "declined once, remembered for this open"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_is_never_staged_even_when_readahead_comes_out_of_order() {
        let data = pattern(8 << 20);
        let (_dir, _store, ctx, info) = staging_setup(&data).await;
        let mut reader = FileReader::new(ctx, "obj".into(), info.etag, info.size);
        // The kernel's first readahead requests, as concurrent FUSE requests may deliver them.
        let chunk = 128u64 << 10;
        let mut order: Vec<u64> = vec![3, 1, 6, 2, 0, 5, 4, 7];
        order.extend(8..(8 << 20) / chunk);
        for index in order {
            let offset = index * chunk;
            let got = reader.read(offset, chunk as u32).await.unwrap();
            assert_eq!(&got[..], &data[offset as usize..(offset + chunk) as usize]);
        }
        assert!(reader.staged.is_none(), "a sequential reader was staged");
    }

    #[tokio::test]
    async fn reads_past_the_end_are_short_or_empty() {
        let data = pattern(1000);
        let (_, mut reader) = reader_for(&data, 1 << 20).await;
        assert_eq!(reader.read(900, 4096).await.unwrap().len(), 100);
        assert!(reader.read(1000, 10).await.unwrap().is_empty());
        assert!(reader.read(5000, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_replaced_object_gives_stale_not_mixed_data() {
        let data = pattern(1 << 20);
        let (store, mut reader) = reader_for(&data, 8 << 20).await;
        reader.read(0, 4096).await.unwrap();
        store.inner().insert("obj", vec![1u8; 1 << 20]);
        let err = reader.read(800_000, 4096).await.unwrap_err();
        assert_eq!(err, FsError::Stale);
        assert_eq!(err.errno(), libc::ESTALE);
    }

    #[tokio::test]
    async fn store_failures_surface_as_errors_and_the_reader_recovers() {
        let data = pattern(256 << 10);
        let (store, mut reader) = reader_for(&data, 8 << 20).await;
        store.fail(Op::Get, StoreError::Transient("connection reset".into()), 1);
        let err = reader.read(0, 4096).await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        let got = reader.read(0, 4096).await.unwrap();
        assert_eq!(&got[..], &data[..4096]);
    }

    #[tokio::test]
    async fn a_tiny_budget_still_makes_progress() {
        let data = pattern(1 << 20);
        // Budget for exactly one small part at a time.
        let (_, mut reader) = reader_for(&data, 64 << 10).await;
        let mut offset = 0u64;
        while offset < data.len() as u64 {
            let chunk = reader.read(offset, 32 << 10).await.unwrap();
            assert_eq!(
                &chunk[..],
                &data[offset as usize..offset as usize + chunk.len()]
            );
            offset += chunk.len() as u64;
        }
    }
}

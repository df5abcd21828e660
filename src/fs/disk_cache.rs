//! Whole-object staging on local disk for random readers, bounded in bytes.
//!
//! A program that reads small blocks all over a large object (a database file, an archive
//! index, fio's random reads) pays a full S3 round trip for nearly every read, however well the
//! memory cache works, because the blocks it asks for are spread over far more data than memory
//! holds. After a few random reads of an open file, the reader asks for the object to be
//! *staged*: copied in the background, in large concurrent ranged GETs, into an unnamed
//! temporary file on local disk. Reads the staged chunks cover are then answered from that file;
//! the others keep going to S3 as before.
//!
//! Staged objects are keyed by key and ETag, so a replaced object is never served from an old
//! copy, and kept in LRU order within `--max-cache-size`: staging evicts objects no open file is
//! reading, and declines (the reader simply keeps using S3) when that does not make room. The
//! files are created unlinked (`O_TMPFILE`), so the disk space returns to the system when the
//! mount ends, even if it ends by a crash.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures::StreamExt;
use lru::LruCache;
use tokio::sync::Semaphore;

use crate::store::ObjectStore;

/// Disk cache settings, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCacheConfig {
    /// Directory the unnamed staging files are created in (`--cache-dir`).
    pub dir: PathBuf,
    /// Most bytes of staged objects held at once (`--max-cache-size`).
    pub max_bytes: u64,
    /// Size of each ranged GET that fills a staged object.
    pub chunk_size: u64,
    /// GETs in flight per object being staged.
    pub concurrency: usize,
}

/// Creates an unnamed file in `dir`: `O_TMPFILE` where the filesystem has it, else a named file
/// removed at once.
pub(crate) fn unnamed_file(dir: &Path) -> io::Result<File> {
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(file) => Ok(file),
        // EOPNOTSUPP: the filesystem lacks O_TMPFILE; EISDIR: the kernel does.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            named_then_removed(dir)
        }
        Err(e) => Err(e),
    }
}

/// A file created under a unique name and removed at once: unnamed from then on.
fn named_then_removed(dir: &Path) -> io::Result<File> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let name = dir.join(format!(
        ".bucketfs-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(file)
}

/// Checks that staging files can be created in `dir`, for a clear error before mounting.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "cache directory {} does not exist or is not a directory",
            dir.display()
        ));
    }
    unnamed_file(dir).map(drop).map_err(|e| {
        format!(
            "cannot create files in cache directory {}: {e}",
            dir.display()
        )
    })
}

/// Bytes a user may still write on the filesystem holding `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ObjectId {
    key: String,
    etag: String,
}

/// One object being staged or staged: an unnamed file and which chunks of it hold data.
pub struct StagedObject {
    file: File,
    size: u64,
    chunk_size: u64,
    filled: Vec<AtomicBool>,
    failed: AtomicBool,
}

impl StagedObject {
    fn chunks(&self, range: std::ops::Range<u64>) -> std::ops::RangeInclusive<usize> {
        let first = (range.start / self.chunk_size) as usize;
        let last = ((range.end - 1) / self.chunk_size) as usize;
        first..=last
    }

    /// The bytes of `range` when every chunk they fall in is on disk; `None` otherwise (the
    /// caller reads from S3).
    pub fn read(&self, range: std::ops::Range<u64>) -> Option<io::Result<Bytes>> {
        let range = range.start..range.end.min(self.size);
        if range.is_empty() {
            return Some(Ok(Bytes::new()));
        }
        if !self
            .chunks(range.clone())
            .all(|i| self.filled[i].load(Ordering::Acquire))
        {
            return None;
        }
        // A blocking pread on a worker thread: it reads a local file the page cache usually
        // holds, far below the cost of handing it to another thread.
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        Some(
            self.file
                .read_exact_at(&mut buf, range.start)
                .map(|()| Bytes::from(buf)),
        )
    }

    pub fn is_complete(&self) -> bool {
        self.filled.iter().all(|f| f.load(Ordering::Acquire))
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

struct Index {
    objects: LruCache<ObjectId, Arc<StagedObject>>,
    reserved: u64,
}

pub struct DiskCache {
    config: DiskCacheConfig,
    index: Mutex<Index>,
}

impl DiskCache {
    pub fn new(config: DiskCacheConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            index: Mutex::new(Index {
                objects: LruCache::unbounded(),
                reserved: 0,
            }),
        })
    }

    /// Bytes reserved by staged objects (each counts its full size from the moment staging
    /// starts).
    pub fn reserved_bytes(&self) -> u64 {
        self.index.lock().expect("disk cache lock").reserved
    }

    /// The staged copy of this version of the object, if there is one.
    pub fn get(&self, key: &str, etag: &str) -> Option<Arc<StagedObject>> {
        let id = ObjectId {
            key: key.to_string(),
            etag: etag.to_string(),
        };
        let mut index = self.index.lock().expect("disk cache lock");
        index.objects.get(&id).cloned()
    }

    /// Starts staging this version of the object (or returns the copy already staged or being
    /// staged). `None` when it does not fit: larger than half the cache, no room after evicting
    /// every object no open file uses, or too little free disk.
    pub fn stage<S: ObjectStore>(
        self: &Arc<Self>,
        store: Arc<S>,
        budget: Arc<Semaphore>,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Option<Arc<StagedObject>> {
        if size == 0 || size > self.config.max_bytes / 2 {
            return None;
        }
        let id = ObjectId {
            key: key.to_string(),
            etag: etag.to_string(),
        };
        if let Some(existing) = self.get(key, etag).filter(|s| !s.has_failed()) {
            return Some(existing);
        }
        // File-system calls stay outside the index lock, which every open takes. The free-space
        // check comes before eviction, so it errs on the side of not staging.
        if available_bytes(&self.config.dir).is_some_and(|free| free < size) {
            tracing::warn!(key, size, dir = %self.config.dir.display(),
                "not staged: too little free disk in the cache directory");
            return None;
        }
        let file = match unnamed_file(&self.config.dir) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(dir = %self.config.dir.display(), "not staged: {e}");
                return None;
            }
        };
        let chunk_size = self.config.chunk_size.max(1);
        let chunks = size.div_ceil(chunk_size) as usize;
        let staged = Arc::new(StagedObject {
            file,
            size,
            chunk_size,
            filled: (0..chunks).map(|_| AtomicBool::new(false)).collect(),
            failed: AtomicBool::new(false),
        });
        {
            let mut index = self.index.lock().expect("disk cache lock");
            if let Some(existing) = index.objects.get(&id) {
                if !existing.has_failed() {
                    return Some(existing.clone()); // staged by another reader meanwhile
                }
                if let Some(failed) = index.objects.pop(&id) {
                    index.reserved -= failed.size;
                }
            }
            if !self.make_room(&mut index, size) {
                tracing::debug!(
                    key,
                    size,
                    "not staged: the disk cache is full of open files"
                );
                return None;
            }
            index.reserved += size;
            index.objects.put(id.clone(), staged.clone());
        }
        tracing::debug!(key, size, "staging on local disk for random reads");
        let filler = Filler {
            cache: Arc::downgrade(self),
            staged: Arc::downgrade(&staged),
            id,
            concurrency: self.config.concurrency.max(1),
        };
        tokio::spawn(filler.run(store, budget));
        Some(staged)
    }

    /// An unnamed file for the changed bytes of a file being written (see `fs::patch`).
    pub fn scratch_file(&self) -> io::Result<File> {
        unnamed_file(&self.config.dir)
    }

    /// Reserves `bytes` of the cache for changed bytes of files being written, evicting staged
    /// objects no open file reads. False when they do not fit (the caller answers ENOSPC).
    pub fn reserve(&self, bytes: u64) -> bool {
        let mut index = self.index.lock().expect("disk cache lock");
        if !self.make_room(&mut index, bytes) {
            return false;
        }
        index.reserved += bytes;
        true
    }

    /// Gives back what `reserve` took.
    pub fn release(&self, bytes: u64) {
        let mut index = self.index.lock().expect("disk cache lock");
        index.reserved = index.reserved.saturating_sub(bytes);
    }

    /// Evicts least recently used objects that no open file holds until `size` more bytes fit.
    fn make_room(&self, index: &mut Index, size: u64) -> bool {
        let mut unused: Vec<ObjectId> = index
            .objects
            .iter()
            .rev() // least recently used first
            .filter(|(_, staged)| Arc::strong_count(staged) == 1)
            .map(|(id, _)| id.clone())
            .collect();
        unused.reverse();
        while index.reserved + size > self.config.max_bytes {
            let Some(id) = unused.pop() else {
                return false;
            };
            if let Some(evicted) = index.objects.pop(&id) {
                index.reserved -= evicted.size;
            }
        }
        true
    }

    fn forget_failed(&self, id: &ObjectId) {
        let mut index = self.index.lock().expect("disk cache lock");
        if index.objects.peek(id).is_some_and(|s| s.has_failed()) {
            if let Some(failed) = index.objects.pop(id) {
                index.reserved -= failed.size;
            }
        }
    }
}

/// The background copy of one object into its staging file. Holds only weak references: an
/// object evicted (or a mount ended) stops being filled.
struct Filler {
    cache: Weak<DiskCache>,
    staged: Weak<StagedObject>,
    id: ObjectId,
    concurrency: usize,
}

impl Filler {
    async fn run<S: ObjectStore>(self, store: Arc<S>, budget: Arc<Semaphore>) {
        let Some(staged) = self.staged.upgrade() else {
            return;
        };
        let chunk_size = staged.chunk_size;
        let size = staged.size;
        let chunks = staged.filled.len();
        drop(staged);
        let results = futures::stream::iter(0..chunks)
            .map(|i| {
                let store = store.clone();
                let budget = budget.clone();
                let staged = self.staged.clone();
                let id = self.id.clone();
                async move {
                    let range = i as u64 * chunk_size..((i as u64 + 1) * chunk_size).min(size);
                    fill_chunk(store, budget, staged, id, i, range).await
                }
            })
            .buffer_unordered(self.concurrency);
        futures::pin_mut!(results);
        while let Some(result) = results.next().await {
            match result {
                Ok(true) => {}
                Ok(false) => return, // evicted
                Err(message) => {
                    tracing::warn!(key = %self.id.key, "staging stopped: {message}");
                    if let Some(staged) = self.staged.upgrade() {
                        staged.failed.store(true, Ordering::Release);
                    }
                    if let Some(cache) = self.cache.upgrade() {
                        cache.forget_failed(&self.id);
                    }
                    return;
                }
            }
        }
        tracing::info!(key = %self.id.key, size, "staged on local disk");
    }
}

/// How long a staging chunk waits for memory budget before staging gives up.
const STAGING_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Fetches one chunk and writes it to the staging file. `Ok(false)` when the object was evicted
/// meanwhile.
async fn fill_chunk<S: ObjectStore>(
    store: Arc<S>,
    budget: Arc<Semaphore>,
    staged: Weak<StagedObject>,
    id: ObjectId,
    index: usize,
    range: std::ops::Range<u64>,
) -> Result<bool, String> {
    if staged.strong_count() == 0 {
        return Ok(false);
    }
    let permits = (range.end - range.start).min(u32::MAX as u64) as u32;
    // Bounded: files being written may hold the budget for as long as their programs pause.
    // Staging is an optimisation; without budget it stops, and reads go to S3.
    let _permit = tokio::time::timeout(STAGING_BUDGET_WAIT, budget.acquire_many_owned(permits))
        .await
        .map_err(|_| "no memory budget for staging within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let data = store
        .get_range(&id.key, range.clone(), Some(&id.etag))
        .await
        .map_err(|e| e.to_string())?;
    if data.len() as u64 != range.end - range.start {
        return Err(format!(
            "got {} bytes for a chunk of {}",
            data.len(),
            range.end - range.start
        ));
    }
    let Some(object) = staged.upgrade() else {
        return Ok(false);
    };
    tokio::task::spawn_blocking(move || {
        object.file.write_all_at(&data, range.start)?;
        object.filled[index].store(true, Ordering::Release);
        Ok::<_, io::Error>(())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("writing the staging file: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    fn cache(dir: &Path, max_bytes: u64) -> Arc<DiskCache> {
        DiskCache::new(DiskCacheConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            chunk_size: 64 << 10,
            concurrency: 4,
        })
    }

    async fn store_with(objects: &[(&str, usize)]) -> (Arc<FaultyStore<MemoryStore>>, Vec<String>) {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let mut etags = Vec::new();
        for &(key, len) in objects {
            store.inner().insert(key, pattern(len));
            etags.push(store.head(key).await.unwrap().etag.unwrap());
        }
        (store, etags)
    }

    async fn wait_complete(staged: &StagedObject) {
        for _ in 0..500 {
            if staged.is_complete() || staged.has_failed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("staging did not finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_staged_object_serves_any_range_without_requests() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(1_000_000);
        let (store, etags) = store_with(&[("obj", data.len())]).await;
        let cache = cache(dir.path(), 8 << 20);
        let budget = Arc::new(Semaphore::new(1 << 20));
        let staged = cache
            .stage(store.clone(), budget, "obj", &etags[0], data.len() as u64)
            .unwrap();
        wait_complete(&staged).await;
        assert!(staged.is_complete());
        let gets = store.calls(Op::Get);
        for (start, end) in [
            (0u64, 10u64),
            (65_530, 65_600),
            (999_000, 1_000_000),
            (5, 900_000),
        ] {
            let got = staged.read(start..end).unwrap().unwrap();
            assert_eq!(&got[..], &data[start as usize..end as usize]);
        }
        assert_eq!(
            store.calls(Op::Get),
            gets,
            "reads came from the staging file"
        );
        assert!(cache.get("obj", &etags[0]).is_some());
        assert!(cache.get("obj", "other-etag").is_none(), "keyed by version");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "staging files have no name"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bound_evicts_unused_objects_and_never_open_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (store, etags) = store_with(&[("a", 300_000), ("b", 300_000), ("c", 300_000)]).await;
        let cache = cache(dir.path(), 700_000);
        let budget = Arc::new(Semaphore::new(1 << 20));
        let a = cache
            .stage(store.clone(), budget.clone(), "a", &etags[0], 300_000)
            .unwrap();
        let b = cache
            .stage(store.clone(), budget.clone(), "b", &etags[1], 300_000)
            .unwrap();
        wait_complete(&a).await;
        wait_complete(&b).await;
        // Both still held by readers: no room for c.
        assert!(cache
            .stage(store.clone(), budget.clone(), "c", &etags[2], 300_000)
            .is_none());
        assert_eq!(cache.reserved_bytes(), 600_000);
        // a's reader closes: a is evicted to make room.
        drop(a);
        let c = cache
            .stage(store.clone(), budget.clone(), "c", &etags[2], 300_000)
            .unwrap();
        wait_complete(&c).await;
        assert!(cache.get("a", &etags[0]).is_none());
        assert!(cache.get("b", &etags[1]).is_some());
        assert_eq!(cache.reserved_bytes(), 600_000);
        // Larger than half the cache: never staged.
        assert!(cache
            .stage(store.clone(), budget, "a", &etags[0], 400_000)
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fill_serves_nothing_unfilled_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(500_000);
        let (store, etags) = store_with(&[("obj", data.len())]).await;
        let cache = cache(dir.path(), 8 << 20);
        let budget = Arc::new(Semaphore::new(1 << 20));
        store.fail(Op::Get, StoreError::Transient("connection reset".into()), 1);
        let staged = cache
            .stage(store.clone(), budget.clone(), "obj", &etags[0], 500_000)
            .unwrap();
        wait_complete(&staged).await;
        assert!(staged.has_failed());
        assert!(!staged.is_complete());
        // Whatever did not arrive is not served from the file.
        let unfilled = (0..staged.filled.len())
            .find(|&i| !staged.filled[i].load(Ordering::Acquire))
            .unwrap() as u64;
        assert!(staged
            .read(unfilled * (64 << 10)..unfilled * (64 << 10) + 10)
            .is_none());
        assert_eq!(
            cache.reserved_bytes(),
            0,
            "a failed copy gives its room back"
        );
        let again = cache
            .stage(store, budget, "obj", &etags[0], 500_000)
            .unwrap();
        wait_complete(&again).await;
        assert!(again.is_complete());
        assert_eq!(&again.read(0..500_000).unwrap().unwrap()[..], &data[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_object_stops_staging() {
        let dir = tempfile::tempdir().unwrap();
        let (store, etags) = store_with(&[("obj", 2 << 20)]).await;
        let cache = cache(dir.path(), 64 << 20);
        store.inner().insert("obj", vec![9u8; 2 << 20]);
        let staged = cache
            .stage(
                store,
                Arc::new(Semaphore::new(1 << 20)),
                "obj",
                &etags[0],
                2 << 20,
            )
            .unwrap();
        wait_complete(&staged).await;
        assert!(
            staged.has_failed(),
            "If-Match pinned every chunk to the old ETag"
        );
        assert!(staged.read(0..10).is_none());
    }

    #[test]
    fn the_fallback_file_is_usable_and_leaves_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = named_then_removed(dir.path()).unwrap();
        file.write_all_at(b"staged", 4096).unwrap();
        let mut buf = [0u8; 6];
        file.read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"staged");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn check_dir_reports_a_missing_directory() {
        let err = check_dir(Path::new("/nonexistent/bucketfs-cache")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        check_dir(dir.path()).unwrap();
    }
}

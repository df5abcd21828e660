//! Caches: negative lookups (bounded by count, with TTL) and data blocks (bounded by bytes).
//! Positive metadata lives with the inodes (see `inode.rs`), refreshed after the TTL.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;

/// Remembers names that did not exist, so repeated lookups (shell PATH searches, editors probing
/// for swap files) do not each cost a HEAD and a LIST.
pub struct NegativeCache {
    ttl: Duration,
    entries: Mutex<LruCache<(u64, String), Instant>>,
}

impl NegativeCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
        }
    }

    pub fn insert(&self, parent: u64, name: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let expires = Instant::now() + self.ttl;
        self.entries
            .lock()
            .unwrap()
            .put((parent, name.to_string()), expires);
    }

    /// True when `name` in `parent` is known not to exist.
    pub fn contains(&self, parent: u64, name: &str) -> bool {
        let mut entries = self.entries.lock().unwrap();
        let key = (parent, name.to_string());
        match entries.get(&key) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                entries.pop(&key);
                false
            }
            None => false,
        }
    }

    pub fn remove(&self, parent: u64, name: &str) {
        self.entries
            .lock()
            .unwrap()
            .pop(&(parent, name.to_string()));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Largest directory whose complete list of names is kept (one listing page).
pub const SNAPSHOT_MAX_NAMES: usize = 1000;

/// The complete set of names of small directories (made by this mount, or fully listed), so a
/// lookup of a name that is not there is answered with no request while the set is fresh. This
/// is what makes creating files fast: the kernel holds the directory locked across the lookup
/// that precedes every `O_CREAT`, so that lookup's round trip would serialize all creators.
///
/// A listing runs while the mount changes names; a listing that started before a change must
/// not overwrite what the change recorded. So every change bumps an epoch, and a listing's
/// names are only kept when no change happened since it started (`epoch` before, `set` after).
pub struct DirSnapshots {
    ttl: Duration,
    entries: Mutex<LruCache<u64, (Instant, SnapshotNames)>>,
    epoch: std::sync::atomic::AtomicU64,
}

/// What a listing showed a name to be: an object and nothing below it, or a prefix (a
/// directory, whether or not an object of the same name exists too). A lookup of a name
/// known this way asks only what the attributes need: a HEAD of the object, or of the
/// directory's marker, never the LIST that tells a file from a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    File,
    Dir,
}

/// The names of a directory with what each was listed as; `None` for a name this mount added
/// (its kind is asked again).
pub type SnapshotNames = HashMap<String, Option<ListedKind>>;

/// What a snapshot says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAnswer {
    Absent,
    Present(Option<ListedKind>),
    /// No snapshot of that directory.
    Unknown,
    /// A snapshot exists but is older than the TTL: re-list to renew it.
    Stale,
}

impl DirSnapshots {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            epoch: Default::default(),
        }
    }

    /// The current epoch: take it before listing, pass it to `set`.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records the complete names of `dir` as listed from `epoch` on (ignored when a change
    /// happened since, when too many, or with a TTL of 0).
    pub fn set(&self, dir: u64, names: SnapshotNames, epoch: u64) {
        let mut entries = self.entries.lock().unwrap();
        if self.epoch() != epoch {
            return;
        }
        if self.ttl.is_zero() || names.len() > SNAPSHOT_MAX_NAMES {
            entries.pop(&dir);
            return;
        }
        entries.put(dir, (Instant::now() + self.ttl, names));
    }

    pub fn answer(&self, dir: u64, name: &str) -> SnapshotAnswer {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(&dir) {
            None => SnapshotAnswer::Unknown,
            Some((expires, _)) if *expires <= Instant::now() => SnapshotAnswer::Stale,
            Some((_, names)) => match names.get(name) {
                Some(kind) => SnapshotAnswer::Present(*kind),
                None => SnapshotAnswer::Absent,
            },
        }
    }

    /// `dir` has a snapshot, and it has expired (its names were known, and few).
    pub fn is_stale(&self, dir: u64) -> bool {
        let mut entries = self.entries.lock().unwrap();
        entries
            .get(&dir)
            .is_some_and(|(expires, _)| *expires <= Instant::now())
    }

    /// This mount added `name` to `dir`.
    pub fn add(&self, dir: u64, name: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.changed();
        if let Some((_, names)) = entries.get_mut(&dir) {
            names.insert(name.to_string(), None);
            if names.len() > SNAPSHOT_MAX_NAMES {
                entries.pop(&dir);
            }
        }
    }

    /// This mount removed `name` from `dir`.
    pub fn remove(&self, dir: u64, name: &str) {
        let mut entries = self.entries.lock().unwrap();
        self.changed();
        if let Some((_, names)) = entries.get_mut(&dir) {
            names.remove(name);
        }
    }

    pub fn forget(&self, dir: u64) {
        let mut entries = self.entries.lock().unwrap();
        self.changed();
        entries.pop(&dir);
    }
}

/// Identifies one aligned block of one version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub key: String,
    pub etag: String,
    pub index: u64,
}

struct BlockCacheState {
    blocks: LruCache<BlockId, Bytes>,
    bytes: usize,
}

/// LRU cache of data blocks for random reads, bounded in bytes.
pub struct BlockCache {
    capacity_bytes: usize,
    state: Mutex<BlockCacheState>,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            state: Mutex::new(BlockCacheState {
                blocks: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.state.lock().unwrap().blocks.get(id).cloned()
    }

    pub fn insert(&self, id: BlockId, data: Bytes) {
        if data.len() > self.capacity_bytes {
            return;
        }
        let mut state = self.state.lock().unwrap();
        let added = data.len();
        if let Some(old) = state.blocks.put(id, data) {
            state.bytes -= old.len();
        }
        state.bytes += added;
        while state.bytes > self.capacity_bytes {
            match state.blocks.pop_lru() {
                Some((_, evicted)) => state.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.state.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(index: u64) -> BlockId {
        BlockId {
            key: "k".into(),
            etag: "e".into(),
            index,
        }
    }

    #[test]
    fn block_cache_evicts_least_recent_by_bytes() {
        let cache = BlockCache::new(300);
        cache.insert(block(0), Bytes::from(vec![0u8; 100]));
        cache.insert(block(1), Bytes::from(vec![1u8; 100]));
        cache.insert(block(2), Bytes::from(vec![2u8; 100]));
        assert!(cache.get(&block(0)).is_some()); // 0 is now most recent
        cache.insert(block(3), Bytes::from(vec![3u8; 100]));
        assert_eq!(cache.bytes(), 300);
        assert!(
            cache.get(&block(1)).is_none(),
            "least recently used goes first"
        );
        assert!(cache.get(&block(0)).is_some());
        assert!(cache.get(&block(3)).is_some());
        cache.insert(block(4), Bytes::from(vec![4u8; 1000]));
        assert!(
            cache.get(&block(4)).is_none(),
            "larger than the cache: not kept"
        );
        assert!(cache.bytes() <= 300);
    }

    #[test]
    fn directory_snapshots_answer_until_stale() {
        let snapshots = DirSnapshots::new(10, Duration::from_millis(50));
        assert_eq!(snapshots.answer(7, "a"), SnapshotAnswer::Unknown);
        let listed = SnapshotNames::from([
            ("a".to_string(), Some(ListedKind::File)),
            ("sub".to_string(), Some(ListedKind::Dir)),
        ]);
        snapshots.set(7, listed, snapshots.epoch());
        assert_eq!(
            snapshots.answer(7, "a"),
            SnapshotAnswer::Present(Some(ListedKind::File))
        );
        assert_eq!(
            snapshots.answer(7, "sub"),
            SnapshotAnswer::Present(Some(ListedKind::Dir))
        );
        assert_eq!(snapshots.answer(7, "b"), SnapshotAnswer::Absent);
        snapshots.add(7, "b");
        snapshots.remove(7, "a");
        assert_eq!(
            snapshots.answer(7, "b"),
            SnapshotAnswer::Present(None),
            "added here: its kind is asked again"
        );
        assert_eq!(snapshots.answer(7, "a"), SnapshotAnswer::Absent);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(snapshots.answer(7, "b"), SnapshotAnswer::Stale);
        let big: SnapshotNames = (0..=SNAPSHOT_MAX_NAMES)
            .map(|i| (i.to_string(), None))
            .collect();
        snapshots.set(8, big, snapshots.epoch());
        assert_eq!(
            snapshots.answer(8, "x"),
            SnapshotAnswer::Unknown,
            "too large to keep"
        );
    }

    #[test]
    fn negative_entries_expire_and_are_bounded() {
        let cache = NegativeCache::new(2, Duration::from_millis(50));
        cache.insert(1, "a");
        cache.insert(1, "b");
        cache.insert(1, "c");
        assert_eq!(cache.len(), 2);
        assert!(!cache.contains(1, "a"), "evicted by count");
        assert!(cache.contains(1, "c"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(1, "c"), "expired");
        let disabled = NegativeCache::new(10, Duration::ZERO);
        disabled.insert(1, "a");
        assert!(!disabled.contains(1, "a"));
    }
}

//! Caches: negative lookups (bounded by count, with TTL) and data blocks (bounded by bytes).
//! Positive metadata lives with the inodes (see `inode.rs`), refreshed after the TTL.

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

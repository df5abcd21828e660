//! Filesystem semantics over an [`ObjectStore`], with no FUSE and no SDK types: every operation
//! here is testable against the in-memory store and runs unchanged on S3.

pub mod attrs;
pub mod cache;
mod claims;
pub mod copy;
pub mod dir;
pub mod disk_cache;
pub mod error;
pub mod inode;
pub mod journal;
mod listing;
mod lookup;
pub mod names;
pub mod namespace;
pub mod owner;
pub mod parts;
pub mod patch;
pub mod read;
pub mod special;
pub mod write;
pub mod xattr;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::{metrics, Cache};
use crate::store::{ObjectInfo, ObjectStore, PutOptions, StoreError};
use attrs::{AttrDefaults, Attributes, Kind};
use cache::{
    BlockCache, DirSnapshots, ListedKind, NegativeCache, SnapshotAnswer, SNAPSHOT_MAX_NAMES,
};
use dir::{DirListing, ListingMemory};
use disk_cache::{DiskCache, DiskCacheConfig};
use error::{FsError, FsResult};
use inode::InodeTable;
#[cfg(test)]
use inode::ROOT_INO;
use journal::UploadJournal;
use names::{child_key, validate_component};
use owner::Holder;
use read::{FileReader, ReadContext, ReadTuning};
use write::FileWriter;

/// Tries of one lookup whose answer a change in its directory overtook (see `lookup_attempt`).
const LOOKUP_ATTEMPTS: usize = 4;

/// HEADs in flight at once when `stat_metadata` fills in listed files' attributes.
const STAT_METADATA_CONCURRENCY: usize = 32;

/// Directories with at most this many entries have each unknown entry HEADed when listed, so
/// `ls -l` shows symlinks, modes and owners at once (see `Fs::settle_listed_attrs`).
const SMALL_DIR_ENTRIES: usize = 256;

/// Everything the filesystem layer needs to know, resolved from the command line.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix the mount is confined to: `""` or ending in `/`.
    pub prefix: String,
    pub defaults: AttrDefaults,
    /// How long metadata is trusted before asking the store again (`0`: always ask).
    pub metadata_ttl: Duration,
    pub negative_cache_entries: usize,
    pub read_only: bool,
    pub tuning: ReadTuning,
    /// One budget for prefetch buffers, write buffers and cached blocks, in bytes.
    pub max_memory: u64,
    /// First part size of multipart uploads (grows past 1,000 parts).
    pub write_part_size: u64,
    /// Content type for every new object; `None` guesses from the file extension.
    pub content_type: Option<String>,
    /// Storage class, encryption and ACL applied to every object written.
    pub upload: PutOptions,
    /// HEAD each listed file once so `ls -l`/`stat` show its POSIX metadata (s3fs-style
    /// headers) instead of the defaults; off keeps listings HEAD-free.
    pub stat_metadata: bool,
    /// Other users can enter the mount (`--allow-other`, `--allow-root`): the kernel decides
    /// their permissions on the attributes it is given, so no listed entry reaches it with
    /// attributes that were not read from its object (see `settle_listed_attrs`).
    pub shared: bool,
    /// Local disk staging for random readers (`--cache-dir`, `--max-cache-size`).
    pub disk_cache: Option<DiskCacheConfig>,
    /// The bucket, for the `bucketfs.uri` attribute.
    pub bucket_name: String,
    /// How long a presigned URL (`bucketfs.presigned_url`) is valid.
    pub presign_expiry: Duration,
    /// Extended attributes (`--xattr`): `user.*` and the read-only `bucketfs.*`. Off, the
    /// FUSE adapter answers ENOSYS and the kernel stops asking: `ls -l` asks every file for its
    /// ACLs, which would cost a round trip per file (and listing `user.*` a HEAD).
    pub user_xattrs: bool,
    /// A mount of every bucket (see `store::buckets`): the root holds only buckets, so files,
    /// symlinks and renames there are EPERM; mkdir and rmdir there create and delete buckets.
    pub buckets_at_root: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            defaults: AttrDefaults::default(),
            metadata_ttl: Duration::from_secs(1),
            negative_cache_entries: 10_000,
            read_only: false,
            tuning: ReadTuning::default(),
            max_memory: 512 << 20,
            write_part_size: 8 << 20,
            content_type: None,
            upload: PutOptions::default(),
            stat_metadata: false,
            shared: false,
            disk_cache: None,
            bucket_name: "bucket".to_string(),
            presign_expiry: Duration::from_secs(3600),
            user_xattrs: false,
            buckets_at_root: false,
        }
    }
}

impl FsConfig {
    /// The block cache gets a quarter of the memory budget, sequential read-ahead a quarter,
    /// recycled receive buffers an eighth, and write buffers and staging transfers the rest.
    pub fn block_cache_bytes(&self) -> u64 {
        self.max_memory / 4
    }

    /// Read-ahead of every sequential stream together. Its own share, so that many readers
    /// do not each prefetch a full window: on a CPU-bound host, data that waits long in memory
    /// is cold when the kernel copies it out (4 readers of 1 GiB on Garage: 0.63-0.81 of the
    /// raw GET rate with 320 MiB of shared read-ahead, 0.82-0.93 with 80-160 MiB).
    pub fn readahead_bytes(&self) -> u64 {
        self.max_memory / 4
    }

    /// Received GET bodies kept mapped for reuse by the store (see `store::buffers`).
    pub fn receive_pool_bytes(&self) -> u64 {
        self.max_memory / 8
    }

    /// Most bytes all writers hold outside the memory budget together (the first MiB of each
    /// file, parts filled over budget): a quarter of `--max-memory`, from 16 to 32 MiB (part
    /// of the README's 80 MiB beyond `--max-memory`).
    pub fn write_overdraft(&self) -> usize {
        (self.max_memory / 4).clamp(16 << 20, 32 << 20) as usize
    }

    /// Most bytes of read and write data all FUSE requests being served hold together (each
    /// at most 1 MiB): an eighth of `--max-memory`, from 16 to 32 MiB (part of the README's
    /// 80 MiB beyond `--max-memory`). Past it the FUSE thread waits for requests in flight to
    /// finish before it takes more, so the kernel holds the rest.
    pub fn request_bytes(&self) -> usize {
        (self.max_memory / 8).clamp(16 << 20, 32 << 20) as usize
    }

    /// Most bytes the listings of open directory handles hold together before idle ones are
    /// dropped (to be listed again if read on): an eighth of `--max-memory`, from 4 to 16 MiB
    /// (part of the README's 80 MiB beyond `--max-memory`).
    pub fn listing_memory(&self) -> usize {
        (self.max_memory / 8).clamp(4 << 20, 16 << 20) as usize
    }

    pub fn buffer_bytes(&self) -> u64 {
        self.max_memory
            - self.block_cache_bytes()
            - self.readahead_bytes()
            - self.receive_pool_bytes()
    }
}

/// An entry as returned to the kernel: its inode number and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub attrs: Attributes,
}

/// One item of a readdir answer. `offset` is the cookie the kernel passes back to continue
/// after this item; `counted` says whether the kernel now holds a lookup reference on `ino`.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub offset: u64,
    pub name: String,
    pub entry: Entry,
    pub counted: bool,
    /// False for an entry of a small directory whose own metadata is unknown (only listed):
    /// the kernel must not cache its attributes, so its next use looks it up (a HEAD tells
    /// whether it is a symlink, its mode, owner and times).
    pub verified: bool,
}

/// Filesystem-wide numbers for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub blocks: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max: u32,
}

struct DirHandle {
    ino: u64,
    listing: DirListing,
    /// The snapshot epoch when this listing (re)started (see `DirSnapshots`).
    epoch: u64,
    /// The inode table's stamp then: attributes this mount set since are newer than any page
    /// of this listing, and kept.
    stamp: u64,
    /// The listing's names were given to the directory's snapshot (once it ended).
    snapshot_given: bool,
}

type Shared<T> = Arc<tokio::sync::Mutex<T>>;

enum FileHandle<S> {
    Read(Shared<FileReader<S>>),
    Write(Shared<FileWriter<S>>),
}

impl<S> Clone for FileHandle<S> {
    fn clone(&self) -> Self {
        match self {
            FileHandle::Read(r) => FileHandle::Read(r.clone()),
            FileHandle::Write(w) => FileHandle::Write(w.clone()),
        }
    }
}

/// The writer of one file open for writing, owned by its inode and shared with its handle.
pub(crate) type SharedWriter<S> = Shared<FileWriter<S>>;

/// The filesystem.
///
/// # Lock hierarchy
///
/// Locks are taken only in this order, and a lock of one level is never taken while one of the
/// same or a later level is held:
///
/// 0. Key claims (`owner`, see `owner.rs` for the rule): taken all at once, never while
///    holding anything else, held across the S3 requests that change the claimed keys.
/// 1. Per-file and per-handle async locks (`tokio::sync::Mutex`): a file's writer, a read
///    handle's reader, a directory handle. They may be held across `.await` and network calls.
///    At most one of them at a time, except a rename of a file onto a file, which holds both
///    files' writers, always taken in ascending inode order (so two renames cannot deadlock).
///    A writer may wait for the memory budget while holding its own lock: that wait is bounded
///    (see `FileWriter::hold_part_budget`).
/// 2. `inodes` (std mutex): the inode table and everything an inode owns (its writer, whether
///    it is pending). Never held across an `.await`, a network call or a file-system call.
/// 3. Leaf std mutexes, taken alone or under `inodes` (or under a level-1 lock) and never
///    around anything else: `files`, `dirs`, the negative cache, the directory snapshots, the
///    block cache, the upload journal, the disk cache's index (taken by a writer's scratch
///    file while it holds its writer's lock).
///
/// `try_lock` of a level-1 lock never waits, so it is allowed anywhere.
pub struct Fs<S> {
    store: Arc<S>,
    config: FsConfig,
    /// Level 0: who is changing which key in S3 now.
    owner: owner::KeyOwner,
    /// Level 2: inodes, and the open-for-writing state each one owns.
    inodes: Mutex<InodeTable<tokio::sync::Mutex<FileWriter<S>>>>,
    negative: NegativeCache,
    snapshots: DirSnapshots,
    read_ctx: ReadContext<S>,
    /// Level 3: open file handles -> (inode, reader or the inode's writer).
    files: Mutex<HashMap<u64, (u64, FileHandle<S>)>>,
    /// Level 3: open directory handles.
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    /// What the listings of open directory handles hold, all together (see `dir`).
    listing_memory: Arc<ListingMemory>,
    /// Memory writers may hold outside the budget, all together (see
    /// `FileWriter::with_overdraft`).
    write_overdraft: Arc<tokio::sync::Semaphore>,
    journal: Option<Arc<UploadJournal>>,
    /// Set at SIGTERM/SIGINT: every change is refused from then on (EROFS).
    shutting_down: std::sync::atomic::AtomicBool,
    next_handle: AtomicU64,
    mount_time: SystemTime,
}

impl<S: ObjectStore> Fs<S> {
    pub fn new(store: Arc<S>, config: FsConfig) -> Self {
        let listing_memory = ListingMemory::new(config.listing_memory());
        let write_overdraft = Arc::new(tokio::sync::Semaphore::new(config.write_overdraft()));
        let mount_time = SystemTime::now();
        let root_attrs = Attributes::directory(mount_time, &config.defaults);
        let read_ctx = ReadContext {
            store: store.clone(),
            cache: Arc::new(BlockCache::new(config.block_cache_bytes() as usize)),
            budget: Arc::new(Semaphore::new(config.buffer_bytes() as usize)),
            readahead: Arc::new(Semaphore::new(config.readahead_bytes() as usize)),
            tuning: config.tuning,
            disk: config.disk_cache.clone().map(DiskCache::new),
        };
        Self {
            negative: NegativeCache::new(config.negative_cache_entries, config.metadata_ttl),
            snapshots: DirSnapshots::new(1024, config.metadata_ttl),
            inodes: Mutex::new(InodeTable::new(config.prefix.clone(), root_attrs)),
            owner: Default::default(),
            store,
            config,
            read_ctx,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            listing_memory,
            write_overdraft,
            journal: None,
            shutting_down: Default::default(),
            next_handle: AtomicU64::new(1),
            mount_time,
        }
    }

    /// Records every multipart upload in `journal` while it is in flight.
    pub fn with_journal(mut self, journal: Arc<UploadJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// How long the kernel may cache entries and attributes we return.
    pub fn ttl(&self) -> Duration {
        self.config.metadata_ttl
    }

    fn expiry(&self) -> Instant {
        Instant::now() + self.config.metadata_ttl
    }

    fn dir_key(&self, ino: u64) -> FsResult<String> {
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
        match inode.kind() {
            Kind::Dir => Ok(inode.key.clone()),
            _ => Err(FsError::NotDir),
        }
    }

    /// Memory, disk and uploads in use now, for the metrics.
    pub fn usage(&self) -> crate::metrics::Usage {
        let taken = |semaphore: &Semaphore, size: u64| {
            size.saturating_sub(semaphore.available_permits() as u64)
        };
        let config = &self.config;
        let memory_in_use = taken(&self.read_ctx.budget, config.buffer_bytes())
            + taken(&self.read_ctx.readahead, config.readahead_bytes())
            + self.read_ctx.cache.bytes() as u64;
        crate::metrics::Usage {
            memory_budget_bytes: config.max_memory,
            memory_in_use_bytes: memory_in_use,
            disk_limit_bytes: config.disk_cache.as_ref().map_or(0, |d| d.max_bytes),
            disk_in_use_bytes: self
                .read_ctx
                .disk
                .as_ref()
                .map_or(0, |d| d.reserved_bytes()),
            uploads_in_flight: self.journal.as_ref().map_or(0, |j| j.in_flight() as u64),
            open_files: self.files.lock().unwrap().len() as u64,
        }
    }

    pub fn statfs(&self) -> FsStats {
        // S3 has no capacity to report: show a large, constant size so tools that check free
        // space before writing do not refuse.
        FsStats {
            blocks: 1 << 40,
            files: 1 << 32,
            block_size: 4096,
            name_max: names::MAX_NAME_BYTES as u32,
        }
    }

    /// Shutdown begins: no new change is accepted.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Keys of the files open for writing now (diagnostics, shutdown).
    pub fn open_for_writing(&self) -> Vec<String> {
        let inodes = self.inodes.lock().unwrap();
        let mut keys: Vec<String> = inodes
            .all_writers()
            .into_iter()
            .filter_map(|(ino, _)| inodes.get(ino).map(|i| i.key.clone()))
            .collect();
        keys.sort();
        keys
    }

    /// Number of inodes the table holds (tests and diagnostics).
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().unwrap().len()
    }
}

/// A stable inode number for an entry readdir shows before any lookup gave it one: the kernel
/// only uses it for `d_ino`; the real number comes with the lookup. High bit set so it never
/// collides with allocated numbers.
fn unlisted_ino(key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() | (1 << 63)
}

#[cfg(test)]
mod tests;

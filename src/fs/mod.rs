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
use cache::{BlockCache, DirSnapshots, NegativeCache, SnapshotAnswer, SNAPSHOT_MAX_NAMES};
use dir::DirListing;
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
    journal: Option<Arc<UploadJournal>>,
    /// Set at SIGTERM/SIGINT: every change is refused from then on (EROFS).
    shutting_down: std::sync::atomic::AtomicBool,
    next_handle: AtomicU64,
    mount_time: SystemTime,
}

impl<S: ObjectStore> Fs<S> {
    pub fn new(store: Arc<S>, config: FsConfig) -> Self {
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

    /// Looks `name` up in directory `parent`; the kernel holds one more reference on success.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        self.lookup_entry(parent, name, true, Holder::default())
            .await
    }

    /// Lookup; `counted` says whether the kernel takes a reference (false for internal use).
    /// `reader`: the claim of the operation that asks, if it holds one (its own change of
    /// the name does not hold up its lookups).
    async fn lookup_entry(
        &self,
        parent: u64,
        name: &OsStr,
        counted: bool,
        reader: Holder,
    ) -> FsResult<Entry> {
        let name = validate_component(name)?;
        for attempt in 1.. {
            let last = attempt == LOOKUP_ATTEMPTS;
            if let Some(found) = self
                .lookup_attempt(parent, name, counted, last, reader)
                .await?
            {
                return Ok(found);
            }
        }
        unreachable!("the last attempt answers")
    }

    /// One try of a lookup: `None` when the directory was renamed while the store was asked
    /// (the answer was about its old key), or when the store said "not found" while a name
    /// changed in the directory here (a file made, stored or moved in meanwhile would be
    /// hidden by it); the `last` attempt answers anyway.
    async fn lookup_attempt(
        &self,
        parent: u64,
        name: &str,
        counted: bool,
        last: bool,
        reader: Holder,
    ) -> FsResult<Option<Entry>> {
        let parent_key = self.dir_key(parent)?;
        {
            let mut inodes = self.inodes.lock().unwrap();
            if let Some(child) = inodes.child(parent, name) {
                if child.expires > Instant::now() || child.has_writer() || child.is_pending() {
                    metrics().cache_lookup(Cache::Metadata, true);
                    let entry = Entry {
                        ino: child.ino,
                        attrs: child.attrs.clone(),
                    };
                    if counted {
                        inodes.add_lookup(entry.ino);
                    }
                    return Ok(Some(entry));
                }
            }
        }
        if self.negative.contains(parent, name) {
            metrics().cache_lookup(Cache::Metadata, true);
            return Err(FsError::NotFound);
        }
        let key = child_key(&parent_key, name)?;
        let mut answer = self.snapshots.answer(parent, name);
        if answer == SnapshotAnswer::Stale {
            self.renew_snapshot(parent, &parent_key).await?;
            answer = self.snapshots.answer(parent, name);
        }
        if answer == SnapshotAnswer::Absent {
            metrics().cache_lookup(Cache::Metadata, true);
            self.negative.insert(parent, name);
            return Err(FsError::NotFound);
        }
        metrics().cache_lookup(Cache::Metadata, false);
        // Asked before and after the probe: the last close may delete the object (and end
        // the record) while the probe finds it.
        let (was_orphan, stamp, names) = {
            let inodes = self.inodes.lock().unwrap();
            (
                inodes.is_orphan_key(&key),
                inodes.stamp(),
                inodes.names_stamp(parent),
            )
        };
        // A directory renamed above the key while the probe ran may have been half moved.
        let (mut found, settled) = self.read_settled(&key, reader, || self.probe(&key)).await;
        let mut inodes = self.inodes.lock().unwrap();
        // Checked under the lock that records the answer: a directory rename recorded in
        // between would otherwise get the child's old key written back.
        match inodes.get(parent) {
            Some(dir) if dir.key == parent_key => {}
            Some(_) => return Ok(None),
            None => return Err(FsError::NotFound),
        }
        let orphan = was_orphan || inodes.is_orphan_key(&key);
        if matches!(&found, Ok((found_key, _)) if *found_key == key && orphan) {
            // A file unlinked while open: its object waits for the last close, the name is
            // gone. (A directory made under the name since is found.)
            found = Err(FsError::NotFound);
        }
        match found {
            Ok((entry_key, attrs)) => {
                // Attributes this mount set while the probe ran (a commit) are newer: kept.
                // An answer a change of the key kept overtaking is used for now only.
                let (expiry, stamp) = match settled {
                    true => (self.expiry(), stamp),
                    false => (Instant::now(), 0),
                };
                let inode = inodes
                    .upsert_child_since(parent, name, entry_key, attrs, expiry, counted, stamp);
                Ok(Some(Entry {
                    ino: inode.ino,
                    attrs: inode.attrs.clone(),
                }))
            }
            Err(FsError::NotFound) => {
                // A file this mount made or changed under the name while the probe ran is
                // newer than the answer.
                if let Some(child) = inodes
                    .child(parent, name)
                    .filter(|c| inodes.changed_since(c.ino, stamp))
                {
                    let entry = Entry {
                        ino: child.ino,
                        attrs: child.attrs.clone(),
                    };
                    if counted {
                        inodes.add_lookup(entry.ino);
                    }
                    return Ok(Some(entry));
                }
                // A name made, stored or moved into the directory here while the probe ran
                // (and maybe forgotten since) may be this one: asked again.
                let overtaken = inodes.names_stamp(parent) != names || !settled;
                if overtaken && !last {
                    return Ok(None);
                }
                // A file being written here keeps its name until its commit makes the object.
                if let Some(child) = inodes
                    .child(parent, name)
                    .filter(|c| c.has_writer() || c.is_pending())
                {
                    let entry = Entry {
                        ino: child.ino,
                        attrs: child.attrs.clone(),
                    };
                    if counted {
                        inodes.add_lookup(entry.ino);
                    }
                    return Ok(Some(entry));
                }
                inodes.detach(parent, name);
                if !overtaken {
                    self.negative.insert(parent, name);
                }
                Err(FsError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// Lists a small directory again to renew its snapshot (dropped if it grew too large).
    async fn renew_snapshot(&self, dir: u64, prefix: &str) -> FsResult<()> {
        let epoch = self.snapshots.epoch();
        let mut listing =
            DirListing::new(prefix.to_string(), self.config.defaults, self.mount_time);
        listing.set_local(self.local_children(dir));
        listing
            .entries_from(&self.store, 0, SNAPSHOT_MAX_NAMES + 1)
            .await?;
        match listing.complete_names() {
            Some(names) => self.snapshots.set(dir, names, epoch),
            None => self.snapshots.forget(dir),
        }
        Ok(())
    }

    /// Asks the store what `key` is: a directory (any key below `key/`) wins over a file.
    async fn probe(&self, key: &str) -> FsResult<(String, Attributes)> {
        let dir_prefix = format!("{key}/");
        let (head, below) = tokio::join!(
            self.store.head(key),
            self.store.list_page(&dir_prefix, false, None, Some(1))
        );
        let below = below?;
        if !below.objects.is_empty() || !below.prefixes.is_empty() {
            if head.is_ok() {
                debug!(key, "file shadowed by a directory of the same name");
            }
            let has_marker = below
                .objects
                .first()
                .is_some_and(|marker| marker.key == dir_prefix);
            let attrs = if has_marker {
                self.marker_attrs(&dir_prefix).await?
            } else {
                Attributes::directory(self.mount_time, &self.config.defaults)
            };
            return Ok((dir_prefix, attrs));
        }
        match head {
            Ok(info) => Ok((
                key.to_string(),
                Attributes::file(&info, &self.config.defaults),
            )),
            Err(StoreError::NotFound) => Err(FsError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// A directory's attributes from its marker object's metadata (mode, owner, times, as
    /// mkdir and chmod store them); the defaults when the marker is gone or carries none.
    async fn marker_attrs(&self, marker_key: &str) -> FsResult<Attributes> {
        match self.store.head(marker_key).await {
            Ok(info) => Ok(Attributes::directory_from_marker(
                &info,
                &self.config.defaults,
            )),
            Err(StoreError::NotFound) => Ok(Attributes::directory(
                self.mount_time,
                &self.config.defaults,
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.lock().unwrap().forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Entry> {
        let (key, attrs, fresh) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            (
                inode.key.clone(),
                inode.attrs.clone(),
                inode.expires > Instant::now()
                    || inode.has_writer()
                    || inode.is_pending()
                    || inode.is_unlinked(),
            )
        };
        // Directories have no object of their own to ask about; their listing is fresh at
        // each opendir.
        metrics().cache_lookup(Cache::Metadata, fresh || attrs.kind == Kind::Dir);
        if fresh || attrs.kind == Kind::Dir {
            return Ok(Entry { ino, attrs });
        }
        let attrs = self.refresh_file(ino, &key).await?;
        Ok(Entry { ino, attrs })
    }

    async fn refresh_file(&self, ino: u64, key: &str) -> FsResult<Attributes> {
        Ok(self.refresh_file_info(ino, key).await?.0)
    }

    /// `refresh_file`, also returning the object's user metadata from the same HEAD.
    async fn refresh_file_info(
        &self,
        ino: u64,
        key: &str,
    ) -> FsResult<(Attributes, HashMap<String, String>)> {
        let stamp = self.inodes.lock().unwrap().stamp();
        // An answer a change of this mount overtook (even one recorded in an inode forgotten
        // since) is not taken for the file's attributes.
        let (answer, settled) = self
            .read_settled(key, Holder::default(), || self.store.head(key))
            .await;
        match answer {
            Ok(info) => {
                let attrs = Attributes::file(&info, &self.config.defaults);
                let mut inodes = self.inodes.lock().unwrap();
                if !settled {
                    if let Some(inode) = inodes.get(ino).filter(|i| i.kind() == attrs.kind) {
                        return Ok((inode.attrs.clone(), info.user_metadata));
                    }
                }
                if inodes.changed_since(ino, stamp) {
                    // This mount changed the file while the HEAD ran (a commit): its own
                    // attributes are newer than the answer.
                    let attrs = inodes.get(ino).ok_or(FsError::NotFound)?.attrs.clone();
                    return Ok((attrs, info.user_metadata));
                }
                if let Some(inode) = inodes.get(ino).filter(|i| i.kind() != attrs.kind) {
                    // Listed as a file, but its metadata says symlink (or the reverse): one
                    // inode must not change type, so the name is looked up again (the kernel
                    // retries a path walk that met ESTALE) and gets a new inode.
                    let (parent, name) = (inode.parent, inode.name.clone());
                    inodes.detach_if(parent, &name, ino);
                    return Err(FsError::Stale);
                }
                inodes.set_attrs(ino, attrs.clone(), self.expiry());
                Ok((attrs, info.user_metadata))
            }
            Err(StoreError::NotFound) => {
                let mut inodes = self.inodes.lock().unwrap();
                if inodes.changed_since(ino, stamp) {
                    let attrs = inodes.get(ino).ok_or(FsError::NotFound)?.attrs.clone();
                    return Ok((attrs, HashMap::new()));
                }
                // A file being written here keeps its name: its commit makes the object (and
                // one writer per name stays true).
                if let Some(inode) = inodes.get(ino).filter(|i| i.has_writer() || i.is_pending()) {
                    return Ok((inode.attrs.clone(), HashMap::new()));
                }
                // The name goes only if it is still this inode's: a file made under it since
                // (after this one was unlinked or renamed over) is another file.
                if let Some(inode) = inodes.get(ino) {
                    let (parent, name) = (inode.parent, inode.name.clone());
                    inodes.detach_if(parent, &name, ino);
                }
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let prefix = self.dir_key(ino)?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle = DirHandle {
            ino,
            listing: DirListing::new(prefix, self.config.defaults, self.mount_time),
            epoch: self.snapshots.epoch(),
            stamp: self.inodes.lock().unwrap().stamp(),
        };
        let mut handle = handle;
        handle.listing.set_local(self.local_children(ino));
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, Arc::new(tokio::sync::Mutex::new(handle)));
        Ok(fh)
    }

    /// Entries after cookie `offset` (0 = from the start), at most `max`. With `plus`, each
    /// returned entry other than `.` and `..` carries a kernel reference (readdirplus).
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        max: usize,
        plus: bool,
    ) -> FsResult<Vec<DirItem>> {
        let handle = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut handle = handle.lock().await;
        let dir_ino = handle.ino;
        if offset == 0 {
            handle.listing.restart();
            handle.epoch = self.snapshots.epoch();
            handle.stamp = self.inodes.lock().unwrap().stamp();
            let local = self.local_children(dir_ino);
            handle.listing.set_local(local);
        }
        let mut items = Vec::new();
        // Cookies: 1 is ".", 2 is "..", 3 + i is listing entry i.
        if offset < 2 {
            let (dot, dotdot) = {
                let inodes = self.inodes.lock().unwrap();
                let me = inodes.get(dir_ino).ok_or(FsError::NotFound)?;
                let parent = inodes.get(me.parent).unwrap_or(me);
                (
                    Entry {
                        ino: me.ino,
                        attrs: me.attrs.clone(),
                    },
                    Entry {
                        ino: parent.ino,
                        attrs: parent.attrs.clone(),
                    },
                )
            };
            if offset == 0 {
                items.push(DirItem {
                    offset: 1,
                    name: ".".into(),
                    entry: dot,
                    counted: false,
                    verified: true,
                });
            }
            items.push(DirItem {
                offset: 2,
                name: "..".into(),
                entry: dotdot,
                counted: false,
                verified: true,
            });
        }
        let start = offset.saturating_sub(2) as usize;
        let want = max.saturating_sub(items.len());
        let prefix = handle.listing.prefix().to_string();
        let mut entries = handle
            .listing
            .entries_from(&self.store, start, want)
            .await?
            .to_vec();
        if entries.len() < want {
            if let Some(names) = handle.listing.complete_names() {
                self.snapshots.set(dir_ino, names, handle.epoch);
            }
        }
        // A small directory, listed whole: its entries' own metadata is asked for when they
        // are used (see `settle_listed_attrs`).
        let small = handle
            .listing
            .complete_names()
            .is_some_and(|names| names.len() <= SMALL_DIR_ENTRIES);
        let unverified = self
            .settle_listed_attrs(dir_ino, &prefix, &mut entries, small)
            .await?;
        let expires = self.expiry();
        let mut inodes = self.inodes.lock().unwrap();
        // The directory was renamed since this handle's listing began: its entries' keys are
        // the old ones, and recording them would undo the rename's re-keying (a later unlink
        // or commit through them would act on the old name). Shown, not recorded.
        let plus = plus && inodes.get(dir_ino).is_some_and(|d| d.key == prefix);
        for (i, e) in entries.into_iter().enumerate() {
            let orphan =
                !e.attrs.kind.is_dir() && inodes.is_orphan_key(&format!("{prefix}{}", e.name));
            if orphan || self.negative.contains(dir_ino, &e.name) {
                // Removed (unlinked, renamed away) since this listing was taken: a stale
                // entry must not bring the name back.
                continue;
            }
            let key = match e.attrs.kind {
                Kind::Dir => format!("{prefix}{}/", e.name),
                _ => format!("{prefix}{}", e.name),
            };
            let verified = !unverified.contains(&i);
            let entry = if plus {
                // An unverified entry is expired at once: a lookup asks the store.
                let expires = if verified { expires } else { Instant::now() };
                let inode = inodes.upsert_child_since(
                    dir_ino,
                    &e.name,
                    key,
                    e.attrs,
                    expires,
                    true,
                    handle.stamp,
                );
                Entry {
                    ino: inode.ino,
                    attrs: inode.attrs.clone(),
                }
            } else {
                let ino = match inodes.child(dir_ino, &e.name) {
                    Some(known) if known.kind() == e.attrs.kind => known.ino,
                    _ => unlisted_ino(&key),
                };
                Entry {
                    ino,
                    attrs: e.attrs,
                }
            };
            items.push(DirItem {
                offset: 3 + (start + i) as u64,
                name: e.name,
                entry,
                counted: plus,
                verified,
            });
        }
        Ok(items)
    }

    /// Listings carry no metadata, so a listed entry shows the mount's default owner and mode,
    /// S3's LastModified, and is a regular file or a directory. Better attributes already known
    /// for the same object version (from a HEAD, a write or a chmod in this mount) are kept;
    /// files being written keep theirs. With `stat_metadata`, unknown entries are HEADed
    /// (concurrently, a directory through its marker) so they show their POSIX metadata and
    /// what they are (a symlink, a FIFO). Without it, the unknown entries of `small` directories
    /// (listed whole, at most `SMALL_DIR_ENTRIES`) are returned as unverified (their indices):
    /// the kernel looks each up when it needs its attributes (`ls -l`, `stat`), and one that
    /// is never looked at (`find`, `ls`) costs nothing. Large directories keep the listing's
    /// attributes for the TTL: one request per object is what makes `ls -l` slow on other S3
    /// filesystems.
    async fn settle_listed_attrs(
        &self,
        dir: u64,
        prefix: &str,
        entries: &mut [dir::DirEntry],
        small: bool,
    ) -> FsResult<Vec<usize>> {
        let mut unknown = Vec::new();
        {
            let inodes = self.inodes.lock().unwrap();
            for (i, e) in entries.iter_mut().enumerate() {
                // A listed object may turn out a symlink or a FIFO once HEADed: any non-directory
                // inode of the name is this entry.
                let known = inodes
                    .child(dir, &e.name)
                    .filter(|c| c.kind().is_dir() == e.attrs.kind.is_dir());
                match known {
                    Some(c) if c.has_writer() || c.is_pending() => e.attrs = c.attrs.clone(),
                    Some(c)
                        if e.attrs.kind == Kind::Dir
                            || (c.attrs.etag.is_some() && c.attrs.etag == e.attrs.etag) =>
                    {
                        e.attrs = c.attrs.clone()
                    }
                    _ => unknown.push(i),
                }
            }
        }
        if !self.config.stat_metadata {
            return Ok(if small { unknown } else { Vec::new() });
        }
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = unknown
            .iter()
            .map(|&i| match entries[i].attrs.kind {
                Kind::Dir => format!("{prefix}{}/", entries[i].name),
                _ => format!("{prefix}{}", entries[i].name),
            })
            .collect();
        // Collected (boxed) before streaming, for the same higher-ranked lifetime reason as in
        // rename_dir.
        let heads: Vec<BoxFuture<'_, Result<ObjectInfo, StoreError>>> =
            keys.iter().map(|key| self.store.head(key)).collect();
        let results: Vec<_> = futures::stream::iter(heads)
            .buffered(STAT_METADATA_CONCURRENCY)
            .collect()
            .await;
        for (i, result) in unknown.into_iter().zip(results) {
            match result {
                Ok(info) if entries[i].attrs.kind == Kind::Dir => {
                    entries[i].attrs =
                        Attributes::directory_from_marker(&info, &self.config.defaults)
                }
                Ok(info) => entries[i].attrs = Attributes::file(&info, &self.config.defaults),
                // Deleted since the listing: shown as listed; a lookup will tell.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Vec::new())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
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

    /// Entries of `dir` created in this mount and not yet in S3, with their attributes.
    fn local_children(&self, dir: u64) -> Vec<dir::DirEntry> {
        let inodes = self.inodes.lock().unwrap();
        inodes
            .pending_children(dir)
            .into_iter()
            .map(|inode| dir::DirEntry {
                name: inode.name.clone(),
                attrs: inode.attrs.clone(),
            })
            .collect()
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

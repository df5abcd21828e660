//! Operations that open, write or change files and directories: open/create, write, commit
//! (flush/fsync), setattr, unlink, mkdir, rmdir and rename. After each returns, lookups and
//! listings in this mount show the new state at once.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tracing::{debug, error};

use super::attrs::{posix_headers, Attributes, Kind};
use super::claims::Binding;
use super::copy::ServerCopy;
use super::error::{FsError, FsResult};
use super::inode::{Orphan, OrphanClaim};
use super::names::{child_key, validate_component};
use super::owner::{Claim, Owned};
use super::patch::Base;
use super::read::FileReader;
use super::write::FileWriter;
use super::xattr::user_attributes;
use super::{Entry, FileHandle, Fs};
use crate::store::{Expect, ObjectStore, PutOptions, StoreError};

/// Keys copied (then deleted) at once when renaming a directory.
const RENAME_CONCURRENCY: usize = 16;
/// Tries to delete an unlinked file's object at the unmount (its last chance).
const ORPHAN_DELETE_TRIES_AT_UNMOUNT: u32 = 3;

/// Keys marked busy in the inode table for as long as this lives (see `InodeTable::busy`).
pub(super) struct BusyKeys<'a, S> {
    fs: &'a Fs<S>,
    keys: Vec<String>,
}

impl<'a, S> BusyKeys<'a, S> {
    /// Marks `keys`, unless the destination (the last key) is busy already: another rename or
    /// unlink is moving it, or a renamed file's upload will still complete there (a file moved
    /// onto that key now would be overwritten by it). Then EBUSY.
    fn mark_free(fs: &'a Fs<S>, keys: Vec<String>, own: Option<&str>) -> FsResult<Self> {
        let mut inodes = fs.inodes.lock().unwrap();
        let conflict = keys
            .last()
            .is_some_and(|dest| Some(dest.as_str()) != own && inodes.busy_at_or_below(dest));
        // Nor out of or into a directory being renamed (its objects are being moved).
        if conflict || keys.iter().any(|key| inodes.busy_above(key)) {
            return Err(FsError::Busy);
        }
        for key in &keys {
            inodes.mark_busy(key);
        }
        drop(inodes);
        Ok(Self { fs, keys })
    }

    /// `mark_free` for the rename of the directory `keys[0]`: EBUSY too while a key below
    /// it is busy (a file in it being unlinked, say, would be moved from under that request).
    fn mark_free_tree(fs: &'a Fs<S>, keys: Vec<String>) -> FsResult<Self> {
        let marked = Self::mark_free(fs, keys, None)?;
        // Checked with the marks in place: whatever marks a key below from now on sees the
        // directory busy (`mark_unless_moving`), and whatever did before is seen here.
        if fs.inodes.lock().unwrap().busy_below(&marked.keys[0]) {
            return Err(FsError::Busy);
        }
        Ok(marked)
    }

    /// Marks the file key `key`, unless a directory above it is being renamed (its objects
    /// are being moved): then EBUSY.
    fn mark_unless_moving(fs: &'a Fs<S>, key: String) -> FsResult<Self> {
        let mut inodes = fs.inodes.lock().unwrap();
        if inodes.busy_above(&key) {
            return Err(FsError::Busy);
        }
        inodes.mark_busy(&key);
        drop(inodes);
        Ok(Self {
            fs,
            keys: vec![key],
        })
    }
}

impl<S> Drop for BusyKeys<'_, S> {
    fn drop(&mut self) {
        let mut inodes = self.fs.inodes.lock().unwrap();
        for key in &self.keys {
            inodes.unmark_busy(key);
        }
    }
}

/// The deletion of an orphan claimed in the inode table (`claim_orphan_of` and co., which
/// marked its key busy): dropped, it ends the claim (the record goes if `deleted`, else it
/// stays to be claimed again, also when the request was cancelled) and unmarks the key.
struct OrphanDeletion<'a, S> {
    fs: &'a Fs<S>,
    key: String,
    deleted: bool,
}

impl<'a, S> OrphanDeletion<'a, S> {
    fn adopt(fs: &'a Fs<S>, key: &str) -> Self {
        Self {
            fs,
            key: key.to_string(),
            deleted: false,
        }
    }
}

impl<S> Drop for OrphanDeletion<'_, S> {
    fn drop(&mut self) {
        let mut inodes = self.fs.inodes.lock().unwrap();
        inodes.finish_orphan_claim(&self.key, self.deleted);
        inodes.unmark_busy(&self.key);
    }
}

/// An entry whose inode holds one extra reference while this lives.
struct Held<'a, S> {
    fs: &'a Fs<S>,
    entry: Entry,
}

impl<S> std::ops::Deref for Held<'_, S> {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl<S> Drop for Held<'_, S> {
    fn drop(&mut self) {
        self.fs.inodes.lock().unwrap().forget(self.entry.ino, 1);
    }
}

/// Locks an optional writer.
async fn lock_opt<T>(
    writer: &Option<Arc<tokio::sync::Mutex<T>>>,
) -> Option<tokio::sync::MutexGuard<'_, T>> {
    match writer {
        Some(writer) => Some(writer.lock().await),
        None => None,
    }
}

/// Who asks: owner of what they create.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The attribute changes of one setattr call.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
    /// Set by the kernel itself on some changes; otherwise every change moves ctime to now.
    pub ctime: Option<SystemTime>,
}

impl SetAttr {
    /// The POSIX headers this change sets (ctime always moves): a self-copy writes these over
    /// what S3 holds and keeps the rest.
    fn headers(&self, attrs: &Attributes) -> std::collections::HashMap<String, String> {
        let touched = [
            ("mode", self.mode.is_some()),
            ("uid", self.uid.is_some()),
            ("gid", self.gid.is_some()),
            ("mtime", self.mtime.is_some()),
            ("atime", self.atime.is_some()),
            ("ctime", true),
        ];
        let mut headers = posix_headers(attrs);
        headers.retain(|name, _| touched.iter().any(|(n, set)| n == name && *set));
        headers
    }

    /// True when the change touches metadata kept in the object's headers.
    fn changes_metadata(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.mtime.is_some()
            || self.atime.is_some()
    }
}

impl<S: ObjectStore> Fs<S> {
    /// Only directories (buckets) may be made at the root of a mount of every bucket.
    pub(super) fn check_not_bucket_level(&self, parent: u64) -> FsResult<()> {
        if self.config.buckets_at_root && parent == super::inode::ROOT_INO {
            debug!("only buckets (directories) live at the top of a mount of every bucket");
            return Err(FsError::PermissionDenied);
        }
        Ok(())
    }

    pub(super) fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only || self.is_shutting_down() {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Options for a new object: the mount's upload options, the content type and the POSIX
    /// attributes as s3fs-style metadata.
    pub(super) fn put_options(&self, name: &str, attrs: &Attributes) -> PutOptions {
        let content_type = match attrs.kind {
            Kind::Dir => Some("application/x-directory".to_string()),
            _ => Some(self.config.content_type.clone().unwrap_or_else(|| {
                mime_guess::from_path(name)
                    .first_or_octet_stream()
                    .essence_str()
                    .to_string()
            })),
        };
        PutOptions {
            content_type,
            user_metadata: posix_headers(attrs),
            ..self.config.upload.clone()
        }
    }

    pub(super) fn inode_parts(
        &self,
        ino: u64,
    ) -> FsResult<(u64, String, String, Attributes, bool)> {
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok((
            inode.parent,
            inode.name.clone(),
            inode.key.clone(),
            inode.attrs.clone(),
            inode.expires > Instant::now(),
        ))
    }

    /// `inode_parts` with attributes that describe what S3 holds: the cached ones while they
    /// are fresh or this mount's own (a writer, a file only here or unlinked), else asked for
    /// again (those a failed writer left, say, describe nothing stored).
    pub(super) async fn current_parts(
        &self,
        ino: u64,
    ) -> FsResult<(u64, String, String, Attributes)> {
        let (parent, name, key, attrs, fresh) = self.inode_parts(ino)?;
        let own = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .is_some_and(|i| i.has_writer() || i.is_pending() || i.is_unlinked());
        if fresh || own || attrs.kind == Kind::Dir {
            return Ok((parent, name, key, attrs));
        }
        let attrs = self.refresh_file_info(ino, &key).await?.0;
        Ok((parent, name, key, attrs))
    }

    pub(super) fn touch_dir(&self, dir: u64) {
        let mut inodes = self.inodes.lock().unwrap();
        if let Some(inode) = inodes.get(dir) {
            let mut attrs = inode.attrs.clone();
            let expires = inode.expires;
            attrs.mtime = SystemTime::now();
            attrs.ctime = attrs.mtime;
            inodes.set_attrs(dir, attrs, expires);
        }
    }

    /// Marks `keys` busy for as long as the guard lives; EBUSY when the last one is busy already
    /// (see `BusyKeys::mark_free`).
    pub(super) fn busy_keys(&self, keys: Vec<String>) -> FsResult<BusyKeys<'_, S>> {
        BusyKeys::mark_free(self, keys, None)
    }

    /// A writer for `key`, on the shared budget, recording its uploads in the journal.
    fn new_writer(&self, key: String, opts: PutOptions) -> FileWriter<S> {
        FileWriter::new(
            self.store.clone(),
            key,
            opts,
            self.config.write_part_size,
            self.read_ctx.budget.clone(),
            self.config.buffer_bytes() as usize,
        )
        .with_journal(self.journal.clone())
        .with_disk(self.read_ctx.disk.clone())
    }

    fn new_handle(&self, ino: u64, handle: FileHandle<S>) -> u64 {
        let fh = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, (ino, handle));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<(u64, FileHandle<S>)> {
        self.files
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Creates (or replaces) the file `name` in `parent` and opens it for writing. The object
    /// appears in S3 at the first close or fsync.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<(Entry, u64)> {
        self.create_with_flags(parent, name, mode, 0, caller).await
    }

    /// `create` with the open flags: with `O_EXCL`, EEXIST when the name exists now (the
    /// kernel's lookup said it did not, but another request may have made it since).
    pub async fn create_with_flags(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Entry, u64)> {
        self.check_writable()?;
        self.check_not_bucket_level(parent)?;
        let name = validate_component(name)?;
        let _owned = self.own_name(parent, name).await?;
        let parent_key = self.dir_key(parent)?;
        let key = child_key(&parent_key, name)?;
        let attrs = Attributes::new(Kind::File, mode, caller.uid, caller.gid);
        let opts = self.put_options(name, &attrs);
        self.settle_orphan(&key).await?;
        // The kernel's lookup found nothing, but a request of this mount may have made the
        // name since (a rename onto it, say). Unless this mount knows (an entry, or a recent
        // "not found" nothing has overtaken), S3 is asked.
        let known = self.inodes.lock().unwrap().child(parent, name).is_some()
            || self.negative.contains(parent, name);
        let found = match known {
            true => false,
            false => match self.probe(&key).await {
                Ok((found_key, _)) => found_key == key || flags & libc::O_EXCL != 0,
                Err(FsError::NotFound) => false,
                Err(e) => return Err(e),
            },
        };
        if found && flags & libc::O_EXCL != 0 {
            return Err(FsError::Exists);
        }
        let writer = Arc::new(tokio::sync::Mutex::new(self.new_writer(key.clone(), opts)));
        let ino = {
            let mut inodes = self.inodes.lock().unwrap();
            // A name known to be in S3 is replaced: it is not "only in this mount", and a
            // failed upload leaves it showing the old object.
            let mut stored = found;
            if let Some(existing) = inodes.child(parent, name) {
                if flags & libc::O_EXCL != 0 {
                    return Err(FsError::Exists);
                }
                if existing.kind() == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                if existing.has_writer() {
                    return Err(FsError::Busy);
                }
                // (Whatever its cached ETag says: a failed writer's attributes have none.)
                stored = !existing.is_pending();
            }
            if inodes.key_is_busy(&key) {
                // Being renamed or unlinked right now, or a renamed file's upload still
                // completes there.
                return Err(FsError::Busy);
            }
            let ino = inodes
                .upsert_child(
                    parent,
                    name,
                    key.clone(),
                    attrs.clone(),
                    self.expiry(),
                    true,
                )
                .ino;
            let claimed = inodes.claim_writer(ino, writer.clone());
            debug_assert!(claimed, "checked under the same lock");
            // Shown by readdir from now on; in S3 from the first commit.
            if !stored {
                inodes.set_pending(ino, true);
            }
            ino
        };
        self.negative.remove(parent, name);
        self.snapshots.add(parent, name);
        self.touch_dir(parent);
        let fh = self.new_handle(ino, FileHandle::Write(writer));
        Ok((Entry { ino, attrs }, fh))
    }

    /// Opens a file. Writing replaces the whole object: with `O_TRUNC` (or after a truncate
    /// to 0) writes stream into a new object; appending or overwriting in place is refused
    /// with EOPNOTSUPP at the first write.
    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        // A writer starts from the object's metadata (mode, owner, xattrs): read and claimed
        // under the key's claim, so no chmod or setxattr lands in between and is lost.
        let _owned = match writing {
            true => Some(self.own_inode(ino).await?),
            false => None,
        };
        let (_, name, key, attrs, fresh) = self.inode_parts(ino)?;
        if attrs.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let current_writer = self.writer_of(ino);
        let handing_over = current_writer
            .as_ref()
            .is_some_and(|w| w.try_lock().is_ok_and(|w| w.can_be_superseded()));
        if writing {
            self.check_writable()?;
            if current_writer.is_some() && !handing_over {
                return Err(FsError::Busy);
            }
        } else if let Some(writer) = &current_writer {
            if writer.try_lock().map(|w| w.is_dirty()).unwrap_or(true) {
                // Its bytes are not in S3 yet, and reading the old object would be wrong.
                return Err(FsError::Busy);
            }
        }
        // The object's metadata when this open had to HEAD it anyway (a writer reuses it).
        let (attrs, headed_metadata) = if fresh || (current_writer.is_some() && !handing_over) {
            (attrs, None)
        } else {
            let (attrs, metadata) = self.refresh_file_info(ino, &key).await?;
            (attrs, Some(metadata))
        };
        if !writing {
            let reader =
                FileReader::new(self.read_ctx.clone(), key, attrs.etag.clone(), attrs.size);
            let reader = Arc::new(tokio::sync::Mutex::new(reader));
            return Ok(self.new_handle(ino, FileHandle::Read(reader)));
        }
        let now = SystemTime::now();
        let new_attrs = Attributes {
            mtime: now,
            ctime: now,
            ..attrs.clone()
        };
        let mut opts = self.put_options(&name, &new_attrs);
        let stored = !self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .is_some_and(|i| i.is_pending());
        if stored {
            // The new content keeps the object's user attributes (xattrs), as a file's
            // content change keeps them on any POSIX filesystem.
            let mut metadata = match headed_metadata {
                Some(metadata) => user_attributes(&metadata),
                None => self.stored_user_attributes(&key).await?,
            };
            metadata.extend(opts.user_metadata);
            opts.user_metadata = metadata;
        }
        let mut writer = self.new_writer(key.clone(), opts);
        let truncate = flags & libc::O_TRUNC != 0;
        if !truncate {
            writer = writer.existing(Base {
                key: key.clone(),
                etag: attrs.etag.clone(),
                size: attrs.size,
            });
        }
        if flags & libc::O_ACCMODE == libc::O_RDWR {
            writer = writer.random_access();
        }
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        {
            // One writer per file: the check and the claim in one critical section, so two
            // concurrent opens cannot both become the writer.
            let mut inodes = self.inodes.lock().unwrap();
            if !inodes.is_current(ino, &key) {
                // Unlinked, renamed or renamed over since this open looked: a writer made now
                // would write to a name the file no longer has.
                return Err(FsError::Stale);
            }
            let current = inodes.get(ino).and_then(|i| i.writer().cloned());
            match current {
                None => {
                    if !inodes.claim_writer(ino, writer.clone()) {
                        return Err(FsError::Busy);
                    }
                }
                // A closed writer whose release has not arrived yet (the kernel sends it
                // asynchronously): it hands the file over. try_lock never waits.
                Some(old) => match old.try_lock() {
                    Ok(mut old) if old.can_be_superseded() && !inodes.key_is_busy(&key) => {
                        old.supersede();
                        inodes.replace_writer(ino, writer.clone());
                    }
                    _ => return Err(FsError::Busy),
                },
            }
            if truncate {
                // The truncate is the handle's: S3 keeps the old object until the commit.
                let truncated = Attributes {
                    size: 0,
                    ..new_attrs
                };
                inodes.set_attrs(ino, truncated, self.expiry());
            }
        }
        Ok(self.new_handle(ino, FileHandle::Write(writer)))
    }

    /// The user attributes (non-POSIX user metadata) of the object at `key`; none when it is
    /// gone.
    async fn stored_user_attributes(
        &self,
        key: &str,
    ) -> FsResult<std::collections::HashMap<String, String>> {
        match self.store.head(key).await {
            Ok(info) => Ok(user_attributes(&info.user_metadata)),
            Err(StoreError::NotFound) => Ok(Default::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn writer_of(&self, ino: u64) -> Option<super::SharedWriter<S>> {
        let inodes = self.inodes.lock().unwrap();
        inodes.get(ino).and_then(|i| i.writer().cloned())
    }

    /// After `writer` failed for good: the inode lets go of it (its handle keeps reporting
    /// the error), and the file's name shows what S3 holds. A file that was never stored
    /// disappears; an overwritten one shows the old object again at its next use.
    fn writer_failed(&self, ino: u64, writer: &super::SharedWriter<S>) {
        let mut inodes = self.inodes.lock().unwrap();
        if !inodes.is_writer_of(ino, writer) {
            return; // dealt with already, or replaced
        }
        let Some(inode) = inodes.get(ino) else {
            return;
        };
        let (parent, name, pending) = (inode.parent, inode.name.clone(), inode.is_pending());
        inodes.release_writer(ino, writer);
        if pending {
            inodes.detach(parent, &name);
            drop(inodes);
            self.snapshots.remove(parent, &name);
            self.negative.insert(parent, &name);
        } else {
            inodes.distrust(ino);
        }
    }

    /// A read that can be answered at once from local disk (a staged object), without the
    /// network and without waiting for another read of the same handle; `None` otherwise.
    pub fn read_local(&self, fh: u64, offset: u64, size: u32) -> Option<Bytes> {
        let (_, FileHandle::Read(reader)) = self.handle(fh).ok()? else {
            return None;
        };
        let mut reader = reader.try_lock().ok()?;
        reader.read_local(offset, size)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (ino, handle) = self.handle(fh)?;
        let reader = match handle {
            FileHandle::Read(reader) => reader,
            FileHandle::Write(writer) => {
                // Reading through a write handle sees what it wrote; with nothing changed, the
                // object is the content.
                if let Some(data) = writer.lock().await.read(offset, size).await? {
                    return Ok(data);
                }
                let (_, _, key, attrs, _) = self.inode_parts(ino)?;
                let reader = FileReader::new(self.read_ctx.clone(), key, attrs.etag, attrs.size);
                Arc::new(tokio::sync::Mutex::new(reader))
            }
        };
        let result = reader.lock().await.read(offset, size).await;
        if result == Err(FsError::Stale) {
            // The object changed: the next open must not trust the cached ETag.
            self.inodes.lock().unwrap().expire(ino);
        }
        result
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, handle) = self.handle(fh)?;
        let FileHandle::Write(writer) = handle else {
            return Err(FsError::BadHandle);
        };
        let mut guard = writer.lock().await;
        // Checked under the writer's lock: the shutdown sets the flag, then stores each
        // writer under its lock, so a write it did not wait for sees the flag.
        self.check_writable()?;
        let written = match guard.write(offset, data).await {
            Ok(n) => n,
            Err(e) => {
                if guard.is_failed() {
                    drop(guard);
                    self.writer_failed(ino, &writer);
                }
                return Err(e);
            }
        };
        let size = guard.size();
        drop(guard);
        self.note_written(ino, &writer, size);
        Ok(written)
    }

    /// The file's content changed to `size` bytes through `writer`: new size, mtime and
    /// ctime, unless the writer has let go of the file meanwhile (failed, or replaced).
    fn note_written(&self, ino: u64, writer: &super::SharedWriter<S>, size: u64) {
        let mut inodes = self.inodes.lock().unwrap();
        if !inodes.is_writer_of(ino, writer) {
            return;
        }
        if let Some(inode) = inodes.get(ino) {
            let now = SystemTime::now();
            let attrs = Attributes {
                size,
                mtime: now,
                ctime: now,
                ..inode.attrs.clone()
            };
            let expires = inode.expires;
            inodes.set_attrs(ino, attrs, expires);
        }
    }

    /// copy_file_range: the bytes of `fh_in` from `offset` on become those of `fh_out`, copied
    /// server-side at the commit (CopyObject, or UploadPartCopy for parts of a composed
    /// object), pinned to the version `fh_in` reads. Only the copy `cp` makes is taken: from
    /// the same offset into a file with nothing else written (see `FileWriter::clone_range`);
    /// anything else is `NotSupported`, and the kernel then copies through read and write.
    pub async fn copy_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        if offset_in != offset_out || fh_in == fh_out {
            return Err(FsError::NotSupported);
        }
        let (_, source) = self.handle(fh_in)?;
        // One file lock at a time (lock hierarchy, level 1): the source's is released here.
        let source = match source {
            FileHandle::Read(reader) => reader.lock().await.object(),
            FileHandle::Write(writer) => {
                let writer = writer.lock().await;
                // Only a file whose content is its object: not one with unsent changes, nor
                // one unlinked or displaced (whose later changes stay local).
                if writer.is_dirty() || writer.is_discarded() {
                    return Err(FsError::NotSupported);
                }
                writer
                    .base()
                    .filter(|base| base.size == writer.size())
                    .cloned()
                    .ok_or(FsError::NotSupported)?
            }
        };
        let (ino, handle) = self.handle(fh_out)?;
        let FileHandle::Write(writer) = handle else {
            return Err(FsError::BadHandle);
        };
        let mut guard = writer.lock().await;
        self.check_writable()?; // as in `write`
        let copied = guard.clone_range(source, offset_out, len)?;
        let size = guard.size();
        drop(guard);
        if copied > 0 {
            self.note_written(ino, &writer, size);
        }
        Ok(copied)
    }

    /// The handle was opened for reading too (O_RDWR): its writer keeps what it writes on
    /// local disk (so it can read it back and write anywhere) instead of streaming it.
    pub async fn set_random_access(&self, fh: u64) {
        if let Ok((_, FileHandle::Write(writer))) = self.handle(fh) {
            writer.lock().await.set_random_access();
        }
    }

    /// close/fsync: makes what was written the object in S3; Ok only once S3 confirmed it.
    pub async fn commit(&self, fh: u64) -> FsResult<()> {
        let (ino, handle) = self.handle(fh)?;
        let FileHandle::Write(writer) = handle else {
            return Ok(());
        };
        self.commit_writer(ino, &writer).await
    }

    /// close(): commits like fsync, except when nothing has been written since the open or
    /// truncate and the closing process still holds another descriptor of the file. Programs
    /// close a duplicate right after opening (dd reopens its output onto stdout and closes the
    /// first descriptor); committing then would replace the old object with an empty one
    /// before a byte of the new content exists, and a crash would leave nothing. The commit
    /// comes with the close of the other descriptor (or at the last close).
    pub async fn flush(&self, fh: u64, other_descriptors: bool) -> FsResult<()> {
        let (ino, handle) = self.handle(fh)?;
        let FileHandle::Write(writer) = handle else {
            return Ok(());
        };
        {
            let mut guard = writer.lock().await;
            guard.note_close();
            if other_descriptors && guard.is_empty_replacement() {
                debug!(
                    fh,
                    "close of a duplicate before anything was written: not committed"
                );
                return Ok(());
            }
        }
        self.commit_writer(ino, &writer).await
    }

    /// True when handle `fh` writes a file with nothing written since its open or truncate.
    pub fn is_empty_replacement(&self, fh: u64) -> bool {
        match self.handle(fh) {
            Ok((_, FileHandle::Write(writer))) => writer
                .try_lock()
                .map(|w| w.is_empty_replacement())
                .unwrap_or(false),
            _ => false,
        }
    }

    async fn commit_writer(&self, ino: u64, writer: &super::SharedWriter<S>) -> FsResult<()> {
        // The key the content goes to, and where a renamed-away upload completes (a writer
        // that is not the file's any more stores nothing).
        // (The renamed-away key as a name: the object shows there for a moment, and reads
        // wait rather than take it for a file.)
        let (_owned, binding) = self
            .own(|table| {
                if !table.is_writer_of(ino, writer) {
                    return Ok((Vec::new(), None));
                }
                let binding = super::claims::binding_of(table, ino)?;
                let claims = match &binding {
                    Binding::Bound { key, displaced } => std::iter::once(Claim::Key(key.clone()))
                        .chain(displaced.iter().map(|d| Claim::Name(d.clone())))
                        .collect(),
                    Binding::Ended => Vec::new(),
                };
                Ok((claims, Some(binding)))
            })
            .await?;
        let mut guard = writer.lock().await;
        if binding == Some(Binding::Ended) && guard.is_dirty() && !guard.is_discarded() {
            // The file lost its name without being unlinked or renamed over here (its object
            // vanished, and the name went): its content has nowhere to go that is still its
            // own. Reported, never stored over whatever holds the name now.
            error!(
                key = guard.key(),
                "the file lost its name while open: not stored"
            );
            guard.discard().await;
            return Err(FsError::Stale);
        }
        let committed = match guard.commit().await {
            Ok(committed) => committed,
            Err(e) => {
                drop(guard);
                self.writer_failed(ino, writer);
                return Err(e);
            }
        };
        let Some((size, etag)) = committed else {
            return Ok(());
        };
        debug!(key = guard.key(), size, "committed");
        // Still under the writer's lock: no rename can move the file between the commit and
        // this update.
        let mut inodes = self.inodes.lock().unwrap();
        if !inodes.is_writer_of(ino, writer) {
            return Ok(());
        }
        inodes.set_displaced(ino, None);
        if let Some(inode) = inodes.get(ino) {
            let attrs = Attributes {
                size,
                etag,
                ..inode.attrs.clone()
            };
            inodes.set_attrs(ino, attrs, self.expiry());
            inodes.set_pending(ino, false);
        }
        Ok(())
    }

    /// The last close of a handle. Anything still unsent is committed (close already did this
    /// unless the last close came from another process, or the file was written through mmap);
    /// an error here cannot reach the program, so it is logged at error level, and the file
    /// shows what S3 holds.
    pub async fn release(&self, fh: u64) {
        let Some((ino, handle)) = self.files.lock().unwrap().remove(&fh) else {
            return;
        };
        if let FileHandle::Write(writer) = handle {
            loop {
                if let Err(e) = self.commit_writer(ino, &writer).await {
                    let key = writer.lock().await.key().to_string();
                    error!(
                        key,
                        "the file was closed but could not be stored in S3: {e}"
                    );
                }
                // Let go under the writer's lock, so no truncate slips in between the last
                // commit and the release (one that did makes the content new again: commit it).
                let guard = writer.lock().await;
                if guard.is_dirty() && !guard.is_failed() {
                    continue;
                }
                self.inodes.lock().unwrap().release_writer(ino, &writer);
                drop(guard);
                break;
            }
        }
        self.delete_orphan_after_last_close(ino).await;
    }

    /// When no handle of `ino` is open any more and it was unlinked while open, its object
    /// goes now (if S3 still holds the version that was unlinked). If that fails it stays an
    /// orphan (hidden), and the unmount tries again.
    async fn delete_orphan_after_last_close(&self, ino: u64) {
        if self.has_open_handles(ino) {
            return;
        }
        let Some(key) = self.inodes.lock().unwrap().orphan_key_of(ino) else {
            return;
        };
        let _owned = self.owner.claim(vec![Claim::Name(key)]).await;
        let claimed = self.inodes.lock().unwrap().claim_orphan_of(ino);
        if let Some((key, orphan)) = claimed {
            if let Err(e) = self.delete_claimed_orphan(&key, &orphan, true).await {
                error!(key, "an unlinked file's object could not be deleted: {e}");
            }
        }
    }

    /// Commits every writer with unsent data (unmount): nothing written is left behind.
    /// Returns the keys that could not be stored.
    pub async fn commit_all(&self) -> Vec<String> {
        let writers = self.inodes.lock().unwrap().all_writers();
        let mut failed = Vec::new();
        for (ino, writer) in writers {
            let pending = self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .is_some_and(|i| i.is_pending());
            if !pending && writer.lock().await.is_empty_replacement() {
                // Opened to be replaced, and nothing written yet: the old object stays.
                continue;
            }
            if let Err(e) = self.commit_writer(ino, &writer).await {
                let key = writer.lock().await.key().to_string();
                error!(key, "could not be stored in S3 at unmount: {e}");
                failed.push(key);
            }
        }
        failed
    }

    /// chmod, chown, utimes and truncate. Attribute changes of a file in S3 are a server-side
    /// self-copy with the new metadata (other metadata kept).
    pub async fn setattr(&self, ino: u64, change: SetAttr) -> FsResult<Entry> {
        self.check_writable()?;
        // Every change below is made under the key's claim; an inode whose name is gone
        // (unlinked, renamed over) changes only itself.
        let (_owned, binding) = self.own_inode(ino).await?;
        let detached = binding == Binding::Ended;
        let (_, name, key, attrs) = self.current_parts(ino).await?;
        debug!(ino, key, ?change, ?binding, "setattr");
        let writer = self.writer_of(ino);
        let mut new_attrs = attrs.clone();
        if let Some(mode) = change.mode {
            new_attrs.perm = mode & 0o7777;
        }
        if let Some(uid) = change.uid {
            new_attrs.uid = uid;
        }
        if let Some(gid) = change.gid {
            new_attrs.gid = gid;
        }
        if let Some(mtime) = change.mtime {
            new_attrs.mtime = mtime;
        }
        if let Some(atime) = change.atime {
            new_attrs.atime = atime;
        }
        new_attrs.ctime = change.ctime.unwrap_or_else(SystemTime::now);
        let meta_changed = change.changes_metadata();

        if let Some(size) = change.size {
            if attrs.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            // With a writer, a truncate to 0 always reaches it: the size shown may be stale,
            // and the writer's state (nothing to replace yet) is what the commit acts on.
            if size != attrs.size || (size == 0 && writer.is_some()) {
                new_attrs.size = size;
                // The writer counts only if it is still the file's once locked: a release
                // may have let go of it meanwhile.
                let mut guard = match &writer {
                    Some(writer) => {
                        let guard = writer.lock().await;
                        let current = self.inodes.lock().unwrap().is_writer_of(ino, writer);
                        current.then_some(guard)
                    }
                    None => None,
                };
                match guard.as_mut() {
                    Some(guard) if size == 0 => {
                        if let Err(e) = guard.truncate().await {
                            if guard.is_failed() {
                                self.writer_failed(ino, writer.as_ref().expect("locked"));
                            }
                            return Err(e);
                        }
                        // Any upload was aborted: nothing completes under an old name now.
                        self.inodes.lock().unwrap().set_displaced(ino, None);
                    }
                    Some(guard) => {
                        if let Err(e) = guard.truncate_to(size).await {
                            // A part of zeros that failed fails the writer: the file shows
                            // what S3 holds again, as after a failed close.
                            if guard.is_failed() {
                                self.writer_failed(ino, writer.as_ref().expect("locked"));
                            }
                            return Err(e);
                        }
                    }
                    // Unlinked or renamed over, and nobody writes it: its key may be another
                    // file's now.
                    None if detached => {}
                    None => {
                        // truncate(path) with no writer applies at once; not onto a key a
                        // rename is moving or a renamed file's upload still completes on.
                        let _busy = BusyKeys::mark_free(self, vec![key.clone()], None)?;
                        // What S3 holds now is what is cut or grown (the attributes shown may
                        // be stale, a failed writer's say), and its user attributes stay.
                        let stored = match self.store.head(&key).await {
                            Ok(info) => Some(info),
                            Err(StoreError::NotFound) => None,
                            Err(e) => return Err(e.into()),
                        };
                        let mut opts = self.put_options(&name, &new_attrs);
                        if let Some(info) = &stored {
                            let mut metadata = user_attributes(&info.user_metadata);
                            metadata.extend(opts.user_metadata);
                            opts.user_metadata = metadata;
                        }
                        new_attrs.etag = if size == 0 {
                            // Over what was read only: another client's newer version is kept.
                            let expect = match stored.as_ref().and_then(|i| i.etag.clone()) {
                                Some(etag) => Expect::Version(etag),
                                None => Expect::Absent,
                            };
                            self.store
                                .put_expecting(&key, Bytes::new(), &opts, &expect)
                                .await?
                        } else {
                            // To a size: the object rewritten in place, as a writer would.
                            let base = Base {
                                key: key.clone(),
                                etag: stored.as_ref().and_then(|i| i.etag.clone()),
                                size: stored.as_ref().map_or(0, |i| i.size),
                            };
                            let mut writer = self.new_writer(key.clone(), opts).existing(base);
                            writer.truncate_to(size).await?;
                            writer.commit().await?.and_then(|(_, etag)| etag)
                        };
                    }
                }
            }
        }

        if meta_changed {
            // Not in S3 (yet), or without its name (its key may belong to a new file now):
            // the change stays in this mount.
            let local_only = detached
                || self
                    .inodes
                    .lock()
                    .unwrap()
                    .get(ino)
                    .is_some_and(|i| i.is_pending());
            match &writer {
                Some(writer) => {
                    let mut writer = writer.lock().await;
                    // New POSIX headers; the user attributes the writer carries stay.
                    let mut metadata = user_attributes(&writer.opts().user_metadata);
                    metadata.extend(self.put_options(&name, &new_attrs).user_metadata);
                    writer.opts_mut().user_metadata = metadata;
                    // Unsent content carries them at its commit; else a self-copy now, under
                    // the writer's lock, and later changes in place start from the copy.
                    if !writer.is_dirty() && !writer.is_discarded() && !local_only {
                        // Pinned to the version the writer's later changes start from.
                        let pinned = writer
                            .base()
                            .filter(|b| b.size > 0 && b.key == key)
                            .and_then(|b| b.etag.clone());
                        let (etag, _) = self
                            .persist_metadata(&name, &key, &new_attrs, None, pinned.as_deref())
                            .await?;
                        writer.rebase(key.clone(), etag.clone());
                        if new_attrs.kind == Kind::File {
                            new_attrs.etag = etag;
                        }
                    }
                }
                None if !local_only => {
                    let headers = change.headers(&new_attrs);
                    let (etag, stored) = self
                        .persist_metadata(&name, &key, &new_attrs, Some(headers), None)
                        .await?;
                    // What S3 holds now (read under the claim) is what the file shows.
                    if let Some(stored) = stored {
                        new_attrs = new_attrs.with_posix_metadata(&stored);
                    }
                    if new_attrs.kind == Kind::File {
                        new_attrs.etag = etag;
                    }
                }
                None => {}
            }
        }
        self.inodes
            .lock()
            .unwrap()
            .set_attrs(ino, new_attrs.clone(), self.expiry());
        Ok(Entry {
            ino,
            attrs: new_attrs,
        })
    }

    /// posix_fallocate (mode 0): the file grows to at least `end` bytes (zeros); S3 has no
    /// space to reserve, so nothing else happens.
    pub async fn allocate(&self, ino: u64, end: u64) -> FsResult<()> {
        let size = self.current_parts(ino).await?.3.size;
        if end > size {
            let change = SetAttr {
                size: Some(end),
                ..SetAttr::default()
            };
            self.setattr(ino, change).await?;
        }
        Ok(())
    }

    /// Writes `attrs` as the object's metadata (only the `headers` given, when given, over
    /// what S3 holds): a self-copy with metadata REPLACE that keeps the content type and any
    /// other metadata; a directory without marker gets one. Runs under the key's claim, so
    /// what it read is still what S3 holds when it writes. Returns the object's new ETag and
    /// the metadata it stored.
    async fn persist_metadata(
        &self,
        name: &str,
        key: &str,
        attrs: &Attributes,
        headers: Option<std::collections::HashMap<String, String>>,
        if_match: Option<&str>,
    ) -> FsResult<(
        Option<String>,
        Option<std::collections::HashMap<String, String>>,
    )> {
        let mut opts = self.put_options(name, attrs);
        match self.store.head(key).await {
            Ok(info) => {
                let mut metadata = info.user_metadata;
                metadata.extend(headers.unwrap_or(opts.user_metadata));
                opts.user_metadata = metadata;
                if info.content_type.is_some() {
                    opts.content_type = info.content_type;
                }
                // Pinned to the version read: another client's newer one is never given the
                // old content (ESTALE instead).
                let pinned = if_match.or(info.etag.as_deref());
                let etag = self
                    .copy_object_pinned(key, key, info.size, &opts, true, pinned)
                    .await?;
                Ok((etag, Some(opts.user_metadata)))
            }
            Err(StoreError::NotFound) if attrs.kind == Kind::Dir => {
                let etag = self.store.put(key, Bytes::new(), &opts).await?;
                Ok((etag, Some(opts.user_metadata)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// CopyObject, or a multipart UploadPartCopy for objects over 5 GiB (journaled).
    pub(super) async fn copy_object(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> FsResult<Option<String>> {
        self.copy_object_pinned(source, dest, size, opts, replace_metadata, None)
            .await
    }

    /// `copy_object` of one version of the source (its ETag): ESTALE when it changed.
    pub(super) async fn copy_object_pinned(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: Option<&str>,
    ) -> FsResult<Option<String>> {
        let copier = ServerCopy {
            store: self.store.as_ref(),
            journal: self.journal.as_deref(),
            if_match,
        };
        copier
            .copy(source, dest, size, opts, replace_metadata)
            .await
    }

    /// Resolves `name` in `parent` (from the table when fresh, else from S3), holding a
    /// reference on its inode until the returned guard drops, so the inode cannot be forgotten
    /// (by a concurrent readdirplus's forget) in the middle of the operation.
    async fn resolve(&self, parent: u64, name: &OsStr, owned: &Owned<'_>) -> FsResult<Held<'_, S>> {
        let entry = self
            .lookup_entry(parent, name, true, owned.holder())
            .await?;
        Ok(Held { fs: self, entry })
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let owned = self.own_name(parent, validate_component(name)?).await?;
        let entry = self.resolve(parent, name, &owned).await?;
        if entry.attrs.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let name = validate_component(name)?;
        let key = self.inode_parts(entry.ino)?.2;
        // No open may become the writer while the name goes, and no rename of a directory
        // above may move the object meanwhile.
        let _busy = BusyKeys::mark_unless_moving(self, key)?;
        // The writer's lock is kept to the end, so no commit can put the file back after it
        // is deleted; it is discarded only once the delete succeeded.
        let writer = self.writer_of(entry.ino);
        let mut guard = match &writer {
            Some(writer) => Some(writer.lock().await),
            None => None,
        };
        let (key, pending) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(entry.ino).ok_or(FsError::NotFound)?;
            (inode.key.clone(), inode.is_pending())
        };
        if self.has_open_handles(entry.ino) {
            // Open somewhere: the name goes now, and the handles go on reading and writing
            // (POSIX); its object is deleted when the last of them closes.
            // The version S3 holds under the name now is the one deleted at the last close
            // (not a newer one another client may write meanwhile).
            let stored = if pending {
                // Nothing of it in S3, unless a rename that failed midway copied something.
                self.delete_if_there(&key).await?;
                None
            } else {
                match self.store.head(&key).await {
                    Ok(info) => Some((key, info.etag)),
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(guard) = guard.as_mut() {
                guard.orphan().await;
            }
            {
                let mut inodes = self.inodes.lock().unwrap();
                inodes.set_displaced(entry.ino, None);
                inodes.orphan(entry.ino, stored);
            }
            drop(guard);
            self.snapshots.remove(parent, name);
            self.negative.insert(parent, name);
            self.touch_dir(parent);
            drop(_busy);
            drop(owned);
            // The last handle may have closed while the object was looked at above, before
            // the orphan was recorded: its close found nothing to delete.
            self.delete_orphan_after_last_close(entry.ino).await;
            return Ok(());
        }
        // Deleted even when the file was only in this mount: a rename that failed midway may
        // have copied something there. Some servers answer a missing key with 404.
        match self.store.delete(&key).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(guard) = guard.as_mut() {
            guard.discard().await;
        }
        {
            let mut inodes = self.inodes.lock().unwrap();
            inodes.set_displaced(entry.ino, None);
            inodes.detach(parent, name);
        }
        drop(guard);
        self.snapshots.remove(parent, name);
        self.negative.insert(parent, name);
        self.touch_dir(parent);
        Ok(())
    }

    /// DeleteObject, where a 404 (some servers' answer for a missing key) is success.
    async fn delete_if_there(&self, key: &str) -> FsResult<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// True while a handle of `ino` is open.
    fn has_open_handles(&self, ino: u64) -> bool {
        self.files.lock().unwrap().values().any(|(i, _)| *i == ino)
    }

    /// A new entry is about to be made under `key`: the object of a file unlinked while open
    /// that waits there for its last close is deleted first, so it cannot come back nor be
    /// deleted later over the new one. EBUSY while another request is deleting it.
    pub(super) async fn settle_orphan(&self, key: &str) -> FsResult<()> {
        let claim = self.inodes.lock().unwrap().claim_orphan_key(key);
        match claim {
            OrphanClaim::None => Ok(()),
            OrphanClaim::InFlight => Err(FsError::Busy),
            OrphanClaim::Claimed(orphan) => self.delete_claimed_orphan(key, &orphan, false).await,
        }
    }

    /// Deletes the object of an orphan claimed by `claim_orphan_of` or `claim_orphan_key`
    /// (`if_unchanged`: only if S3 still holds the version that was unlinked), then ends the
    /// claim and lets go of its busy key. Until then the key stays hidden, and no new file
    /// can be made under it that this delete would remove.
    async fn delete_claimed_orphan(
        &self,
        key: &str,
        orphan: &Orphan,
        if_unchanged: bool,
    ) -> FsResult<()> {
        let mut claim = OrphanDeletion::adopt(self, key);
        let deleted = if if_unchanged {
            self.delete_orphan(key, orphan).await
        } else {
            self.delete_if_there(key).await
        };
        claim.deleted = deleted.is_ok();
        deleted
    }

    /// Deletes the object an unlinked file left for its open handles, unless S3 holds another
    /// version under the key now (written by another client since: not ours to delete).
    async fn delete_orphan(&self, key: &str, orphan: &Orphan) -> FsResult<()> {
        match &orphan.etag {
            // Only that version (DeleteObject If-Match, checked with a HEAD first).
            Some(etag) => Ok(self.store.delete_version(key, etag).await?),
            None => self.delete_if_there(key).await,
        }
    }

    /// Deletes the objects of every file unlinked while open (unmount). Each stays hidden
    /// until it is gone.
    pub async fn delete_orphans(&self) {
        let orphans = self.inodes.lock().unwrap().claim_all_orphans();
        for (key, orphan) in orphans {
            let mut claim = OrphanDeletion::adopt(self, &key);
            let _owned = self.owner.claim(vec![Claim::Name(key.clone())]).await;
            // The last chance: a few tries more than the store's own retries.
            let mut tries = 1;
            loop {
                match self.delete_orphan(&key, &orphan).await {
                    Ok(()) => {
                        claim.deleted = true;
                        break;
                    }
                    Err(e) if tries == ORPHAN_DELETE_TRIES_AT_UNMOUNT => {
                        error!(key, "an unlinked file's object could not be deleted: {e}");
                        break;
                    }
                    Err(_) => tries += 1,
                }
            }
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        let name_str = validate_component(name)?;
        let _owned = self.own_name(parent, name_str).await?;
        let parent_key = self.dir_key(parent)?;
        let key = format!("{}/", child_key(&parent_key, name_str)?);
        match self.resolve(parent, name, &_owned).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let attrs = Attributes::new(Kind::Dir, mode, caller.uid, caller.gid);
        let opts = self.put_options(name_str, &attrs);
        self.store.put(&key, Bytes::new(), &opts).await?;
        self.negative.remove(parent, name_str);
        self.snapshots.add(parent, name_str);
        self.touch_dir(parent);
        let mut inodes = self.inodes.lock().unwrap();
        let inode = inodes.upsert_child(parent, name_str, key, attrs, self.expiry(), true);
        // A directory this mount just made is empty: lookups in it need not ask.
        self.snapshots
            .set(inode.ino, Default::default(), self.snapshots.epoch());
        Ok(Entry {
            ino: inode.ino,
            attrs: inode.attrs.clone(),
        })
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let _owned = self.own_name(parent, validate_component(name)?).await?;
        let entry = self.resolve(parent, name, &_owned).await?;
        if entry.attrs.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let name = validate_component(name)?;
        let prefix = self.inode_parts(entry.ino)?.2;
        if self.inodes.lock().unwrap().has_pending_children(entry.ino) {
            return Err(FsError::NotEmpty);
        }
        let below = self
            .store
            .list_page(&prefix, false, None, Some(100))
            .await?;
        // Objects of files unlinked while open do not count: their names are gone. They go
        // with the directory (their open handles lose what they had not read yet), or the
        // directory would come back as a prefix of them.
        let (orphans, others): (Vec<_>, Vec<_>) = {
            let inodes = self.inodes.lock().unwrap();
            below
                .objects
                .iter()
                .filter(|o| o.key != prefix)
                .partition(|o| inodes.is_orphan_object(&o.key, o.etag.as_deref()))
        };
        let more = below.next_token.is_some() && !orphans.is_empty();
        if !others.is_empty() || !below.prefixes.is_empty() || more {
            return Err(FsError::NotEmpty);
        }
        for object in orphans {
            let claim = self.inodes.lock().unwrap().claim_orphan_key(&object.key);
            match claim {
                OrphanClaim::None => {} // its last close deleted it meanwhile
                OrphanClaim::InFlight => return Err(FsError::Busy),
                OrphanClaim::Claimed(orphan) => {
                    self.delete_claimed_orphan(&object.key, &orphan, false)
                        .await?
                }
            }
        }
        self.store.delete(&prefix).await?;
        self.inodes.lock().unwrap().detach(parent, name);
        self.snapshots.remove(parent, name);
        self.snapshots.forget(entry.ino);
        self.negative.insert(parent, name);
        self.touch_dir(parent);
        Ok(())
    }

    /// rename(2). A file is copied server-side then deleted; a file open for writing takes
    /// its upload along (see `FileWriter::rehome`). A directory moves every key below it
    /// (copies first, with bounded concurrency, then deletes): not atomic, but no object is
    /// ever lost, since no source is deleted before every copy succeeded.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        self.check_not_bucket_level(parent)?;
        self.check_not_bucket_level(new_parent)?;
        let name_str = validate_component(name)?.to_string();
        let new_name_str = validate_component(new_name)?.to_string();
        // Both names, as files and as directory trees, for the whole move.
        let _owned = self
            .own_names((parent, &name_str), (new_parent, &new_name_str))
            .await?;
        let source = self.resolve(parent, name, &_owned).await?;
        let new_parent_key = self.dir_key(new_parent)?;
        let new_key = child_key(&new_parent_key, &new_name_str)?;
        let dest = match self.resolve(new_parent, new_name, &_owned).await {
            Ok(dest) => Some(dest),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if dest.as_ref().is_some_and(|d| d.ino == source.ino) {
            return Ok(());
        }
        if no_replace && dest.is_some() {
            return Err(FsError::Exists);
        }
        match (source.attrs.kind, dest.as_ref().map(|d| d.attrs.kind)) {
            (kind, Some(Kind::Dir)) if kind != Kind::Dir => return Err(FsError::IsDir),
            (Kind::Dir, Some(kind)) if kind != Kind::Dir => return Err(FsError::NotDir),
            (Kind::Dir, Some(Kind::Dir)) => {
                let dest_prefix = format!("{new_key}/");
                // Files being written below it are not in S3 yet, but they are its entries.
                let writing_below = {
                    let inodes = self.inodes.lock().unwrap();
                    let dest_ino = dest.as_ref().map(|d| d.ino).expect("matched");
                    inodes.has_pending_children(dest_ino)
                        || !inodes.writers_below(&dest_prefix).is_empty()
                };
                if writing_below {
                    return Err(FsError::NotEmpty);
                }
                let below = self
                    .store
                    .list_page(&dest_prefix, false, None, Some(2))
                    .await?;
                if below.objects.iter().any(|o| o.key != dest_prefix) || !below.prefixes.is_empty()
                {
                    return Err(FsError::NotEmpty);
                }
            }
            _ => {}
        }
        if source.attrs.kind.is_dir() && self.is_same_or_below(new_parent, source.ino) {
            return Err(FsError::Invalid); // a directory cannot move into itself
        }
        // No open may become a writer of either name while they move.
        let source_key = self.inode_parts(source.ino)?.2;
        let busy = match source.attrs.kind {
            Kind::Dir => vec![source_key, format!("{new_key}/")],
            _ => vec![source_key, new_key.clone()],
        };
        // A file renamed back onto the key its own upload completes under is no conflict.
        let own_displaced = self
            .inodes
            .lock()
            .unwrap()
            .get(source.ino)
            .and_then(|i| i.displaced().map(str::to_string));
        let _busy = match source.attrs.kind {
            Kind::Dir => BusyKeys::mark_free_tree(self, busy)?,
            _ => BusyKeys::mark_free(self, busy, own_displaced.as_deref())?,
        };
        let moved = match source.attrs.kind.is_dir() {
            false => match self.settle_orphan(&new_key).await {
                Ok(()) => {
                    let dest_ino = dest.as_ref().map(|d| d.ino);
                    self.rename_file(
                        source.ino,
                        dest_ino,
                        new_parent,
                        &new_name_str,
                        new_key.clone(),
                    )
                    .await
                }
                Err(e) => Err(e),
            },
            true => {
                let source_key = self.inode_parts(source.ino)?.2;
                let dest_prefix = format!("{new_key}/");
                debug!(source_key, dest_prefix, "rename directory");
                self.rename_dir(&source_key, &dest_prefix, dest.is_some())
                    .await
            }
        };
        if let Err(e) = moved {
            // S3 may hold part of the move now (copies made, some sources deleted): what
            // this mount knew of both names is asked for again.
            self.negative.remove(new_parent, &new_name_str);
            self.snapshots.forget(parent);
            self.snapshots.forget(new_parent);
            let mut inodes = self.inodes.lock().unwrap();
            inodes.expire(source.ino);
            if source.attrs.kind.is_dir() {
                let source_key = inodes.get(source.ino).map(|i| i.key.clone());
                if let Some(source_key) = source_key {
                    inodes.expire_below(&source_key);
                }
            }
            return Err(e);
        }
        match source.attrs.kind.is_dir() {
            false => {}
            true => {
                let source_key = self.inode_parts(source.ino)?.2;
                let dest_prefix = format!("{new_key}/");
                let mut inodes = self.inodes.lock().unwrap();
                inodes.move_entry(
                    source.ino,
                    new_parent,
                    &new_name_str,
                    dest_prefix.clone(),
                    self.expiry(),
                );
                inodes.rekey_below(&source_key, &dest_prefix);
            }
        }
        self.negative.remove(new_parent, &new_name_str);
        self.negative.insert(parent, &name_str);
        self.snapshots.remove(parent, &name_str);
        self.snapshots.add(new_parent, &new_name_str);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        Ok(())
    }

    /// Renames the file `ino` to `new_name` in `new_parent` (key `new_key`), replacing `dest`.
    /// Both files' writers, if any, are locked throughout (in inode order, so two renames
    /// cannot deadlock), so no commit runs between the move in S3 and the move in the table;
    /// nothing changes in any writer before every S3 step succeeded.
    async fn rename_file(
        &self,
        ino: u64,
        dest: Option<u64>,
        new_parent: u64,
        new_name: &str,
        new_key: String,
    ) -> FsResult<()> {
        let source_writer = self.writer_of(ino);
        let dest_writer = dest.and_then(|d| self.writer_of(d));
        let (mut source_guard, mut dest_guard) = match dest {
            Some(d) if d < ino => {
                let dest_guard = lock_opt(&dest_writer).await;
                (lock_opt(&source_writer).await, dest_guard)
            }
            _ => {
                let source_guard = lock_opt(&source_writer).await;
                (source_guard, lock_opt(&dest_writer).await)
            }
        };
        let (source_key, attrs, pending, dest_stored) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            let dest_stored = dest
                .and_then(|d| inodes.get(d))
                .is_some_and(|d| !d.is_pending());
            (
                inode.key.clone(),
                inode.attrs.clone(),
                inode.is_pending(),
                dest_stored,
            )
        };
        debug!(source_key, new_key, "rename");
        let mut new_etag = None;
        // A failed writer will store nothing: the file is what S3 holds, and moves as such.
        let dirty = source_guard
            .as_ref()
            .is_some_and(|g| g.is_dirty() && !g.is_failed());
        // A file changed in place needs its old object (the base of the change) under the new
        // name too: it is copied now, like a clean file, and the change follows it.
        let patch_base = source_guard.as_ref().and_then(|g| g.patch_base_size());
        let streamed = dirty && patch_base.is_none();
        if streamed {
            // Its new content is not in S3 yet: it goes up under the new name at commit. The
            // old name's object (the version being overwritten) goes now, since the old name
            // no longer exists; an object under the new name stays until the new content
            // replaces it.
            if !pending {
                self.store.delete(&source_key).await?;
            }
        } else {
            let opts = self.put_options(new_name, &attrs);
            let stored_size = patch_base.unwrap_or(attrs.size);
            // A writer's content starts from one version of the object (its base): that is
            // the version that moves, or the rename fails (ESTALE) if another client replaced
            // it meanwhile, rather than the change landing on their version.
            let pinned = source_guard
                .as_ref()
                .and_then(|g| g.base())
                .filter(|b| b.size > 0 && b.key == source_key)
                .and_then(|b| b.etag.clone());
            new_etag = self
                .copy_object_pinned(
                    &source_key,
                    &new_key,
                    stored_size,
                    &opts,
                    false,
                    pinned.as_deref(),
                )
                .await?;
            if let Some(d) = dest {
                // The new name holds an object now, whatever happens next.
                self.inodes.lock().unwrap().set_pending(d, false);
            }
            self.store.delete(&source_key).await?;
        }
        // Every S3 step succeeded: now the writers follow.
        if let Some(writer) = source_guard.as_mut() {
            writer.set_key(new_key.clone());
            if !streamed {
                writer.rebase(new_key.clone(), new_etag.clone());
            }
        }
        if let Some(writer) = dest_guard.as_mut() {
            // Renamed over a file open for writing: it has no name now and overwrites nothing.
            writer.discard().await;
        }
        let displaced = source_guard
            .as_ref()
            .and_then(|g| g.displaced_key().map(str::to_string));
        let mut inodes = self.inodes.lock().unwrap();
        if let Some(d) = dest {
            inodes.set_displaced(d, None);
        }
        // Attributes that were stale (a failed writer's, say) stay so: the next use asks S3.
        let was_fresh = inodes.get(ino).is_some_and(|i| i.expires > Instant::now());
        inodes.move_entry(ino, new_parent, new_name, new_key, self.expiry());
        if source_guard.is_some() {
            inodes.set_displaced(ino, displaced);
        }
        if let Some(etag) = new_etag.filter(|_| !streamed) {
            // A copy may carry a new ETag: record it, so listings keep matching this entry.
            let attrs = Attributes {
                etag: Some(etag),
                ctime: SystemTime::now(),
                ..attrs
            };
            inodes.set_attrs(ino, attrs, self.expiry());
        }
        if !was_fresh && !dirty {
            inodes.expire(ino);
        }
        if streamed {
            // Until its commit the new name exists only in this mount, unless S3 holds an
            // object under it (which stays until the new content replaces it, and shows again
            // if that fails).
            inodes.set_pending(ino, !dest_stored);
        }
        Ok(())
    }

    /// Moves every key below `source_prefix` to `dest_prefix` (an empty directory there when
    /// `dest_existed`).
    async fn rename_dir(
        &self,
        source_prefix: &str,
        dest_prefix: &str,
        dest_existed: bool,
    ) -> FsResult<()> {
        if !self
            .inodes
            .lock()
            .unwrap()
            .writers_below(source_prefix)
            .is_empty()
        {
            return Err(FsError::Busy);
        }
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list_page(source_prefix, false, token, None)
                .await?;
            objects.extend(page.objects);
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        let opts = &self.config.upload;
        // Objects of files unlinked while open stay where they are (hidden) until their last
        // close: a move would bring them back under the new name.
        {
            let inodes = self.inodes.lock().unwrap();
            objects.retain(|o| !inodes.is_orphan_key(&o.key));
        }
        let moves: Vec<(String, String, u64)> = objects
            .into_iter()
            .map(|o| {
                let dest = format!("{dest_prefix}{}", &o.key[source_prefix.len()..]);
                (o.key, dest, o.size)
            })
            .collect();
        // An object of a file unlinked while open that waits under a destination key goes
        // first, as for any new entry (its record would hide the moved file, and its last
        // close delete it).
        for (_, dest, _) in &moves {
            self.settle_orphan(dest).await?;
        }
        // Boxed and collected first: a lazily mapped stream of borrowing futures trips the
        // compiler's higher-ranked lifetime check when the caller is spawned.
        let copies: Vec<BoxFuture<'_, FsResult<Option<String>>>> = moves
            .iter()
            .map(|(source, dest, size)| self.copy_object(source, dest, *size, opts, false).boxed())
            .collect();
        let copied: Vec<FsResult<Option<String>>> = futures::stream::iter(copies)
            .buffered(RENAME_CONCURRENCY)
            .collect()
            .await;
        if let Some(Err(e)) = copied.iter().find(|c| c.is_err()) {
            // Nothing deleted yet: the old directory is whole. The copies made are taken
            // back, so the new name is as it was (empty or absent) unless that fails too.
            // (Not the destination's marker when an empty directory renamed over had one.)
            let undo: Vec<BoxFuture<'_, FsResult<()>>> = moves
                .iter()
                .zip(&copied)
                .filter(|((_, dest, _), c)| c.is_ok() && !(dest_existed && dest == dest_prefix))
                .map(|((_, dest, _), _)| self.delete_if_there(dest).boxed())
                .collect();
            let undone: Vec<FsResult<()>> = futures::stream::iter(undo)
                .buffer_unordered(RENAME_CONCURRENCY)
                .collect()
                .await;
            let left = undone.iter().filter(|u| u.is_err()).count();
            error!(
                source_prefix,
                dest_prefix,
                copies_left = left,
                "directory rename failed while copying ({e}): every object is still under the \
                 old name; copies left under the new name: {left}"
            );
            return Err(e.clone());
        }
        debug!(
            count = moves.len(),
            source_prefix, dest_prefix, "directory copied; deleting sources"
        );
        let deletes: Vec<BoxFuture<'_, FsResult<()>>> = moves
            .iter()
            .map(|(source, _, _)| self.delete_if_there(source).boxed())
            .collect();
        let deleted: Vec<FsResult<()>> = futures::stream::iter(deletes)
            .buffer_unordered(RENAME_CONCURRENCY)
            .collect()
            .await;
        let left = deleted.iter().filter(|d| d.is_err()).count();
        if let Some(Err(e)) = deleted.into_iter().find(|d| d.is_err()) {
            error!(
                source_prefix,
                dest_prefix,
                sources_left = left,
                "directory rename failed while deleting the old objects ({e}): every object is \
                 under the new name; {left} are still under the old name too (remove the old \
                 directory to finish)"
            );
            return Err(e);
        }
        Ok(())
    }

    /// True when `ino` is `ancestor` or lies below it.
    fn is_same_or_below(&self, mut ino: u64, ancestor: u64) -> bool {
        let inodes = self.inodes.lock().unwrap();
        loop {
            if ino == ancestor {
                return true;
            }
            match inodes.get(ino) {
                Some(inode) if inode.parent != ino => ino = inode.parent,
                _ => return false,
            }
        }
    }
}

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

mod commit;
mod entries;
mod open;
mod rename;
mod setattr;

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
        .with_overdraft(self.write_overdraft.clone())
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
}

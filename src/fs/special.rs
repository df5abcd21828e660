//! Symlinks, FIFOs, sockets and device nodes, stored as s3fs stores them: one object whose
//! `x-amz-meta-mode` carries the type bits. A symlink's body is its target; the others are
//! empty. They are written with one PutObject when made, so they are in S3 at once; `tar x`
//! and `rsync -a` of trees that hold them work, and s3fs shows them the same way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use bytes::Bytes;
use tracing::debug;

use super::attrs::{Attributes, Kind};
use super::error::{FsError, FsResult};
use super::names::{child_key, validate_component};
use super::namespace::Caller;
use super::{Entry, Fs};
use crate::store::ObjectStore;
use crate::store::{Expect, StoreError};

/// Longest symlink target, as Linux's PATH_MAX counts it (with its NUL).
const MAX_TARGET_BYTES: usize = 4095;

impl<S: ObjectStore> Fs<S> {
    /// symlink(2): `name` in `parent` points to `target`.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> FsResult<Entry> {
        let target = target.as_bytes();
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > MAX_TARGET_BYTES {
            return Err(FsError::NameTooLong);
        }
        let attrs = Attributes {
            size: target.len() as u64,
            ..Attributes::new(Kind::Symlink, 0o777, caller.uid, caller.gid)
        };
        self.make_object(parent, name, attrs, Bytes::copy_from_slice(target))
            .await
    }

    /// mknod(2) of a FIFO, socket or device node (`mode` carries the type bits).
    pub async fn mknod_special(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Entry> {
        let kind = Kind::from_mode(mode);
        if !kind.is_special() {
            return Err(FsError::Invalid);
        }
        let attrs = Attributes {
            rdev,
            ..Attributes::new(kind, mode, caller.uid, caller.gid)
        };
        self.make_object(parent, name, attrs, Bytes::new()).await
    }

    /// readlink(2): the symlink's target, its object's body.
    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let (key, attrs) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            (inode.key.clone(), inode.attrs.clone())
        };
        if attrs.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        let range = 0..(MAX_TARGET_BYTES as u64 + 1);
        Ok(self.store.get_range(&key, range, None).await?)
    }

    /// Creates the object of a new symlink or special file; EEXIST when the name is taken.
    async fn make_object(
        &self,
        parent: u64,
        name: &OsStr,
        attrs: Attributes,
        body: Bytes,
    ) -> FsResult<Entry> {
        self.check_writable()?;
        self.check_not_bucket_level(parent)?;
        let name_str = validate_component(name)?;
        let _owned = self.own_name(parent, name_str).await?;
        let parent_key = self.dir_key(parent)?;
        let key = child_key(&parent_key, name_str)?;
        match self
            .lookup_entry(parent, name, false, _owned.holder())
            .await
        {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // Not onto a name a rename or unlink is moving, nor onto a renamed file's upload.
        let _busy = self.busy_keys(vec![key.clone()])?;
        self.settle_orphan(&key).await?;
        debug!(key, kind = ?attrs.kind, "make object");
        let opts = self.put_options(name_str, &attrs);
        // The lookup's "absent" may be cached: the object is made only where S3 holds none.
        let etag = match self
            .store
            .put_expecting(&key, body, &opts, &Expect::Absent)
            .await
        {
            Err(StoreError::PreconditionFailed) => return Err(FsError::Exists),
            made => made?,
        };
        let attrs = Attributes { etag, ..attrs };
        self.negative.remove(parent, name_str);
        self.snapshots.add(parent, name_str);
        self.touch_dir(parent);
        let mut inodes = self.inodes.lock().unwrap();
        let inode = inodes.upsert_child(parent, name_str, key, attrs, self.expiry(), true);
        Ok(Entry {
            ino: inode.ino,
            attrs: inode.attrs.clone(),
        })
    }
}

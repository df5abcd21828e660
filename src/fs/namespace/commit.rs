//! Reading and writing through open handles, and storing what was written: write, copy_file_range, flush/fsync (commit), release, and the commit of everything at unmount.

use super::*;

impl<S: ObjectStore> Fs<S> {
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
    pub(in crate::fs) fn note_written(
        &self,
        ino: u64,
        writer: &crate::fs::SharedWriter<S>,
        size: u64,
    ) {
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

    pub(in crate::fs) async fn commit_writer(
        &self,
        ino: u64,
        writer: &crate::fs::SharedWriter<S>,
    ) -> FsResult<()> {
        // The key the content goes to, and where a renamed-away upload completes (a writer
        // that is not the file's any more stores nothing).
        // (The renamed-away key as a name: the object shows there for a moment, and reads
        // wait rather than take it for a file.)
        let (_owned, binding) = self
            .own(|table| {
                if !table.is_writer_of(ino, writer) {
                    return Ok((Vec::new(), None));
                }
                let binding = crate::fs::claims::binding_of(table, ino)?;
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
            let error = guard.lose_name().await;
            drop(guard);
            self.writer_failed(ino, writer);
            return Err(error);
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
    pub(in crate::fs) async fn delete_orphan_after_last_close(&self, ino: u64) {
        if self.has_open_handles(ino) {
            return;
        }
        let Some(key) = self.inodes.lock().unwrap().orphan_key_of(ino) else {
            return;
        };
        let _owned = self.owner.claim(vec![Claim::Name(key)]).await;
        let claimed = self.inodes.lock().unwrap().claim_orphan_of(ino);
        if let Some((key, orphan)) = claimed {
            if let Err(e) = self.delete_claimed_orphan(&key, &orphan).await {
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
}

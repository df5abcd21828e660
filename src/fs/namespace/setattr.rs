//! chmod, chown, utimes, truncate and fallocate, and the server-side copies that store metadata.

use super::*;

impl<S: ObjectStore> Fs<S> {
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
                    let previous =
                        std::mem::replace(&mut writer.opts_mut().user_metadata, metadata);
                    // Unsent content carries them at its commit; else a self-copy now, under
                    // the writer's lock, and later changes in place start from the copy.
                    if !writer.is_dirty() && !writer.is_discarded() && !local_only {
                        // Pinned to the version the writer's later changes start from.
                        let pinned = writer
                            .base()
                            .filter(|b| b.key == key)
                            .and_then(|b| b.etag.clone());
                        let persisted = self
                            .persist_metadata(&name, &key, &new_attrs, None, pinned.as_deref())
                            .await;
                        let (etag, _) = match persisted {
                            Ok(persisted) => persisted,
                            Err(e) => {
                                // A change that failed changes nothing, not even later.
                                writer.opts_mut().user_metadata = previous;
                                return Err(e);
                            }
                        };
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
    pub(in crate::fs) async fn persist_metadata(
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

    /// CopyObject, or a multipart UploadPartCopy for objects over 5 GiB (journaled), of one
    /// version of the source (its ETag) when `if_match` is given: ESTALE when it changed.
    pub(in crate::fs) async fn copy_object_pinned(
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
}

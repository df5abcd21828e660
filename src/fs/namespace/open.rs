//! Creating and opening files: create (with `O_EXCL`), open for reading or writing (one writer per file), and what happens when a writer fails.

use super::*;

impl<S: ObjectStore> Fs<S> {
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
        // "not found" nothing has overtaken), S3 is asked. With O_EXCL it is asked even after
        // a recent "not found": another client may have made the name since (a lock file).
        let exclusive = flags & libc::O_EXCL != 0;
        let known = self.inodes.lock().unwrap().child(parent, name).is_some()
            || (!exclusive && self.negative.contains(parent, name));
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
        // O_EXCL: its first upload expects no object there (If-None-Match), so another
        // client's file made in the meantime is never replaced.
        let writer = self.new_writer(key.clone(), opts).exclusive(exclusive);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
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
    pub(in crate::fs) async fn stored_user_attributes(
        &self,
        key: &str,
    ) -> FsResult<std::collections::HashMap<String, String>> {
        match self.store.head(key).await {
            Ok(info) => Ok(user_attributes(&info.user_metadata)),
            Err(StoreError::NotFound) => Ok(Default::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub(in crate::fs) fn writer_of(&self, ino: u64) -> Option<crate::fs::SharedWriter<S>> {
        let inodes = self.inodes.lock().unwrap();
        inodes.get(ino).and_then(|i| i.writer().cloned())
    }

    /// After `writer` failed for good: the inode lets go of it (its handle keeps reporting
    /// the error), and the file's name shows what S3 holds. A file that was never stored
    /// disappears; an overwritten one shows the old object again at its next use.
    pub(in crate::fs) fn writer_failed(&self, ino: u64, writer: &crate::fs::SharedWriter<S>) {
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
}

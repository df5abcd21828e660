//! Making and removing names: unlink (of open files too: their objects wait for the last close), mkdir and rmdir.

use super::*;

impl<S: ObjectStore> Fs<S> {
    /// Resolves `name` in `parent` (from the table when fresh, else from S3), holding a
    /// reference on its inode until the returned guard drops, so the inode cannot be forgotten
    /// (by a concurrent readdirplus's forget) in the middle of the operation.
    pub(super) async fn resolve(
        &self,
        parent: u64,
        name: &OsStr,
        owned: &Owned<'_>,
    ) -> FsResult<Held<'_, S>> {
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
                // Nothing of it in S3: an object there now is another client's (this mount
                // never saw it), not this file's to delete.
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
    pub(in crate::fs) async fn delete_if_there(&self, key: &str) -> FsResult<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// True while a handle of `ino` is open.
    pub(in crate::fs) fn has_open_handles(&self, ino: u64) -> bool {
        self.files.lock().unwrap().values().any(|(i, _)| *i == ino)
    }

    /// A new entry is about to be made under `key`: the object of a file unlinked while open
    /// that waits there for its last close is deleted first, so it cannot come back nor be
    /// deleted later over the new one. EBUSY while another request is deleting it.
    pub(in crate::fs) async fn settle_orphan(&self, key: &str) -> FsResult<()> {
        let claim = self.inodes.lock().unwrap().claim_orphan_key(key);
        match claim {
            OrphanClaim::None => Ok(()),
            OrphanClaim::InFlight => Err(FsError::Busy),
            OrphanClaim::Claimed(orphan) => self.delete_claimed_orphan(key, &orphan).await,
        }
    }

    /// Deletes the object of an orphan claimed by `claim_orphan_of` or `claim_orphan_key`
    /// (only the version that was unlinked: another client's newer one there is not ours),
    /// then ends the claim and lets go of its busy key. Until then the key stays hidden, and
    /// no new file can be made under it that this delete would remove.
    pub(in crate::fs) async fn delete_claimed_orphan(
        &self,
        key: &str,
        orphan: &Orphan,
    ) -> FsResult<()> {
        let mut claim = OrphanDeletion::adopt(self, key);
        let deleted = self.delete_orphan(key, orphan).await;
        claim.deleted = deleted.is_ok();
        deleted
    }

    /// Deletes the object an unlinked file left for its open handles, unless S3 holds another
    /// version under the key now (written by another client since: not ours to delete).
    pub(in crate::fs) async fn delete_orphan(&self, key: &str, orphan: &Orphan) -> FsResult<()> {
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
        // A marker object with content (an odd object some other tool made, `dir/` with a
        // body): rmdir would delete that content with it, so the directory counts as not empty.
        if let Some(marker) = below.objects.iter().find(|o| o.key == prefix && o.size > 0) {
            tracing::warn!(
                key = %prefix,
                size = marker.size,
                "rmdir refused (ENOTEMPTY): the directory's marker object holds data, which \
                 rmdir would delete; remove it through S3 if it is not needed"
            );
            return Err(FsError::NotEmpty);
        }
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
                    self.delete_claimed_orphan(&object.key, &orphan).await?
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
}

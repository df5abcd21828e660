//! Lookups and attributes: a name in a directory (answered from the inode table, the
//! negative cache and directory snapshots when they can, else by one HEAD and one LIST at
//! once), and the attributes of an inode (asked again once they expire).

use super::*;
use crate::store::ListPage;

impl<S: ObjectStore> Fs<S> {
    /// Looks `name` up in directory `parent`; the kernel holds one more reference on success.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        self.lookup_entry(parent, name, true, Holder::default())
            .await
    }

    /// Lookup; `counted` says whether the kernel takes a reference (false for internal use).
    /// `reader`: the claim of the operation that asks, if it holds one (its own change of
    /// the name does not hold up its lookups).
    pub(super) async fn lookup_entry(
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
    pub(super) async fn lookup_attempt(
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
        debug!(parent, name, ?answer, "a lookup asks the store");
        let listed = match answer {
            SnapshotAnswer::Present(kind) => kind,
            _ => None,
        };
        // A directory known here whose names were known (small) and have expired: its lookup
        // renews them (see `probe_names`).
        let names_of = {
            let inodes = self.inodes.lock().unwrap();
            inodes
                .child(parent, name)
                .filter(|c| c.kind().is_dir())
                .map(|c| c.ino)
                .filter(|&ino| self.snapshots.is_stale(ino))
        };
        let names_epoch = self.snapshots.epoch();
        let (found, settled) = self
            .read_settled(&key, reader, || {
                self.probe_listed(&key, listed, names_of.is_some())
            })
            .await;
        let mut page = None;
        let mut found = found.map(|(found_key, attrs, listed_page)| {
            page = listed_page;
            (found_key, attrs)
        });
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
                let entry = Entry {
                    ino: inode.ino,
                    attrs: inode.attrs.clone(),
                };
                drop(inodes);
                if let (Some(page), true) = (page, settled && names_of == Some(entry.ino)) {
                    self.renew_snapshot_from(entry.ino, &key, page, names_epoch);
                }
                Ok(Some(entry))
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

    /// Renews the snapshot of directory `dir` (key `key`, without its slash) from the first page
    /// of its listing, which its lookup just read (`probe_names`): kept only when the page
    /// holds the whole directory and nothing changed here since `epoch`.
    fn renew_snapshot_from(&self, dir: u64, key: &str, page: ListPage, epoch: u64) {
        let mut listing = DirListing::new(
            format!("{key}/"),
            self.config.defaults,
            self.mount_time,
            self.listing_memory.clone(),
        );
        listing.set_local(self.local_children(dir));
        listing.add_first_page(page);
        match listing.complete_names() {
            Some(names) => self.snapshots.set(dir, names, epoch),
            None => self.snapshots.forget(dir),
        }
    }

    /// Lists a small directory again to renew its snapshot (dropped if it grew too large).
    pub(super) async fn renew_snapshot(&self, dir: u64, prefix: &str) -> FsResult<()> {
        let epoch = self.snapshots.epoch();
        let mut listing = DirListing::new(
            prefix.to_string(),
            self.config.defaults,
            self.mount_time,
            self.listing_memory.clone(),
        );
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

    /// `probe`, for a name a fresh listing showed to be a file or a directory: only the HEAD
    /// its attributes need (of the object, or of the directory's marker), not the LIST that
    /// tells the two apart. Within the TTL the listing's word is taken, as for names it does
    /// not hold.
    pub(super) async fn probe_listed(
        &self,
        key: &str,
        listed: Option<ListedKind>,
        names: bool,
    ) -> FsResult<(String, Attributes, Option<ListPage>)> {
        match listed {
            None => self.probe_names(key, names).await,
            Some(ListedKind::Dir) => {
                let dir_prefix = format!("{key}/");
                let attrs = self.marker_attrs(&dir_prefix).await?;
                Ok((dir_prefix, attrs, None))
            }
            Some(ListedKind::File) => match self.store.head(key).await {
                Ok(info) => Ok((
                    key.to_string(),
                    Attributes::file(&info, &self.config.defaults),
                    None,
                )),
                Err(StoreError::NotFound) => Err(FsError::NotFound),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Asks the store what `key` is: a directory (any key below `key/`) wins over a file.
    pub(super) async fn probe(&self, key: &str) -> FsResult<(String, Attributes)> {
        self.probe_names(key, false)
            .await
            .map(|(key, attrs, _)| (key, attrs))
    }

    /// `probe`; with `names`, the LIST that tells whether `key` is a directory asks for a whole
    /// page of it (delimited, as readdir lists) instead of one key, and that page comes back
    /// when `key` is a directory: a directory whose names are known small gets them renewed
    /// by its own lookup, with no LIST of its own.
    pub(super) async fn probe_names(
        &self,
        key: &str,
        names: bool,
    ) -> FsResult<(String, Attributes, Option<ListPage>)> {
        let dir_prefix = format!("{key}/");
        let max_keys = if names { SNAPSHOT_MAX_NAMES as i32 } else { 1 };
        let (head, below) = tokio::join!(
            self.store.head(key),
            self.store
                .list_page(&dir_prefix, names, None, Some(max_keys))
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
            return Ok((dir_prefix, attrs, names.then_some(below)));
        }
        match head {
            Ok(info) => Ok((
                key.to_string(),
                Attributes::file(&info, &self.config.defaults),
                None,
            )),
            Err(StoreError::NotFound) => Err(FsError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// A directory's attributes from its marker object's metadata (mode, owner, times, as
    /// mkdir and chmod store them); the defaults when the marker is gone or carries none.
    pub(super) async fn marker_attrs(&self, marker_key: &str) -> FsResult<Attributes> {
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

    pub(super) async fn refresh_file(&self, ino: u64, key: &str) -> FsResult<Attributes> {
        Ok(self.refresh_file_info(ino, key).await?.0)
    }

    /// `refresh_file`, also returning the object's user metadata from the same HEAD.
    pub(super) async fn refresh_file_info(
        &self,
        ino: u64,
        key: &str,
    ) -> FsResult<(Attributes, HashMap<String, String>)> {
        let mut key = key.to_string();
        let (stamp, answer, settled, mut inodes) = loop {
            let stamp = self.inodes.lock().unwrap().stamp();
            // An answer a change of this mount overtook (even one recorded in an inode
            // forgotten since) is not taken for the file's attributes.
            let (answer, settled) = self
                .read_settled(&key, Holder::default(), || self.store.head(&key))
                .await;
            let inodes = self.inodes.lock().unwrap();
            // Renamed (a directory above it, say) while the store was asked: the answer was
            // about a key the file no longer has; asked again under the new one.
            match inodes.get(ino) {
                Some(inode) if inode.key != key => key = inode.key.clone(),
                _ => break (stamp, answer, settled, inodes),
            }
        };
        match answer {
            Ok(info) => {
                let attrs = Attributes::file(&info, &self.config.defaults);
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
}

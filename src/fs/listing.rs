//! Directory handles: listings read page by page, with the entries made in this mount and not
//! yet in S3, and the attributes listed entries get (see `settle_listed_attrs`).

use super::*;

impl<S: ObjectStore> Fs<S> {
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let prefix = self.dir_key(ino)?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle = DirHandle {
            ino,
            listing: DirListing::new(
                prefix,
                self.config.defaults,
                self.mount_time,
                self.listing_memory.clone(),
            ),
            epoch: self.snapshots.epoch(),
            stamp: self.inodes.lock().unwrap().stamp(),
            snapshot_given: false,
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
        let shared = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut handle = shared.lock().await;
        let dir_ino = handle.ino;
        if offset == 0 {
            handle.listing.restart();
            handle.epoch = self.snapshots.epoch();
            handle.stamp = self.inodes.lock().unwrap().stamp();
            handle.snapshot_given = false;
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
        // As soon as the listing has ended, not when readdir reaches its end: the kernel
        // looks entries up while `ls` is still reading the directory, and each of those
        // lookups then needs no LIST (`probe_listed`).
        if !handle.snapshot_given {
            if let Some(names) = handle.listing.complete_names() {
                self.snapshots.set(dir_ino, names, handle.epoch);
                handle.snapshot_given = true;
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
        drop(inodes);
        drop(handle);
        if self.listing_memory.over() {
            self.evict_idle_listings(&shared);
        }
        Ok(items)
    }

    /// Drops the listings of open directory handles no readdir is using now, until the
    /// listings' memory is under its limit again (see `dir::ListingMemory`).
    fn evict_idle_listings(&self, reading: &Arc<tokio::sync::Mutex<DirHandle>>) {
        let handles: Vec<_> = self.dirs.lock().unwrap().values().cloned().collect();
        for handle in handles {
            if !self.listing_memory.over() {
                break;
            }
            if Arc::ptr_eq(&handle, reading) {
                continue;
            }
            if let Ok(mut idle) = handle.try_lock() {
                idle.listing.evict();
            }
        }
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
    /// filesystems. Except in a `shared` mount, where every unknown entry is unverified.
    pub(super) async fn settle_listed_attrs(
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
        // In a shared mount the listing's defaults (mode, owner) must never decide another
        // user's access: a large directory's unknown entries are HEADed here, concurrently
        // (an `ls -l` would otherwise look each up in turn), a small one's stay unverified.
        let head_them = self.config.stat_metadata || (self.config.shared && !small);
        if !head_them {
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
        let mut unverified = Vec::new();
        for (i, result) in unknown.into_iter().zip(results) {
            match result {
                Ok(info) if entries[i].attrs.kind == Kind::Dir => {
                    entries[i].attrs =
                        Attributes::directory_from_marker(&info, &self.config.defaults)
                }
                Ok(info) => entries[i].attrs = Attributes::file(&info, &self.config.defaults),
                // A directory without a marker has no metadata: its defaults are its own.
                Err(StoreError::NotFound) if entries[i].attrs.kind == Kind::Dir => {}
                // Deleted (or replaced) since the listing: shown uncached; a lookup will tell.
                Err(StoreError::NotFound) => unverified.push(i),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(unverified)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Entries of `dir` created in this mount and not yet in S3, with their attributes.
    pub(super) fn local_children(&self, dir: u64) -> Vec<dir::DirEntry> {
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
}

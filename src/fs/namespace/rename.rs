//! rename(2) of files (their open writers follow) and directories (every key below moves).

use super::*;

impl<S: ObjectStore> Fs<S> {
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
        if no_replace {
            // "Absent" may be a cached answer (negative cache, listing) that another client
            // has overtaken since: S3 is asked, as it is for O_EXCL.
            match self.probe(&new_key).await {
                Ok(_) => return Err(FsError::Exists),
                Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
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
    pub(in crate::fs) async fn rename_file(
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
        let (source_key, attrs, pending, dest_stored, dest_etag) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            let dest_inode = dest.and_then(|d| inodes.get(d));
            let dest_stored = dest_inode.is_some_and(|d| !d.is_pending());
            (
                inode.key.clone(),
                inode.attrs.clone(),
                inode.is_pending(),
                dest_stored,
                dest_inode.and_then(|d| d.attrs.etag.clone()),
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
                self.delete_moved(&source_key, attrs.etag.clone()).await?;
            }
        } else {
            let opts = self.put_options(new_name, &attrs);
            let stored_size = patch_base.unwrap_or(attrs.size);
            // A writer's content starts from one version of the object (its base): that is
            // the version that moves, or the rename fails (ESTALE) if another client replaced
            // it meanwhile, rather than the change landing on their version.
            let base_pin = source_guard
                .as_ref()
                .and_then(|g| g.base())
                .filter(|b| b.key == source_key)
                .and_then(|b| b.etag.clone());
            let (copied, version) = match base_pin {
                Some(etag) => {
                    let copied = self
                        .copy_object_pinned(
                            &source_key,
                            &new_key,
                            stored_size,
                            &opts,
                            false,
                            Some(&etag),
                        )
                        .await?;
                    (copied, Some(etag))
                }
                None => {
                    // Copied part by part from a size (over 5 GiB): the size and version S3
                    // holds now, so a cached size (another client may have grown it) never
                    // cuts the copy short.
                    let seen = attrs
                        .etag
                        .clone()
                        .filter(|_| stored_size <= crate::fs::copy::MAX_COPY_OBJECT);
                    self.copy_for_move(&source_key, &new_key, stored_size, seen, &opts)
                        .await?
                }
            };
            new_etag = copied;
            if let Some(d) = dest {
                // The new name holds an object now, whatever happens next.
                self.inodes.lock().unwrap().set_pending(d, false);
            }
            self.delete_moved(&source_key, version).await?;
        }
        // Every S3 step succeeded: now the writers follow.
        if let Some(writer) = source_guard.as_mut() {
            writer.set_key(new_key.clone());
            if streamed {
                // The old name's object is deleted: no version is this writer's to expect.
                writer.forget_base();
            } else {
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
            // What S3 holds under the new key is the replaced file's object (or nothing): the
            // version a later rename or unlink of this file deletes there, never the old
            // name's, which is gone.
            if let Some(inode) = inodes.get(ino) {
                let attrs = Attributes {
                    etag: dest_etag.filter(|_| dest_stored),
                    ..inode.attrs.clone()
                };
                let expires = inode.expires;
                inodes.set_attrs(ino, attrs, expires);
            }
        }
        Ok(())
    }

    /// Copies `source` to `dest` for a move, pinned to `seen` (the source's ETag as this
    /// mount last saw it) when known. When another client replaced the source since (the copy
    /// fails its condition), or no version is known, the version S3 holds now is asked for
    /// (HEAD) and copied: a rename moves what the name holds. Returns the copy's ETag and the
    /// source version copied, the only one the move may delete.
    pub(in crate::fs) async fn copy_for_move(
        &self,
        source: &str,
        dest: &str,
        size: u64,
        seen: Option<String>,
        opts: &PutOptions,
    ) -> FsResult<(Option<String>, Option<String>)> {
        if let Some(etag) = &seen {
            match self
                .copy_object_pinned(source, dest, size, opts, false, Some(etag))
                .await
            {
                Ok(copied) => return Ok((copied, seen)),
                Err(FsError::Stale) => {
                    debug!(
                        source,
                        "replaced since it was looked at: copying what S3 holds now"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        let info = self.store.head(source).await?;
        let copied = self
            .copy_object_pinned(source, dest, info.size, opts, false, info.etag.as_deref())
            .await?;
        Ok((copied, info.etag))
    }

    /// Deletes the source of a move: only the version that was copied (another client's
    /// newer version there stays), or whatever is there when no version is known.
    pub(in crate::fs) async fn delete_moved(
        &self,
        source: &str,
        version: Option<String>,
    ) -> FsResult<()> {
        match version {
            Some(etag) => Ok(self.store.delete_version(source, &etag).await?),
            None => self.delete_if_there(source).await,
        }
    }

    /// Moves every key below `source_prefix` to `dest_prefix` (an empty directory there when
    /// `dest_existed`).
    pub(in crate::fs) async fn rename_dir(
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
        let moves: Vec<(String, String, u64, Option<String>)> = objects
            .into_iter()
            .map(|o| {
                let dest = format!("{dest_prefix}{}", &o.key[source_prefix.len()..]);
                let listed = o
                    .etag
                    .filter(|_| o.size <= crate::fs::copy::MAX_COPY_OBJECT);
                (o.key, dest, o.size, listed)
            })
            .collect();
        // An object of a file unlinked while open that waits under a destination key goes
        // first, as for any new entry (its record would hide the moved file, and its last
        // close delete it).
        for (_, dest, _, _) in &moves {
            self.settle_orphan(dest).await?;
        }
        // Boxed and collected first: a lazily mapped stream of borrowing futures trips the
        // compiler's higher-ranked lifetime check when the caller is spawned.
        type Copied = (Option<String>, Option<String>);
        let copies: Vec<BoxFuture<'_, FsResult<Copied>>> = moves
            .iter()
            .map(|(source, dest, size, listed)| {
                self.copy_for_move(source, dest, *size, listed.clone(), opts)
                    .boxed()
            })
            .collect();
        let copied: Vec<FsResult<Copied>> = futures::stream::iter(copies)
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
                .filter(|((_, dest, _, _), c)| c.is_ok() && !(dest_existed && dest == dest_prefix))
                .map(|((_, dest, _, _), _)| self.delete_if_there(dest).boxed())
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
            .zip(copied)
            .map(|((source, _, _, _), copied)| {
                let version = copied.ok().and_then(|(_, version)| version);
                self.delete_moved(source, version).boxed()
            })
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
    pub(in crate::fs) fn is_same_or_below(&self, mut ino: u64, ancestor: u64) -> bool {
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

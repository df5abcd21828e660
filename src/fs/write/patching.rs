//! A content changed in place (writes anywhere, truncates to any size, copy_file_range): the
//! changed bytes kept on local disk (`PatchFile`), and the commit that composes the new object
//! from server-side copies of the unchanged base and uploads of the rest, never over a version
//! it did not start from.

use super::*;

impl<S: ObjectStore> FileWriter<S> {
    /// True when a write at `offset` cannot be a plain stream from the start of the file: the
    /// file has content it keeps (opened without truncation, or committed), the write is not at
    /// the end, or the handle reads too.
    pub(super) fn needs_patch(&self, offset: u64) -> bool {
        match self.state {
            // A file with content changes in place; an empty one streams like a new file
            // (so a file created, fsynced and then written is not staged on disk).
            State::Committed => self.size > 0 || offset != 0 || self.random_access,
            State::Open => offset != self.size || self.random_access,
            State::Orphaned => true,
            _ => false,
        }
    }

    /// Moves the file to in-place changes: from its base object, or from the bytes streamed so
    /// far when none has been uploaded yet. A stream that has sent parts already cannot go
    /// back (those bytes are not kept here): EOPNOTSUPP.
    pub(super) fn ensure_patch(&mut self) -> FsResult<()> {
        if self.patch.is_some() {
            return Ok(());
        }
        let Some(disk) = self.disk.clone() else {
            debug!(key = %self.key, "writing in place needs the disk cache (--max-cache-size)");
            return Err(FsError::NotSupported);
        };
        match self.state {
            State::Committed | State::Orphaned => {
                // An empty base is a version too: the commit expects it (If-Match).
                let base = self.base.clone().filter(|b| b.size == 0 || self.size > 0);
                self.patch = Some(PatchFile::new(disk, base)?);
            }
            State::Open => {
                if self.upload.is_some() {
                    warn!(
                        key = %self.key,
                        "a write or read behind bytes already uploaded of a file being \
                         streamed is refused (EOPNOTSUPP); open it with O_RDWR to write anywhere"
                    );
                    return Err(FsError::NotSupported);
                }
                // A part staged on disk becomes the patch as it is: nothing copied, and no
                // room asked for twice.
                let staged = match &mut self.buffer {
                    PartBuffer::Staged(part) => Some(part.take_file()?),
                    _ => None,
                };
                let patch = match staged {
                    Some((file, len, reserved, disk)) => {
                        self.buffer = PartBuffer::default();
                        PatchFile::from_written(disk, file, len, reserved)
                    }
                    None => {
                        let buffer = std::mem::take(&mut self.buffer);
                        let made = PatchFile::new(disk, None).and_then(|mut patch| {
                            patch.write(0, &buffer.contents()?)?;
                            Ok(patch)
                        });
                        match made {
                            Ok(patch) => patch,
                            Err(e) => {
                                self.buffer = buffer; // refused: nothing changed
                                return Err(e);
                            }
                        }
                    }
                };
                self.small_permit = None;
                self.buffer_permit = None;
                self.part_budgeted = false;
                self.patch = Some(patch);
            }
            _ => return Err(FsError::NotSupported),
        }
        Ok(())
    }

    /// copy_file_range into this file: its bytes from `offset` on become the bytes of `source`
    /// from the same offset, without reading them (the commit copies them server-side).
    /// Returns how many bytes were taken, or `NotSupported` when the copy is not one this can
    /// do (the kernel then copies through read and write): the file must be new or truncated
    /// with nothing written yet (offset 0), or a clone of the same version of `source` that
    /// ends at `offset` (the next call of a copy done in chunks).
    pub fn clone_range(&mut self, source: Base, offset: u64, len: u64) -> FsResult<u64> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Superseded => return Err(FsError::Busy),
            State::Open => {}
            State::Committed if self.size == 0 && self.base.is_none() => {}
            // An unlinked or displaced file keeps its writes local or drops them: the kernel's
            // read-and-write fallback goes through `write`, which knows how.
            State::Committed | State::Discarded | State::Orphaned => {
                return Err(FsError::NotSupported)
            }
        }
        if source.etag.is_none() {
            return Err(FsError::NotSupported);
        }
        let end = offset.saturating_add(len).min(source.size);
        if offset >= source.size {
            return Ok(0);
        }
        if let Some(patch) = &mut self.patch {
            let same_source = patch
                .base()
                .is_some_and(|b| b.key == source.key && b.etag == source.etag);
            if !same_source || offset != self.size || !patch.extend_clone(end) {
                return Err(FsError::NotSupported);
            }
        } else {
            let fresh = offset == 0 && self.size == 0 && self.upload.is_none();
            if !fresh || self.buffer.len() > 0 {
                return Err(FsError::NotSupported);
            }
            let Some(disk) = self.disk.clone() else {
                return Err(FsError::NotSupported);
            };
            self.patch = Some(PatchFile::clone_of(disk, source, end)?);
            self.buffer_permit = None;
            self.part_budgeted = false;
        }
        self.closed = false;
        self.size = end;
        if self.state != State::Orphaned {
            self.state = State::Open;
        }
        Ok(end - offset)
    }

    /// Sets the file's size (truncate/ftruncate, posix_fallocate): growing reads back zeros.
    pub async fn truncate_to(&mut self, size: u64) -> FsResult<()> {
        if size == 0 {
            return self.truncate().await;
        }
        if size > crate::fs::patch::MAX_OBJECT_SIZE {
            return Err(FsError::FileTooLarge);
        }
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Superseded => return Err(FsError::Busy),
            State::Discarded => {
                self.size = size;
                return Ok(());
            }
            _ => {}
        }
        self.closed = false;
        if self.patch.is_none() {
            if size == self.size {
                return Ok(());
            }
            if self.state == State::Open && self.upload.is_some() {
                // A stream that has sent parts grows by streaming zeros, and shrinks only
                // within the part still being filled.
                if size > self.size {
                    return self.stream_zeros(size).await;
                }
                let sent = self.size - self.buffer.len() as u64;
                if size >= sent {
                    self.buffer.truncate((size - sent) as usize)?;
                    self.size = size;
                    return Ok(());
                }
                warn!(key = %self.key, size, uploaded = sent,
                    "a truncate below bytes already uploaded of a file being streamed is refused \
                     (EOPNOTSUPP); open it with O_RDWR to truncate anywhere");
                return Err(FsError::NotSupported);
            }
            self.ensure_patch()?;
        }
        let patch = self.patch.as_mut().expect("made above");
        patch.truncate(size);
        self.size = size;
        if self.state != State::Orphaned {
            self.state = State::Open;
        }
        Ok(())
    }

    /// Reads the file's current content through this writer: `None` when nothing is changed
    /// (the object in S3 is the content); bytes streamed but not uploaded move to a patch.
    pub async fn read(&mut self, offset: u64, len: u32) -> FsResult<Option<Bytes>> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Superseded => return Ok(None),
            // Unlinked with bytes it could not keep: what it held is gone.
            State::Discarded => return Err(FsError::Stale),
            _ => {}
        }
        if self.patch.is_none() {
            if !self.is_dirty() {
                return Ok(None);
            }
            self.ensure_patch().map_err(|e| match e {
                FsError::NotSupported => FsError::Busy,
                other => other,
            })?;
        }
        let patch = self.patch.as_ref().expect("made above");
        let end = offset.saturating_add(len as u64).min(patch.size());
        if offset >= end {
            return Ok(Some(Bytes::new()));
        }
        Ok(Some(
            patch.assemble(self.store.as_ref(), offset..end).await?,
        ))
    }

    /// The object this file's content starts from (what a rename must copy as it is).
    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }

    /// When the unsent content is an in-place change of a stored object: that object's size.
    /// A rename copies it to the new name first (see `rebase`).
    pub fn patch_base_size(&self) -> Option<u64> {
        if !self.is_dirty() {
            return None;
        }
        // A copy's base is another file's object (copy_file_range): the commit copies from it
        // wherever this file's name is then, so a rename has nothing of its own to move.
        self.patch
            .as_ref()?
            .base()
            .filter(|b| b.key == self.key)
            .map(|b| b.size)
    }

    /// The file's object is gone (a rename deleted the old name's object while this writer's
    /// content was not stored yet): its next commit expects no version of its own.
    pub fn forget_base(&mut self) {
        self.base = None;
    }

    /// The file's object was copied to `key` (a rename): later in-place changes start from it.
    pub fn rebase(&mut self, key: String, etag: Option<String>) {
        if let Some(base) = &mut self.base {
            base.key = key.clone();
            base.etag = etag.clone();
        }
        if let Some(patch) = &mut self.patch {
            patch.rebase(key, etag);
        }
    }

    /// Makes the written bytes the object in S3. Ok only once S3 confirmed it; returns the new
    /// size and ETag (None when there was nothing to upload).
    pub async fn commit(&mut self) -> FsResult<Option<(u64, Option<String>)>> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Committed | State::Discarded | State::Superseded | State::Orphaned => {
                return Ok(None)
            }
            State::Open => {}
        }
        let result = if self.patch.is_some() {
            self.finish_patch().await
        } else {
            self.finish().await
        };
        self.buffer_permit = None;
        self.part_budgeted = false;
        match result {
            Ok(etag) => {
                self.state = State::Committed;
                self.patch = None;
                self.base = Some(Base {
                    key: self.key.clone(),
                    etag: etag.clone(),
                    size: self.size,
                });
                Ok(Some((self.size, etag)))
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Commits an in-place change: one PutObject for a file of up to one part, else one
    /// multipart upload composed of server-side copies of the unchanged base and uploads of
    /// the rest. The old object stays until the new one is complete.
    pub(super) async fn finish_patch(&mut self) -> FsResult<Option<String>> {
        let patch = self.patch.as_ref().expect("called with a patch");
        let size = patch.size();
        let whole_pinned_base = patch
            .base()
            .filter(|_| patch.is_whole_base() && size <= crate::fs::copy::MAX_COPY_OBJECT)
            .and_then(|base| Some((base.key.as_str(), base.etag.as_deref()?)));
        if let Some((source, etag)) = whole_pinned_base {
            // A copy of a whole object (copy_file_range), or an object changed back to what
            // it was: one CopyObject, pinned to the version it started from. CopyObject
            // carries no condition on its destination: what the destination must hold is
            // checked just before (a file made with O_EXCL: nothing there yet).
            if let Some(expect) = self.stream_expect().filter(|_| source != self.key) {
                crate::store::check_expected(self.store.as_ref(), &self.key, &expect)
                    .await
                    .map_err(base_error)?;
            }
            return self
                .store
                .copy_if_match(source, &self.key, &self.opts, true, etag)
                .await
                .map_err(base_error);
        }
        let single_part = self.base_part_size.max(MIN_PART_SIZE);
        if size <= single_part {
            let _permit = hold_budget(&self.budget, size as usize, self.budget_total).await;
            let body = patch.assemble(self.store.as_ref(), 0..size).await?;
            return match in_place_expect(patch.base(), &self.key).or_else(|| self.stream_expect()) {
                // Over the version the change started from only: another client's newer
                // one is kept (ESTALE).
                Some(expect) => self
                    .store
                    .put_expecting(&self.key, body, &self.opts, &expect)
                    .await
                    .map_err(base_error),
                None => Ok(self.store.put(&self.key, body, &self.opts).await?),
            };
        }
        let plan = patch.plan(MIN_PART_SIZE, self.base_part_size);
        let id = self.store.create_multipart(&self.key, &self.opts).await?;
        self.journal_record(&self.key, &id);
        let expect = in_place_expect(patch.base(), &self.key).or_else(|| self.stream_expect());
        let outcome = async {
            let parts = self.run_plan(&plan, &id).await?;
            Ok::<_, FsError>(match &expect {
                Some(expect) => self
                    .store
                    .complete_multipart_expecting(&self.key, &id, &parts, expect)
                    .await
                    .map_err(base_error)?,
                None => {
                    self.store
                        .complete_multipart(&self.key, &id, &parts)
                        .await?
                }
            })
        }
        .await;
        match outcome {
            Ok(etag) => {
                self.journal_forget(&id);
                Ok(etag)
            }
            Err(e) => {
                // The part futures were dropped with the failed stream: none runs on.
                match self.store.abort_multipart(&self.key, &id).await {
                    Ok(()) => self.journal_forget(&id),
                    Err(abort) => {
                        warn!(key = %self.key, "aborting the multipart upload failed: {abort}")
                    }
                }
                Err(e)
            }
        }
    }

    /// Sends every part of `plan` (a bounded number at once); the first failure stops them all.
    pub(super) async fn run_plan(
        &self,
        plan: &[PartPlan],
        id: &str,
    ) -> FsResult<Vec<UploadedPart>> {
        let patch = self.patch.as_ref().expect("called with a patch");
        let store = self.store.as_ref();
        let key = self.key.as_str();
        // Boxed and collected first: a lazily mapped stream of borrowing futures trips the
        // compiler's higher-ranked lifetime check when the caller is spawned.
        let parts: Vec<BoxFuture<'_, FsResult<UploadedPart>>> = plan
            .iter()
            .enumerate()
            .map(|(i, part)| {
                async move {
                    let number = i as i32 + 1;
                    match part {
                        PartPlan::Copy(range) => {
                            let base = patch.base().expect("copies come from a base");
                            store
                                .upload_part_copy(
                                    key,
                                    id,
                                    number,
                                    &base.key,
                                    range.clone(),
                                    base.etag.as_deref(),
                                )
                                .await
                                .map_err(base_error)
                        }
                        PartPlan::Upload(range) => {
                            let len = (range.end - range.start) as usize;
                            let _permit = hold_budget(&self.budget, len, self.budget_total).await;
                            let body = patch.assemble(store, range.clone()).await?;
                            Ok(store.upload_part(key, id, number, body).await?)
                        }
                    }
                }
                .boxed()
            })
            .collect();
        let mut done: Vec<UploadedPart> = futures::stream::iter(parts)
            .buffer_unordered(self.parts_in_flight_limit())
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.number);
        Ok(done)
    }
}

/// What a change in place of `key` expects S3 to hold there: the version it started from.
pub(super) fn in_place_expect(base: Option<&Base>, key: &str) -> Option<Expect> {
    base.filter(|b| b.key == key)
        .and_then(|b| b.etag.clone())
        .map(Expect::Version)
}

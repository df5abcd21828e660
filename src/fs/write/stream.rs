//! A new content streamed into S3 while the program writes: the part buffer filled in order,
//! parts uploaded in the background against the memory budget, and the commit as one
//! PutObject (small files) or the completion of the multipart upload; failures abort it.

use super::patching::in_place_expect;
use super::*;

impl<S: ObjectStore> FileWriter<S> {
    /// Waits for every part upload in flight; the first failure is returned.
    pub(super) async fn drain_parts(&mut self) -> FsResult<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        let mut first_error = None;
        while !upload.running.is_empty() {
            let result = joined((&mut upload.running[0]).await);
            upload.running.remove(0);
            match result {
                Ok(part) => self.done_parts.push(part),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(super) fn journal_record(&self, key: &str, id: &str) {
        if let Some(journal) = &self.journal {
            journal.record(key, id);
        }
    }

    pub(super) fn journal_forget(&self, id: &str) {
        if let Some(journal) = &self.journal {
            journal.forget(id);
        }
    }

    /// Appends `data` at `offset`, which must be the current end of the file.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.closed = false;
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Discarded => {
                self.size = self.size.max(offset + data.len() as u64);
                return Ok(data.len() as u32);
            }
            State::Superseded => return Err(FsError::Busy),
            _ => {}
        }
        if self.patch.is_none() && self.state == State::Open && self.upload.is_some() {
            return self.write_streamed(offset, data).await;
        }
        if self.spilled_start && self.patch.is_none() {
            self.spilled_start = false; // committed or dropped since
        }
        if self.spilled_start {
            let in_order = offset == self.size && self.state == State::Open;
            // A start grown past a part meanwhile (a truncate) stays on disk: it would not fit
            // in the part buffer it would come back to.
            let fits = self.size < part_size_for(self.base_part_size, 1);
            if in_order && !fits {
                self.spilled_start = false;
            } else if in_order && self.size as usize + data.len() > SMALL_START {
                self.unspill().await?; // or stays on disk: then written below
            } else if !in_order {
                self.spilled_start = false; // written out of order: stays on disk
            }
        }
        let spills = if self.patch.is_none() && !self.needs_patch(offset) {
            self.small_start_spills(data.len()).await?
        } else {
            false
        };
        if self.patch.is_some() || self.needs_patch(offset) || spills {
            self.ensure_patch()?;
            self.small_permit = None;
            self.spilled_start |= spills;
            let patch = self.patch.as_mut().expect("just made");
            // A refused write (no disk room) changes nothing: the file stays as it was.
            patch.write(offset, data)?;
            self.size = patch.size();
            if self.state != State::Orphaned {
                self.state = State::Open;
            }
            return Ok(data.len() as u32);
        }
        if self.state == State::Committed {
            self.state = State::Open;
        }
        let appended = self.append(data).await;
        if self.upload.is_some() || self.buffer.capacity() > SMALL_START {
            // No small start any more: the buffer is a whole part, under the budget.
            self.small_permit = None;
        }
        Ok(appended? as u32)
    }

    /// A start that went to disk for want of overdraft grows past the small start: its bytes
    /// come back into the part buffer (under the budget, as a whole part), and the file
    /// streams on like any new file, so a large file never needs local disk for all of it.
    /// When no part can be had (no budget, overdraft nor disk room for one), the file stays
    /// on disk as it is, for good (false): its writes go on into the patch.
    async fn unspill(&mut self) -> FsResult<bool> {
        self.spilled_start = false;
        let part_size = part_size_for(self.base_part_size, 1) as usize;
        // The part first: refused, the start is still where it was.
        if self.hold_part_budget(part_size).await.is_err() {
            return Ok(false);
        }
        if let Some(e) = self.parked_error.take() {
            return Err(self.fail(e).await);
        }
        let patch = self.patch.take().expect("a spilled start is a patch");
        let size = patch.size();
        let bytes = match patch.assemble(self.store.as_ref(), 0..size).await {
            Ok(bytes) => bytes,
            Err(e) => return Err(self.fail(e).await),
        };
        self.small_permit = None;
        self.buffer.reserve_part(part_size, self.store.buffers());
        if let Err(e) = self.buffer.extend_from_slice(&bytes) {
            return Err(self.fail(e).await);
        }
        self.size = size;
        Ok(true)
    }

    /// True when `len` more bytes would grow the small start of this file past what the
    /// overdraft can give, and the file can go to local disk instead; otherwise the growth is
    /// taken from the overdraft (or the file has no overdraft to keep to). Without local disk
    /// the growth waits for the overdraft up to `BUDGET_WAIT`, then the write is refused with
    /// ENOSPC (nothing changes), so memory stays bounded however many files are written.
    async fn small_start_spills(&mut self, len: usize) -> FsResult<bool> {
        let needed = self.buffer.len() + len;
        let Some(overdraft) = self.overdraft.clone() else {
            return Ok(false);
        };
        if self.upload.is_some() || needed > SMALL_START || needed <= self.buffer.capacity() {
            return Ok(false);
        }
        let held = self.small_permit.as_ref().map_or(0, |p| p.num_permits());
        let more = needed.next_power_of_two().saturating_sub(held);
        if more == 0 {
            return Ok(false);
        }
        let more = more.min(u32::MAX as usize) as u32;
        let permit = match overdraft.clone().try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(_) if self.disk.is_some() && self.state != State::Orphaned => {
                debug!(key = %self.key, "memory outside the budget used up: this file goes to local disk");
                return Ok(true);
            }
            Err(_) => {
                match tokio::time::timeout(BUDGET_WAIT, overdraft.acquire_many_owned(more)).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        warn!(
                            key = %self.key,
                            "memory for files being written (--max-memory) is used up and there is \
                             no local disk to hold more (--max-cache-size 0): ENOSPC"
                        );
                        return Err(FsError::NoSpace);
                    }
                }
            }
        };
        match &mut self.small_permit {
            Some(held) => held.merge(permit),
            None => self.small_permit = Some(permit),
        }
        Ok(false)
    }

    /// A write to a file streaming into a multipart upload: bytes still in the part being
    /// filled are changed in memory, a write past the end streams zeros up to it first; bytes
    /// already uploaded cannot be changed (EOPNOTSUPP, nothing changes).
    pub(super) async fn write_streamed(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let sent = self.size - self.buffer.len() as u64;
        if offset < sent {
            warn!(
                key = %self.key,
                offset,
                uploaded = sent,
                "a write behind bytes already uploaded of a file being streamed is refused \
                 (EOPNOTSUPP); open it with O_RDWR to write anywhere"
            );
            return Err(FsError::NotSupported);
        }
        let hole = offset > self.size;
        if hole {
            self.stream_zeros(offset).await?;
        }
        let overlap = (self.size - offset).min(data.len() as u64) as usize;
        if overlap > 0 {
            let sent = self.size - self.buffer.len() as u64;
            self.buffer
                .overwrite((offset - sent) as usize, &data[..overlap])?;
        }
        match self.append(&data[overlap..]).await {
            Ok(appended) => Ok((overlap + appended) as u32),
            // The hole's zeros went in, the bytes after them were refused: refusing the write
            // would leave the file grown by a call that failed, so the file fails (as in
            // `stream_zeros`).
            Err(FsError::NoSpace) if hole => {
                self.fail(FsError::NoSpace).await;
                Err(FsError::NoSpace)
            }
            Err(e) => Err(e),
        }
    }

    /// Streams zeros up to `end` (a hole past the end of a streamed file).
    /// A new part refused for lack of memory and disk before any zero was taken changes
    /// nothing (ENOSPC); refused after some were (parts with them may be uploaded, which cannot
    /// be undone), the file fails: its close reports the error rather than store a size no
    /// call succeeded in giving it.
    pub(super) async fn stream_zeros(&mut self, end: u64) -> FsResult<()> {
        let start = self.size;
        let zeros = vec![0u8; 1 << 20];
        while self.size < end {
            let n = (end - self.size).min(zeros.len() as u64) as usize;
            match self.append(&zeros[..n]).await {
                Ok(taken) if taken == n => {}
                Err(e) if self.size == start => return Err(e),
                Ok(_) | Err(FsError::NoSpace) => {
                    self.fail(FsError::NoSpace).await;
                    return Err(FsError::NoSpace);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends to the stream: bytes fill the part being built, full parts go up. Returns how
    /// many bytes were taken: fewer than given only when a new part found no room in memory
    /// or on disk (the rest is refused with ENOSPC at the next write, nothing lost).
    pub(super) async fn append(&mut self, data: &[u8]) -> FsResult<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let number = self.upload.as_ref().map(|u| u.next_number).unwrap_or(1);
            if number > MAX_PARTS {
                return Err(self.fail(FsError::FileTooLarge).await);
            }
            let part_size = part_size_for(self.base_part_size, number) as usize;
            let take = (part_size - self.buffer.len()).min(rest.len());
            if self.needs_whole_part(take) {
                if let Err(e) = self.hold_part_budget(part_size).await {
                    let taken = data.len() - rest.len();
                    return if taken > 0 { Ok(taken) } else { Err(e) };
                }
                if let Some(e) = self.parked_error.take() {
                    return Err(self.fail(e).await);
                }
            }
            self.grow_buffer(take, part_size);
            if let Err(e) = self.buffer.extend_from_slice(&rest[..take]) {
                // A staged part that could not be written: what it held is gone with it.
                return Err(self.fail(e).await);
            }
            rest = &rest[take..];
            self.size += take as u64;
            if self.buffer.len() == part_size {
                // The full part leaves with its own allocation: nothing of it stays behind.
                let part = std::mem::take(&mut self.buffer).into_body();
                let permit = self.take_permit();
                if let Err(e) = self.send_part(part, permit).await {
                    return Err(self.fail(e).await);
                }
            }
        }
        Ok(data.len())
    }

    /// Makes room for `additional` bytes: the first part of a file grows in powers of two up
    /// to 1 MiB (most files are small); past that, and for every later part, the buffer takes
    /// the whole part at once (from the store's pool when it has one), so a part is never
    /// copied on growth nor held twice.
    pub(super) fn grow_buffer(&mut self, additional: usize, part_size: usize) {
        let needed = self.buffer.len() + additional;
        if needed <= self.buffer.capacity() {
            return;
        }
        if self.upload.is_none() && needed <= SMALL_START {
            self.buffer.reserve_small(needed.next_power_of_two());
        } else {
            self.buffer.reserve_part(part_size, self.store.buffers());
        }
    }

    /// Part uploads of this file at once: enough to fill the pipe, but never the whole write
    /// budget, so one fast writer cannot starve the others into going over it.
    pub(super) fn parts_in_flight_limit(&self) -> usize {
        let parts_in_budget = self.budget_total / (self.base_part_size.max(1) as usize);
        parts_in_budget
            .saturating_sub(1)
            .clamp(2, MAX_PARTS_IN_FLIGHT)
    }

    /// True when `additional` more bytes make the buffer a whole part (see `grow_buffer`).
    pub(super) fn needs_whole_part(&self, additional: usize) -> bool {
        self.upload.is_some() || self.buffer.len() + additional > SMALL_START
    }

    /// Holds budget for the whole part being filled, once per part, before its buffer grows
    /// past the small start. A writer waits here holding no budget of its own (its earlier
    /// parts' budget travels with their uploads, which finish on their own), and no request is
    /// larger than the whole budget. But other files may hold budget for parts their programs
    /// have paused filling (`tee x | gzip > y` fills two files from one pipeline), so the wait
    /// is bounded: after `BUDGET_WAIT` this part is filled outside the budget, from the
    /// overdraft while it lasts (this file's uploads in flight finished first, so one such
    /// part per file), then on local disk. With neither left, `NoSpace`: the write is refused
    /// and nothing changes (README: Bounds).
    pub(super) async fn hold_part_budget(&mut self, part_size: usize) -> FsResult<()> {
        if self.part_budgeted {
            return Ok(());
        }
        let permits = part_size.min(self.budget_total).min(u32::MAX as usize) as u32;
        let wait = self.budget.clone().acquire_many_owned(permits);
        match tokio::time::timeout(BUDGET_WAIT, wait).await {
            Ok(Ok(permit)) => self.buffer_permit = Some(permit),
            Ok(Err(_)) => warn!(key = %self.key, "memory budget closed"),
            Err(_) => {
                let over = self
                    .overdraft
                    .as_ref()
                    .and_then(|o| o.clone().try_acquire_many_owned(permits).ok());
                if over.is_none() {
                    // Waiting on could deadlock a program that fills these files in turn (as
                    // `tee` does): the part goes to local disk instead.
                    return self.stage_part(part_size);
                }
                self.buffer_permit = over;
                debug!(key = %self.key, "memory budget held by other files: one part over it");
                // Best effort: a failed part surfaces at the next write or the commit.
                if let Err(e) = self.drain_parts().await {
                    self.parked_error = Some(e);
                }
            }
        }
        self.part_budgeted = true;
        Ok(())
    }

    /// Fills the part being built on local disk: memory is used up.
    fn stage_part(&mut self, part_size: usize) -> FsResult<()> {
        let disk = self.disk.clone().filter(|_| self.state != State::Orphaned);
        let staged = match disk {
            Some(disk) => self.buffer.stage(disk, part_size),
            None => Err(FsError::NoSpace),
        };
        match staged {
            Ok(()) => {
                debug!(key = %self.key, "memory for files being written used up: this part is staged on local disk");
                self.small_permit = None;
                self.part_budgeted = true;
                Ok(())
            }
            Err(e) => {
                warn!(
                    key = %self.key,
                    "memory for files being written (--max-memory) is used up and local disk \
                     (--max-cache-size) cannot hold another part: {e}"
                );
                Err(e)
            }
        }
    }

    /// The budget of the part being sent: it travels with the upload.
    pub(super) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.part_budgeted = false;
        self.buffer_permit.take()
    }

    pub(super) async fn send_part(
        &mut self,
        body: PartBody,
        permit: Option<OwnedSemaphorePermit>,
    ) -> FsResult<()> {
        if self.upload.is_none() {
            let id = self.store.create_multipart(&self.key, &self.opts).await?;
            self.journal_record(&self.key, &id);
            self.upload = Some(Upload {
                key: self.key.clone(),
                id,
                opts: self.opts.clone(),
                next_number: 1,
                bytes: 0,
                running: Vec::new(),
            });
        }
        let in_flight_limit = self.parts_in_flight_limit();
        let upload = self.upload.as_mut().expect("just created");
        // Reap finished parts first so a failure surfaces at the next write. Handles are only
        // taken out once finished: one still running stays in the upload, where an abort
        // cancels and awaits it (a dropped JoinHandle would leave its part uploading).
        while let Some(i) = upload.running.iter().position(|h| h.is_finished()) {
            let part = joined(upload.running.remove(i).await)?;
            self.done_parts.push(part);
        }
        // Enough parts in flight per file to fill the pipe; more would only add memory.
        if upload.running.len() >= in_flight_limit {
            // Out of the list before the result is looked at: a finished handle left there
            // would be awaited again by `abort` (a panic).
            let result = joined((&mut upload.running[0]).await);
            upload.running.remove(0);
            self.done_parts.push(result?);
        }
        let upload = self.upload.as_mut().expect("created above");
        let number = upload.next_number;
        upload.next_number += 1;
        upload.bytes += body.len() as u64;
        let (store, key, id) = (self.store.clone(), upload.key.clone(), upload.id.clone());
        upload.running.push(tokio::spawn(async move {
            let _permit = permit;
            body.upload(store.as_ref(), &key, &id, number).await
        }));
        Ok(())
    }

    /// What a streamed commit expects S3 to hold under the key: the version this writer
    /// started from or last stored (an empty file written on, or a file fsynced and written
    /// on: another client's version written since is never replaced); no object for a file
    /// created with O_EXCL and never stored; nothing for a replacement (O_TRUNC, a new file).
    pub(super) fn stream_expect(&self) -> Option<Expect> {
        in_place_expect(self.base.as_ref(), &self.key)
            .or_else(|| self.exclusive.then_some(Expect::Absent))
    }

    async fn put_empty(&mut self, expect: Option<&Expect>) -> FsResult<Option<String>> {
        Ok(match expect {
            Some(expect) => {
                self.store
                    .put_expecting(&self.key, Bytes::new(), &self.opts, expect)
                    .await?
            }
            None => self.store.put(&self.key, Bytes::new(), &self.opts).await?,
        })
    }

    pub(super) async fn finish(&mut self) -> FsResult<Option<String>> {
        let rest = std::mem::take(&mut self.buffer).into_body();
        self.small_permit = None;
        let expect = self.stream_expect();
        let rest = match rest {
            // Small and empty files: one PutObject (some servers reject an empty part).
            PartBody::Memory(rest) if self.upload.is_none() => {
                return Ok(match &expect {
                    Some(expect) => {
                        self.store
                            .put_expecting(&self.key, rest, &self.opts, expect)
                            .await?
                    }
                    None => self.store.put(&self.key, rest, &self.opts).await?,
                });
            }
            // A single part staged on disk goes up from there, as a one-part upload.
            PartBody::Staged(part) if part.len() == 0 && self.upload.is_none() => {
                return self.put_empty(expect.as_ref()).await;
            }
            rest => rest,
        };
        if !rest.is_empty() {
            self.send_part(rest, None).await?;
        }
        self.drain_parts().await?;
        self.done_parts.sort_by_key(|p| p.number);
        let (upload_key, id, upload_opts) = {
            let upload = self.upload.as_ref().expect("checked above");
            (upload.key.clone(), upload.id.clone(), upload.opts.clone())
        };
        let etag = if upload_key == self.key {
            match &expect {
                Some(expect) => {
                    self.store
                        .complete_multipart_expecting(&upload_key, &id, &self.done_parts, expect)
                        .await?
                }
                None => {
                    self.store
                        .complete_multipart(&upload_key, &id, &self.done_parts)
                        .await?
                }
            }
        } else {
            // Renamed away while uploading: the rename deleted the old name's object, so only
            // another client can have written there since; its object is not replaced.
            let completed = self
                .store
                .complete_multipart_expecting(&upload_key, &id, &self.done_parts, &Expect::Absent)
                .await;
            if completed == Err(StoreError::PreconditionFailed) {
                error!(
                    key = %self.key,
                    old_name = %upload_key,
                    "another client wrote the file's old name while it was uploading there: \
                     its object is kept, and this file's content is not stored"
                );
            }
            completed?
        };
        self.journal_forget(&id);
        self.upload = None;
        self.done_parts.clear();
        if upload_key == self.key {
            if upload_opts == self.opts {
                return Ok(etag);
            }
            // Metadata changed while the upload ran (chmod, setxattr): a multipart upload
            // keeps what it was created with, so the object gets the new metadata by a copy.
            let copier = ServerCopy {
                store: self.store.as_ref(),
                journal: self.journal.as_deref(),
                if_match: etag.as_deref(),
            };
            return copier
                .copy(&self.key, &self.key, self.size, &self.opts, true)
                .await;
        }
        // Renamed while being written: the content moves to its final name, copied and then
        // deleted as the version just completed (never another client's written since).
        let copier = ServerCopy {
            store: self.store.as_ref(),
            journal: self.journal.as_deref(),
            if_match: etag.as_deref(),
        };
        let moved = copier
            .copy(&upload_key, &self.key, self.size, &self.opts, true)
            .await;
        match moved {
            Ok(copied) => {
                // A copy left there would bring the old name back: a few tries.
                let deleted = delete_tried(self.store.as_ref(), &upload_key, etag.as_deref());
                if let Err(e) = deleted.await {
                    error!(key = %upload_key, "removing the pre-rename copy failed: {e}");
                }
                Ok(copied)
            }
            Err(e) => {
                // The close reports the failure: nothing may stay behind under a name the
                // file no longer has.
                let deleted = delete_tried(self.store.as_ref(), &upload_key, etag.as_deref());
                if let Err(delete) = deleted.await {
                    error!(
                        key = %self.key,
                        stored_under = %upload_key,
                        "a file renamed while being written could not be moved to its new name, \
                         and its content stays under the old name: {delete}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Drops everything written so far (truncate to 0): the file is empty and open again.
    pub async fn truncate(&mut self) -> FsResult<()> {
        self.closed = false;
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
        self.small_permit = None;
        self.buffer_permit = None;
        self.part_budgeted = false;
        self.size = 0;
        // A file without a name stays without one: its content still goes nowhere.
        if self.state == State::Orphaned {
            // Empty now: a patch of nothing, so reads see the empty file.
            self.base = None;
            if let Some(disk) = self.disk.clone() {
                self.patch = PatchFile::new(disk, None).ok();
            }
        } else if !matches!(self.state, State::Discarded | State::Superseded) {
            self.state = State::Open;
        }
        Ok(())
    }

    /// Stops and aborts any multipart upload in progress. Part uploads still running are
    /// cancelled and awaited first, so no part can land after AbortMultipartUpload. A failed
    /// abort is logged, and the upload stays in the journal for the next mount to abort.
    pub async fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            for handle in &upload.running {
                handle.abort();
            }
            for handle in upload.running {
                let _ = handle.await;
            }
            match self.store.abort_multipart(&upload.key, &upload.id).await {
                Ok(()) => self.journal_forget(&upload.id),
                Err(e) => warn!(key = %self.key, "aborting the multipart upload failed: {e}"),
            }
        }
        self.done_parts.clear();
    }

    pub(super) async fn fail(&mut self, error: FsError) -> FsError {
        warn!(key = %self.key, "upload failed: {error}");
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
        self.small_permit = None;
        self.buffer_permit = None;
        self.part_budgeted = false;
        // The caller gets EIO for data S3 did not take; the specific cause is in the log.
        let error = match error {
            FsError::FileTooLarge | FsError::AccessDenied(_) | FsError::Stale => error,
            other => FsError::Io(other.to_string()),
        };
        self.state = State::Failed(error.clone());
        error
    }
}

/// Tries to delete a stray copy of a file renamed while being written.
const STRAY_DELETE_TRIES: u32 = 3;

/// Deletes `key` (gone already counts as deleted; with `etag`, only that version), trying
/// `STRAY_DELETE_TRIES` times.
pub(super) async fn delete_tried<S: ObjectStore>(
    store: &S,
    key: &str,
    etag: Option<&str>,
) -> StoreResult<()> {
    let mut tries = 1;
    loop {
        let deleted = match etag {
            Some(etag) => store.delete_version(key, etag).await,
            None => store.delete(key).await,
        };
        match deleted {
            Ok(()) | Err(crate::store::StoreError::NotFound) => return Ok(()),
            Err(e) if tries == STRAY_DELETE_TRIES => return Err(e),
            Err(_) => tries += 1,
        }
    }
}

/// The outcome of a finished part upload task.
pub(super) fn joined(
    result: Result<StoreResult<UploadedPart>, tokio::task::JoinError>,
) -> FsResult<UploadedPart> {
    match result {
        Ok(part) => Ok(part?),
        Err(e) => Err(FsError::Io(format!("part upload task: {e}"))),
    }
}

/// Budget for `bytes` of a part being assembled, waiting at most `BUDGET_WAIT` (then the part
/// goes on without, as `FileWriter::hold_part_budget` explains).
pub(super) async fn hold_budget(
    budget: &Arc<Semaphore>,
    bytes: usize,
    total: usize,
) -> Option<OwnedSemaphorePermit> {
    let permits = bytes.min(total).min(u32::MAX as usize) as u32;
    match tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(permits)).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

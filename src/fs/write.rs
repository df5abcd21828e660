//! Writing one file: bytes stream into a multipart upload while the application writes (parts
//! uploaded concurrently in the background, memory held against the shared budget), or into
//! one PutObject at close for files smaller than a part.
//!
//! Nothing is visible in S3 before `commit` (close or fsync), and `commit` returns Ok only once
//! S3 confirmed the object. On any failure the multipart upload is aborted (no orphan parts)
//! and the error is returned to the caller, never swallowed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::store::buffers::{BufferPool, PooledBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::copy::ServerCopy;
use super::disk_cache::DiskCache;
use super::error::{FsError, FsResult};
use super::journal::UploadJournal;
use super::patch::{base_error, Base, PartPlan, PatchFile};
use crate::store::{Expect, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart};

/// S3's smallest part (all but the last) and largest part count.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PARTS: i32 = 10_000;
use super::patch::MAX_PART_SIZE;
/// Part uploads of one file running at once.
const MAX_PARTS_IN_FLIGHT: usize = 16;

/// The start of a file is buffered in a small growing buffer, outside the memory budget, up to
/// this size; past it the buffer is a whole part held against the budget.
const SMALL_START: usize = 1 << 20;

/// How long a writer waits for a part's budget before filling that part over budget (see
/// `hold_part_budget`).
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The part size for part `number` (1-based): the configured size for the first 1,000 parts,
/// doubling every 1,000 parts after, so 10,000 parts of an 8 MiB start reach over 5 TiB.
pub fn part_size_for(base: u64, number: i32) -> u64 {
    let doublings = ((number - 1).max(0) / 1000) as u32;
    base.max(MIN_PART_SIZE)
        .saturating_mul(1u64 << doublings.min(20))
        .min(MAX_PART_SIZE)
}

struct Upload {
    /// The key the upload was started for. A multipart upload cannot change its key, so a
    /// file renamed while being written keeps uploading here and is moved at commit.
    key: String,
    id: String,
    /// The metadata it was created with: a chmod or setxattr during the upload changes
    /// `FileWriter::opts`, which the commit then applies by a self-copy.
    opts: PutOptions,
    next_number: i32,
    /// Bytes sent (or copied) as parts so far, in part order.
    bytes: u64,
    running: Vec<JoinHandle<StoreResult<UploadedPart>>>,
}

/// What state the file's content is in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Accepting sequential writes.
    Open,
    /// The object is in S3 (or was opened without truncation); nothing new since.
    Committed,
    /// A background part upload failed; every later call reports it.
    Failed(FsError),
    /// The file was unlinked, or another file was renamed over it, while open: its bytes have
    /// no name to go to. Writes are accepted and dropped; nothing is uploaded.
    Discarded,
    /// Committed and closed, then replaced as the file's writer by a newer open before its
    /// release arrived: later writes through it are refused (EBUSY), it commits nothing.
    Superseded,
    /// Unlinked while open: the handles that have it open go on reading and writing it here
    /// (changes kept on local disk), and nothing is uploaded any more.
    Orphaned,
}

pub struct FileWriter<S> {
    store: Arc<S>,
    key: String,
    opts: PutOptions,
    base_part_size: u64,
    budget: Arc<Semaphore>,
    /// The budget's size: no part holds more.
    budget_total: usize,
    buffer: PartBuffer,
    /// Budget held for `buffer`.
    buffer_permit: Option<OwnedSemaphorePermit>,
    /// The part being filled has been given its budget (or went on without, see
    /// `hold_part_budget`).
    part_budgeted: bool,
    /// A part upload failure found while waiting for budget, reported at the next write.
    parked_error: Option<FsError>,
    size: u64,
    upload: Option<Upload>,
    done_parts: Vec<UploadedPart>,
    state: State,
    /// Where multipart uploads in flight are recorded, so a crash leaves no orphan unknown.
    journal: Option<Arc<UploadJournal>>,
    /// A close (flush) came and nothing was written or truncated since.
    closed: bool,
    /// Local disk for the changed bytes of files written in place; without it, writes that
    /// are not a plain stream from the start are refused (EOPNOTSUPP).
    disk: Option<Arc<DiskCache>>,
    /// The object the file's content starts from (opened without truncation, or committed):
    /// writes after that change it in place.
    base: Option<Base>,
    /// The content being changed in place (see `patch`).
    patch: Option<PatchFile>,
    /// Opened for reading too (O_RDWR): writes go to a patch from the first byte, so the
    /// handle can read back what it wrote.
    random_access: bool,
}

impl<S: ObjectStore> FileWriter<S> {
    /// A writer for a new (or truncated) object.
    pub fn new(
        store: Arc<S>,
        key: String,
        opts: PutOptions,
        part_size: u64,
        budget: Arc<Semaphore>,
        budget_total: usize,
    ) -> Self {
        Self {
            store,
            key,
            opts,
            base_part_size: part_size,
            budget,
            budget_total: budget_total.max(1),
            buffer: PartBuffer::default(),
            buffer_permit: None,
            part_budgeted: false,
            parked_error: None,
            size: 0,
            upload: None,
            done_parts: Vec::new(),
            state: State::Open,
            journal: None,
            closed: false,
            disk: None,
            base: None,
            patch: None,
            random_access: false,
        }
    }

    /// Where changed bytes of files written in place are kept.
    pub fn with_disk(mut self, disk: Option<Arc<DiskCache>>) -> Self {
        self.disk = disk;
        self
    }

    /// The file was opened for reading and writing.
    pub fn random_access(mut self) -> Self {
        self.random_access = true;
        self
    }

    pub fn set_random_access(&mut self) {
        self.random_access = true;
    }

    /// Records this writer's multipart uploads in `journal` while they are open.
    pub fn with_journal(mut self, journal: Option<Arc<UploadJournal>>) -> Self {
        self.journal = journal;
        self
    }

    /// A writer on an existing object, opened without `O_TRUNC`: nothing is uploaded unless
    /// it is written to or truncated; writes change the object in place.
    pub fn existing(mut self, base: Base) -> Self {
        self.size = base.size;
        self.state = State::Committed;
        self.base = Some(base);
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The file was renamed: its content goes to `key` at commit. A multipart upload in
    /// progress goes on under its own key; the commit completes it there, copies it to `key`
    /// server-side and deletes it (a crash in between leaves the content under the old name).
    /// Nothing touches S3 here, so a rename that fails afterwards has changed nothing.
    pub fn set_key(&mut self, key: String) {
        self.key = key;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn opts(&self) -> &PutOptions {
        &self.opts
    }

    pub fn opts_mut(&mut self) -> &mut PutOptions {
        &mut self.opts
    }

    /// True while written bytes are not in S3 yet.
    pub fn is_dirty(&self) -> bool {
        matches!(self.state, State::Open | State::Failed(_))
    }

    /// True when the new content is empty so far: nothing written since the open (of a new
    /// file, or with a truncate to 0).
    pub fn is_empty_replacement(&self) -> bool {
        self.state == State::Open && self.size == 0
    }

    /// True once an upload failed: the file's new content will never reach S3.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    pub fn is_discarded(&self) -> bool {
        matches!(self.state, State::Discarded | State::Orphaned)
    }

    /// A writer whose content is all in S3 (or that changed nothing) may hand the file over
    /// to a newer open before its release arrives (the kernel sends release asynchronously).
    pub fn can_be_superseded(&self) -> bool {
        self.closed && self.state == State::Committed
    }

    /// The program closed a descriptor of the file (flush).
    pub fn note_close(&mut self) {
        self.closed = true;
    }

    pub fn supersede(&mut self) {
        debug_assert!(self.can_be_superseded());
        self.state = State::Superseded;
    }

    /// The file lost its name (unlink, or a rename over it): stops and aborts any upload now;
    /// later writes are dropped and close uploads nothing.
    pub async fn discard(&mut self) {
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
        self.buffer_permit = None;
        self.part_budgeted = false;
        self.state = State::Discarded;
    }

    /// The file was unlinked while open: its content stays readable and writable through the
    /// handles that have it open, and is never uploaded. Bytes streamed but not kept (parts
    /// already uploaded) cannot be kept: then it is discarded as `discard` does.
    pub async fn orphan(&mut self) {
        if self.is_dirty() && self.patch.is_none() && self.ensure_patch().is_err() {
            self.discard().await;
            return;
        }
        self.abort().await;
        self.buffer = PartBuffer::default();
        self.buffer_permit = None;
        self.part_budgeted = false;
        self.state = State::Orphaned;
    }

    /// The key of a multipart upload in progress when the file was renamed away from it since
    /// (see `set_key`): the object appears there for a moment at commit.
    pub fn displaced_key(&self) -> Option<&str> {
        self.upload
            .as_ref()
            .map(|u| u.key.as_str())
            .filter(|k| *k != self.key)
    }

    /// Waits for every part upload in flight; the first failure is returned.
    async fn drain_parts(&mut self) -> FsResult<()> {
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

    fn journal_record(&self, key: &str, id: &str) {
        if let Some(journal) = &self.journal {
            journal.record(key, id);
        }
    }

    fn journal_forget(&self, id: &str) {
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
        if self.patch.is_some() || self.needs_patch(offset) {
            self.ensure_patch()?;
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
        self.append(data).await?;
        Ok(data.len() as u32)
    }

    /// A write to a file streaming into a multipart upload: bytes still in the part being
    /// filled are changed in memory, a write past the end streams zeros up to it first; bytes
    /// already uploaded cannot be changed (EOPNOTSUPP, nothing changes).
    async fn write_streamed(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
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
        if offset > self.size {
            self.stream_zeros(offset).await?;
        }
        let overlap = (self.size - offset).min(data.len() as u64) as usize;
        if overlap > 0 {
            let sent = self.size - self.buffer.len() as u64;
            self.buffer
                .overwrite((offset - sent) as usize, &data[..overlap]);
        }
        self.append(&data[overlap..]).await?;
        Ok(data.len() as u32)
    }

    /// Streams zeros up to `end` (a hole past the end of a streamed file).
    async fn stream_zeros(&mut self, end: u64) -> FsResult<()> {
        let zeros = vec![0u8; 1 << 20];
        while self.size < end {
            let n = (end - self.size).min(zeros.len() as u64) as usize;
            self.append(&zeros[..n]).await?;
        }
        Ok(())
    }

    /// Appends to the stream: bytes fill the part being built, full parts go up.
    async fn append(&mut self, data: &[u8]) -> FsResult<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let number = self.upload.as_ref().map(|u| u.next_number).unwrap_or(1);
            if number > MAX_PARTS {
                return Err(self.fail(FsError::FileTooLarge).await);
            }
            let part_size = part_size_for(self.base_part_size, number) as usize;
            let take = (part_size - self.buffer.len()).min(rest.len());
            if self.needs_whole_part(take) {
                self.hold_part_budget(part_size).await;
                if let Some(e) = self.parked_error.take() {
                    return Err(self.fail(e).await);
                }
            }
            self.grow_buffer(take, part_size);
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.size += take as u64;
            if self.buffer.len() == part_size {
                // The full part leaves with its own allocation: nothing of it stays behind.
                let part = std::mem::take(&mut self.buffer).freeze();
                let permit = self.take_permit();
                if let Err(e) = self.send_part(part, permit).await {
                    return Err(self.fail(e).await);
                }
            }
        }
        Ok(())
    }

    /// True when a write at `offset` cannot be a plain stream from the start of the file: the
    /// file has content it keeps (opened without truncation, or committed), the write is not at
    /// the end, or the handle reads too.
    fn needs_patch(&self, offset: u64) -> bool {
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
    fn ensure_patch(&mut self) -> FsResult<()> {
        if self.patch.is_some() {
            return Ok(());
        }
        let Some(disk) = self.disk.clone() else {
            debug!(key = %self.key, "writing in place needs the disk cache (--max-cache-size)");
            return Err(FsError::NotSupported);
        };
        match self.state {
            State::Committed | State::Orphaned => {
                let base = self.base.clone().filter(|b| b.size > 0 && self.size > 0);
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
                let mut patch = PatchFile::new(disk, None)?;
                patch.write(0, self.buffer.as_slice())?;
                self.buffer = PartBuffer::default();
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
            if !fresh || !self.buffer.as_slice().is_empty() {
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
        if size > super::patch::MAX_OBJECT_SIZE {
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
                    self.buffer.truncate((size - sent) as usize);
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

    /// Makes room for `additional` bytes: the first part of a file grows in powers of two up
    /// to 1 MiB (most files are small); past that, and for every later part, the buffer takes
    /// the whole part at once (from the store's pool when it has one), so a part is never
    /// copied on growth nor held twice.
    fn grow_buffer(&mut self, additional: usize, part_size: usize) {
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
    fn parts_in_flight_limit(&self) -> usize {
        let parts_in_budget = self.budget_total / (self.base_part_size.max(1) as usize);
        parts_in_budget
            .saturating_sub(1)
            .clamp(2, MAX_PARTS_IN_FLIGHT)
    }

    /// True when `additional` more bytes make the buffer a whole part (see `grow_buffer`).
    fn needs_whole_part(&self, additional: usize) -> bool {
        self.upload.is_some() || self.buffer.len() + additional > SMALL_START
    }

    /// Holds budget for the whole part being filled, once per part, before its buffer grows
    /// past the small start. A writer waits here holding no budget of its own (its earlier
    /// parts' budget travels with their uploads, which finish on their own), and no request is
    /// larger than the whole budget. But other files may hold budget for parts their programs
    /// have paused filling (`tee x | gzip > y` fills two files from one pipeline), so the wait
    /// is bounded: after `BUDGET_WAIT` this part goes on without budget. At most one such part
    /// per file exists at a time: this file's uploads in flight are finished first.
    async fn hold_part_budget(&mut self, part_size: usize) {
        if self.part_budgeted {
            return;
        }
        self.part_budgeted = true;
        let permits = part_size.min(self.budget_total).min(u32::MAX as usize) as u32;
        let wait = self.budget.clone().acquire_many_owned(permits);
        match tokio::time::timeout(BUDGET_WAIT, wait).await {
            Ok(Ok(permit)) => self.buffer_permit = Some(permit),
            Ok(Err(_)) => warn!(key = %self.key, "memory budget closed"),
            Err(_) => {
                debug!(key = %self.key, "memory budget held by other files: one part over it");
                // Best effort: a failed part surfaces at the next write or the commit.
                if let Err(e) = self.drain_parts().await {
                    self.parked_error = Some(e);
                }
            }
        }
    }

    /// The budget of the part being sent: it travels with the upload.
    fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.part_budgeted = false;
        self.buffer_permit.take()
    }

    async fn send_part(
        &mut self,
        body: Bytes,
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
            store.upload_part(&key, &id, number, body).await
        }));
        Ok(())
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

    async fn finish(&mut self) -> FsResult<Option<String>> {
        let rest = std::mem::take(&mut self.buffer).freeze();
        if self.upload.is_none() {
            // Small and empty files: one PutObject (some servers reject an empty part).
            return Ok(self.store.put(&self.key, rest, &self.opts).await?);
        }
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
            self.store
                .complete_multipart(&upload_key, &id, &self.done_parts)
                .await?
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

    /// Commits an in-place change: one PutObject for a file of up to one part, else one
    /// multipart upload composed of server-side copies of the unchanged base and uploads of
    /// the rest. The old object stays until the new one is complete.
    async fn finish_patch(&mut self) -> FsResult<Option<String>> {
        let patch = self.patch.as_ref().expect("called with a patch");
        let size = patch.size();
        let whole_pinned_base = patch
            .base()
            .filter(|_| patch.is_whole_base() && size <= super::copy::MAX_COPY_OBJECT)
            .and_then(|base| Some((base.key.as_str(), base.etag.as_deref()?)));
        if let Some((source, etag)) = whole_pinned_base {
            // A copy of a whole object (copy_file_range), or an object changed back to what
            // it was: one CopyObject, pinned to the version it started from.
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
            return match in_place_expect(patch.base(), &self.key) {
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
        let expect = in_place_expect(patch.base(), &self.key);
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
    async fn run_plan(&self, plan: &[PartPlan], id: &str) -> FsResult<Vec<UploadedPart>> {
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

    /// Drops everything written so far (truncate to 0): the file is empty and open again.
    pub async fn truncate(&mut self) -> FsResult<()> {
        self.closed = false;
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
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

    async fn fail(&mut self, error: FsError) -> FsError {
        warn!(key = %self.key, "upload failed: {error}");
        self.abort().await;
        self.patch = None;
        self.buffer = PartBuffer::default();
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

/// What a change in place of `key` expects S3 to hold there: the version it started from.
fn in_place_expect(base: Option<&Base>, key: &str) -> Option<Expect> {
    base.filter(|b| b.key == key)
        .and_then(|b| b.etag.clone())
        .map(Expect::Version)
}

/// Tries to delete a stray copy of a file renamed while being written.
const STRAY_DELETE_TRIES: u32 = 3;

/// Deletes `key` (gone already counts as deleted; with `etag`, only that version), trying
/// `STRAY_DELETE_TRIES` times.
async fn delete_tried<S: ObjectStore>(store: &S, key: &str, etag: Option<&str>) -> StoreResult<()> {
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
fn joined(
    result: Result<StoreResult<UploadedPart>, tokio::task::JoinError>,
) -> FsResult<UploadedPart> {
    match result {
        Ok(part) => Ok(part?),
        Err(e) => Err(FsError::Io(format!("part upload task: {e}"))),
    }
}

/// Budget for `bytes` of a part being assembled, waiting at most `BUDGET_WAIT` (then the part
/// goes on without, as `FileWriter::hold_part_budget` explains).
async fn hold_budget(
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

/// The bytes of the part being filled: a small growable buffer for the start of a file, or a
/// whole part, pooled when the store recycles buffers.
enum PartBuffer {
    Small(BytesMut),
    Pooled(PooledBuf),
}

impl Default for PartBuffer {
    fn default() -> Self {
        Self::Small(BytesMut::new())
    }
}

impl PartBuffer {
    fn len(&self) -> usize {
        match self {
            Self::Small(b) => b.len(),
            Self::Pooled(b) => b.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Small(b) => b,
            Self::Pooled(b) => b.as_ref(),
        }
    }

    /// Rewrites bytes already buffered, from `at` on (within the buffer).
    fn overwrite(&mut self, at: usize, data: &[u8]) {
        let slice: &mut [u8] = match self {
            Self::Small(b) => b,
            Self::Pooled(b) => b.as_mut(),
        };
        slice[at..at + data.len()].copy_from_slice(data);
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Self::Small(b) => b.truncate(len),
            Self::Pooled(b) => b.truncate(len),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Small(b) => b.capacity(),
            Self::Pooled(b) => b.capacity(),
        }
    }

    fn extend_from_slice(&mut self, data: &[u8]) {
        match self {
            Self::Small(b) => b.extend_from_slice(data),
            Self::Pooled(b) => b.extend_from_slice(data),
        }
    }

    fn reserve_small(&mut self, capacity: usize) {
        if let Self::Small(b) = self {
            b.reserve(capacity - b.len());
        }
    }

    /// Room for a whole part, keeping what is buffered so far.
    fn reserve_part(&mut self, part_size: usize, pool: Option<&Arc<BufferPool>>) {
        match (pool, &mut *self) {
            (Some(pool), Self::Small(small)) => {
                let mut part = pool.take(part_size);
                part.extend_from_slice(small);
                *self = Self::Pooled(part);
            }
            (None, Self::Small(small)) => small.reserve(part_size - small.len()),
            (_, Self::Pooled(_)) => {} // already a whole part
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Small(b) => b.freeze(),
            Self::Pooled(b) => b.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faulty::{FaultyStore, Op};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;
    use std::time::Duration;

    #[test]
    fn a_part_buffer_moves_into_a_pooled_part_keeping_its_bytes() {
        let pool = BufferPool::new(64 << 20);
        let mut buffer = PartBuffer::default();
        buffer.reserve_small(4096);
        buffer.extend_from_slice(b"head");
        buffer.reserve_part(8 << 20, Some(&pool));
        assert!(matches!(buffer, PartBuffer::Pooled(_)));
        assert!(buffer.capacity() >= 8 << 20);
        buffer.extend_from_slice(b"-tail");
        let part = buffer.freeze();
        assert_eq!(&part[..], b"head-tail");
        drop(part);
        assert!(
            pool.idle_bytes() >= 8 << 20,
            "the part's buffer went back to the pool"
        );
        // Without a pool the part is an ordinary allocation.
        let mut plain = PartBuffer::default();
        plain.extend_from_slice(b"x");
        plain.reserve_part(1 << 20, None);
        assert!(matches!(plain, PartBuffer::Small(_)));
        assert!(plain.capacity() >= 1 << 20);
        assert_eq!(&plain.freeze()[..], b"x");
    }

    fn writer(
        store: &Arc<FaultyStore<MemoryStore>>,
        part: u64,
    ) -> FileWriter<FaultyStore<MemoryStore>> {
        FileWriter::new(
            store.clone(),
            "k".into(),
            PutOptions::default(),
            part,
            Arc::new(Semaphore::new(64 << 20)),
            64 << 20,
        )
    }

    fn store() -> Arc<FaultyStore<MemoryStore>> {
        Arc::new(FaultyStore::new(
            MemoryStore::new().with_min_part_size(MIN_PART_SIZE as usize),
        ))
    }

    async fn write_all(
        w: &mut FileWriter<FaultyStore<MemoryStore>>,
        data: &[u8],
        chunk: usize,
    ) -> FsResult<()> {
        let mut offset = 0;
        for piece in data.chunks(chunk) {
            w.write(offset, piece).await?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    #[test]
    fn part_sizes_grow_to_reach_five_tebibytes() {
        let base = 8 << 20;
        assert_eq!(part_size_for(base, 1), base);
        assert_eq!(part_size_for(base, 1000), base);
        assert_eq!(part_size_for(base, 1001), 2 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size_for(base, n)).sum();
        assert!(total >= 5 << 40, "{total}");
        assert_eq!(
            part_size_for(1, 1),
            MIN_PART_SIZE,
            "never below S3's minimum"
        );
    }

    #[tokio::test]
    async fn writers_sharing_a_small_budget_all_finish_within_it() {
        let store = store();
        let budget_total = 12 << 20;
        let budget = Arc::new(Semaphore::new(budget_total));
        let data: Vec<u8> = (0..(12 << 20) + 77).map(|i| (i % 249) as u8).collect();
        let mut tasks = Vec::new();
        for n in 0..6 {
            let (store, budget, data) = (store.clone(), budget.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("k{n}");
                let mut w = FileWriter::new(
                    store.clone(),
                    key.clone(),
                    PutOptions::default(),
                    MIN_PART_SIZE,
                    budget,
                    budget_total,
                );
                write_all(&mut w, &data, 128 << 10).await.unwrap();
                w.commit().await.unwrap();
                assert_eq!(store.inner().get(&key).unwrap(), data);
            }));
        }
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(Duration::from_secs(30), all).await;
        for result in done.expect("writers deadlocked on the budget") {
            result.unwrap();
        }
        assert_eq!(
            budget.available_permits(),
            budget_total,
            "all budget returned"
        );
    }

    #[tokio::test]
    async fn small_and_empty_files_are_one_put() {
        let store = store();
        let mut w = writer(&store, 8 << 20);
        assert_eq!(w.commit().await.unwrap().map(|(s, _)| s), Some(0));
        assert_eq!(store.inner().get("k").unwrap().len(), 0);
        let mut w = writer(&store, 8 << 20);
        write_all(&mut w, b"hello", 2).await.unwrap();
        assert!(
            store.inner().get("k").unwrap().is_empty(),
            "not visible before commit"
        );
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"hello");
        assert_eq!(store.calls(Op::CreateMultipart), 0);
    }

    #[tokio::test]
    async fn large_files_stream_as_multipart() {
        let store = store();
        let data: Vec<u8> = (0..(12 << 20) + 123).map(|i| (i % 253) as u8).collect();
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &data, 128 << 10).await.unwrap();
        assert_eq!(
            store.calls(Op::CreateMultipart),
            1,
            "the upload started while writing"
        );
        assert!(store.inner().get("k").is_none());
        w.commit().await.unwrap();
        assert_eq!(store.inner().get("k").unwrap(), data);
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_fails_the_close_and_aborts_the_upload() {
        let store = store();
        store.fail(Op::UploadPart, StoreError::Transient("reset".into()), 1);
        let data = vec![7u8; 11 << 20];
        let mut w = writer(&store, MIN_PART_SIZE);
        let written = write_all(&mut w, &data, 1 << 20).await;
        let committed = w.commit().await;
        assert!(written.is_err() || committed.is_err());
        assert_eq!(
            w.commit().await.unwrap_err().errno(),
            libc::EIO,
            "stays failed"
        );
        assert!(store.inner().get("k").is_none(), "nothing visible");
        assert_eq!(store.inner().open_uploads(), 0, "upload aborted");
    }

    #[tokio::test]
    async fn no_part_upload_runs_on_after_a_failure_aborted_the_upload() {
        let store = store();
        // Slow parts, so several are in flight when one fails.
        store.chaos(&[], 0, Duration::from_millis(40), 7);
        store.fail(Op::UploadPart, StoreError::Transient("reset".into()), 1);
        let mut w = writer(&store, MIN_PART_SIZE);
        // More parts than may be in flight at once, so the writer waits on the failed one.
        let written = write_all(&mut w, &vec![3u8; 120 << 20], 1 << 20).await;
        let committed = w.commit().await;
        assert!(written.is_err() || committed.is_err());
        assert!(
            w.commit().await.is_err(),
            "stays failed: nothing else is stored"
        );
        assert!(store.inner().get("k").is_none());
        assert_eq!(
            store.parts_in_flight(),
            0,
            "a part upload outlived the abort"
        );
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_complete_fails_the_close_and_aborts() {
        let store = store();
        store.fail(
            Op::CompleteMultipart,
            StoreError::Transient("500".into()),
            1,
        );
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &vec![1u8; 6 << 20], 1 << 20)
            .await
            .unwrap();
        assert_eq!(w.commit().await.unwrap_err().errno(), libc::EIO);
        assert!(store.inner().get("k").is_none());
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_single_put_fails_the_close() {
        let store = store();
        store.fail(Op::Put, StoreError::Transient("503".into()), 1);
        let mut w = writer(&store, 8 << 20);
        write_all(&mut w, b"data", 4).await.unwrap();
        assert_eq!(w.commit().await.unwrap_err().errno(), libc::EIO);
        assert!(store.inner().get("k").is_none());
    }

    #[tokio::test]
    async fn non_sequential_writes_and_overwrites_are_refused() {
        let store = store();
        let mut w = writer(&store, 8 << 20);
        w.write(0, b"abc").await.unwrap();
        assert_eq!(
            w.write(10, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            w.write(1, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        // Without a disk to keep changed bytes, an existing object cannot change in place.
        let mut existing = writer(&store, 8 << 20).existing(Base {
            key: "k".into(),
            etag: None,
            size: 5,
        });
        assert_eq!(
            existing.write(0, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        existing.truncate().await.unwrap();
        existing.write(0, b"new").await.unwrap();
        existing.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"new");
    }

    #[tokio::test]
    async fn truncating_mid_upload_starts_over_cleanly() {
        let store = store();
        let mut w = writer(&store, MIN_PART_SIZE);
        write_all(&mut w, &vec![1u8; 6 << 20], 1 << 20)
            .await
            .unwrap();
        w.truncate().await.unwrap();
        w.write(0, b"short").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"short");
        assert_eq!(store.inner().open_uploads(), 0);
    }

    fn disk() -> Arc<DiskCache> {
        DiskCache::new(crate::fs::disk_cache::DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes: 1 << 30,
            chunk_size: 1 << 20,
            concurrency: 1,
        })
    }

    fn patcher(
        store: &Arc<FaultyStore<MemoryStore>>,
        key: &str,
    ) -> FileWriter<FaultyStore<MemoryStore>> {
        let info = store.inner().info(key).unwrap();
        FileWriter::new(
            store.clone(),
            key.into(),
            PutOptions::default(),
            MIN_PART_SIZE,
            Arc::new(Semaphore::new(64 << 20)),
            64 << 20,
        )
        .with_disk(Some(disk()))
        .existing(Base {
            key: key.into(),
            etag: info.etag,
            size: info.size,
        })
    }

    #[tokio::test]
    async fn writes_anywhere_in_a_small_object_rewrite_it_with_one_put() {
        let store = store();
        store
            .inner()
            .insert("k", Bytes::from_static(b"hello world"));
        let mut w = patcher(&store, "k");
        w.write(0, b"J").await.unwrap();
        w.write(11, b"!").await.unwrap(); // append
        assert_eq!(&w.read(0, 100).await.unwrap().unwrap()[..], b"Jello world!");
        assert_eq!(
            &store.inner().get("k").unwrap()[..],
            b"hello world",
            "the old object stays until the commit"
        );
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"Jello world!");
        // Committed, then changed again: from the new object.
        w.truncate_to(5).await.unwrap();
        w.truncate_to(8).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"Jello\0\0\0");
        assert_eq!(store.calls(Op::CreateMultipart), 0);
    }

    #[tokio::test]
    async fn appending_to_a_large_object_copies_it_server_side() {
        let store = store();
        let data = crate::testdata::random_bytes(64 << 20, 3);
        store.inner().insert("k", data.clone());
        let sent_before = store.bytes_sent();
        let mut w = patcher(&store, "k");
        w.write(64 << 20, &[7u8; 1024]).await.unwrap();
        w.commit().await.unwrap();
        let sent = store.bytes_sent() - sent_before;
        assert!(
            sent <= MIN_PART_SIZE + 1024,
            "sent {sent} bytes to append 1 KiB"
        );
        assert_eq!(store.calls(Op::UploadPartCopy), 1);
        let stored = store.inner().get("k").unwrap();
        assert_eq!(stored.len(), (64 << 20) + 1024);
        assert_eq!(&stored[..64 << 20], &data[..]);
        assert!(stored[64 << 20..].iter().all(|&b| b == 7));
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_base_changed_on_the_server_fails_the_commit_and_is_left_alone() {
        let store = store();
        store
            .inner()
            .insert("k", crate::testdata::random_bytes(20 << 20, 4));
        let mut w = patcher(&store, "k");
        w.write(1 << 20, b"change").await.unwrap();
        // Another client replaces the object meanwhile.
        let theirs = crate::testdata::random_bytes(20 << 20, 5);
        store.inner().insert("k", theirs.clone());
        let err = w.commit().await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
        assert_eq!(store.inner().get("k").unwrap(), theirs, "never a blend");
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_stream_that_turns_random_before_its_first_part_keeps_every_byte() {
        let store = store();
        let mut w = writer(&store, 8 << 20).with_disk(Some(disk()));
        w.write(0, b"0123456789").await.unwrap();
        w.write(2, b"ab").await.unwrap(); // back into the buffered start
        w.write(12, b"Z").await.unwrap(); // past the end: a hole of zeros
        w.commit().await.unwrap();
        assert_eq!(&store.inner().get("k").unwrap()[..], b"01ab456789\0\0Z");
    }
}

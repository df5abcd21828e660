//! The buffer of the part being filled: a small growing buffer for the start of a file, then
//! a whole part (pooled when the store keeps buffers), or a part staged on local disk when
//! neither the memory budget nor the overdraft can hold it.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;
use crate::fs::patch::scratch_write_error;

/// The bytes of the part being filled: a small growable buffer for the start of a file, a
/// whole part (pooled when the store recycles buffers), or a part on local disk.
pub(super) enum PartBuffer {
    Small(BytesMut),
    Pooled(PooledBuf),
    Staged(StagedPart),
}

impl Default for PartBuffer {
    fn default() -> Self {
        Self::Small(BytesMut::new())
    }
}

/// A part filled in an unnamed file of the disk cache, its whole size reserved there: what
/// a file being written holds once the memory budget and the overdraft are used up, so memory
/// stays bounded however many files are written at once (README: Bounds). It is uploaded
/// from the file, never read back into memory whole.
pub struct StagedPart {
    file: File,
    len: usize,
    capacity: usize,
    /// Disk cache bytes held: the capacity in whole 4 KiB blocks, as a patch counts them (a
    /// part size need not be a multiple of 4096).
    reserved: u64,
    disk: Arc<DiskCache>,
}

impl StagedPart {
    /// Room for a part of `capacity` bytes on local disk; `NoSpace` when the disk cache
    /// cannot hold it.
    fn new(disk: Arc<DiskCache>, capacity: usize) -> FsResult<Self> {
        let reserved = (capacity as u64).next_multiple_of(4096);
        if !disk.reserve(reserved) {
            return Err(FsError::NoSpace);
        }
        let file = match disk.scratch_file() {
            Ok(file) => file,
            Err(e) => {
                disk.release(reserved);
                return Err(scratch_write_error(e));
            }
        };
        Ok(Self {
            file,
            len: 0,
            capacity,
            reserved,
            disk,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn write_at(&mut self, at: usize, data: &[u8]) -> FsResult<()> {
        self.file
            .write_all_at(data, at as u64)
            .map_err(scratch_write_error)?;
        self.len = self.len.max(at + data.len());
        Ok(())
    }

    fn read_all(&self) -> FsResult<Vec<u8>> {
        let mut out = vec![0; self.len];
        self.file
            .read_exact_at(&mut out, 0)
            .map_err(|e| FsError::Io(format!("reading a part staged on disk: {e}")))?;
        Ok(out)
    }
}

impl StagedPart {
    /// Its file, length and the disk room it holds, for a patch to take over (see
    /// `PatchFile::from_written`): the room is no longer given back when this part is dropped.
    /// On failure nothing changed.
    pub fn take_file(&mut self) -> FsResult<(File, u64, u64, Arc<DiskCache>)> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| FsError::Io(format!("a part staged on disk: {e}")))?;
        let reserved = std::mem::take(&mut self.reserved);
        Ok((file, self.len as u64, reserved, self.disk.clone()))
    }
}

impl Drop for StagedPart {
    fn drop(&mut self) {
        self.disk.release(self.reserved);
    }
}

/// A part leaving for S3: from memory, or from the file it was staged in.
pub enum PartBody {
    Memory(Bytes),
    Staged(StagedPart),
}

impl PartBody {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Memory(b) => b.len(),
            Self::Staged(p) => p.len,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uploads it as part `number` of upload `id`.
    pub(super) async fn upload<S: ObjectStore>(
        self,
        store: &S,
        key: &str,
        id: &str,
        number: i32,
    ) -> StoreResult<UploadedPart> {
        match self {
            Self::Memory(bytes) => store.upload_part(key, id, number, bytes).await,
            Self::Staged(part) => {
                store
                    .upload_part_from_file(key, id, number, part.file(), part.len() as u64)
                    .await
            }
        }
    }
}

impl PartBuffer {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Small(b) => b.len(),
            Self::Pooled(b) => b.len(),
            Self::Staged(p) => p.len,
        }
    }

    pub(super) fn is_staged(&self) -> bool {
        matches!(self, Self::Staged(_))
    }

    /// The bytes buffered (read back from disk for a staged part: only when the file turns to
    /// a patch, which copies them once).
    pub(super) fn contents(&self) -> FsResult<Cow<'_, [u8]>> {
        Ok(match self {
            Self::Small(b) => Cow::Borrowed(b),
            Self::Pooled(b) => Cow::Borrowed(b.as_ref()),
            Self::Staged(p) => Cow::Owned(p.read_all()?),
        })
    }

    /// Rewrites bytes already buffered, from `at` on (within the buffer).
    pub(super) fn overwrite(&mut self, at: usize, data: &[u8]) -> FsResult<()> {
        let slice: &mut [u8] = match self {
            Self::Small(b) => b,
            Self::Pooled(b) => b.as_mut(),
            Self::Staged(p) => return p.write_at(at, data),
        };
        slice[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    pub(super) fn truncate(&mut self, len: usize) -> FsResult<()> {
        match self {
            Self::Small(b) => b.truncate(len),
            Self::Pooled(b) => b.truncate(len),
            Self::Staged(p) => {
                p.file
                    .set_len(len as u64)
                    .map_err(|e| FsError::Io(format!("truncating a part staged on disk: {e}")))?;
                p.len = p.len.min(len);
            }
        }
        Ok(())
    }

    pub(super) fn capacity(&self) -> usize {
        match self {
            Self::Small(b) => b.capacity(),
            Self::Pooled(b) => b.capacity(),
            Self::Staged(p) => p.capacity,
        }
    }

    pub(super) fn extend_from_slice(&mut self, data: &[u8]) -> FsResult<()> {
        match self {
            Self::Small(b) => b.extend_from_slice(data),
            Self::Pooled(b) => b.extend_from_slice(data),
            Self::Staged(p) => {
                let at = p.len;
                return p.write_at(at, data);
            }
        }
        Ok(())
    }

    pub(super) fn reserve_small(&mut self, capacity: usize) {
        if let Self::Small(b) = self {
            b.reserve(capacity - b.len());
        }
    }

    /// Room for a whole part, keeping what is buffered so far.
    pub(super) fn reserve_part(&mut self, part_size: usize, pool: Option<&Arc<BufferPool>>) {
        match (pool, &mut *self) {
            (Some(pool), Self::Small(small)) => {
                let mut part = pool.take(part_size);
                part.extend_from_slice(small);
                *self = Self::Pooled(part);
            }
            (None, Self::Small(small)) => small.reserve(part_size - small.len()),
            (_, Self::Pooled(_) | Self::Staged(_)) => {} // already a whole part
        }
    }

    /// Moves the part being filled to local disk (room for `part_size` bytes), keeping what is
    /// buffered so far; `NoSpace` (nothing changed) when the disk cache cannot hold it.
    pub(super) fn stage(&mut self, disk: Arc<DiskCache>, part_size: usize) -> FsResult<()> {
        if self.is_staged() {
            return Ok(());
        }
        let mut part = StagedPart::new(disk, part_size)?;
        part.write_at(0, &self.contents()?)?;
        *self = Self::Staged(part);
        Ok(())
    }

    pub(super) fn into_body(self) -> PartBody {
        match self {
            Self::Small(b) => PartBody::Memory(b.freeze()),
            Self::Pooled(b) => PartBody::Memory(b.freeze()),
            Self::Staged(p) => PartBody::Staged(p),
        }
    }
}

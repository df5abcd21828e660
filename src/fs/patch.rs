//! The content of a file changed in place: an existing object (the *base*, pinned to the ETag
//! seen at open) plus the ranges written since, kept in an unnamed scratch file on local disk
//! (bounded by the disk cache, `--max-cache-size`). Nothing reaches S3 until the commit, which
//! composes the new object in one multipart upload: unchanged ranges of the base large enough
//! to be parts are copied server-side (UploadPartCopy, conditioned on the base's ETag), the
//! rest is uploaded. A base that changed on the server fails the commit (ESTALE) and leaves the
//! server's object untouched: never a blend of two versions.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use super::disk_cache::DiskCache;
use super::error::{FsError, FsResult};
pub use super::parts::MAX_PART_SIZE;
use super::parts::{MAX_PARTS, MIN_PART_SIZE};
use crate::store::{ObjectStore, StoreError};

/// Disk space is counted in blocks of this size: a one-byte write into a sparse scratch file
/// takes a whole filesystem block.
const BLOCK: u64 = 4096;

/// S3's largest object: a file is never written or truncated past it (EFBIG).
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// The object a patched file started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub key: String,
    pub etag: Option<String>,
    pub size: u64,
}

/// Where the bytes of one range of the new content come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Written since the open: in the scratch file.
    Dirty,
    /// Unchanged from the base object.
    Base,
    /// Past the end of what the base still provides (a file grown by truncate or by a write
    /// beyond its end): zeros.
    Zero,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub range: Range<u64>,
    pub source: Source,
}

/// One part of the composed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartPlan {
    /// Copied server-side from the same range of the base.
    Copy(Range<u64>),
    /// Assembled here and uploaded.
    Upload(Range<u64>),
}

pub struct PatchFile {
    file: File,
    disk: Arc<DiskCache>,
    base: Option<Base>,
    /// Bytes of the base still part of the file: a truncate below it drops the rest for good,
    /// even if the file grows again (those bytes read as zeros then).
    valid_base: u64,
    size: u64,
    /// Written ranges, start -> end: disjoint, and merged when they touch.
    dirty: BTreeMap<u64, u64>,
    /// Disk cache bytes held for the written ranges: the blocks they touch.
    reserved: u64,
}

/// The error a failed write of a scratch file (changed bytes, a part staged on disk) answers.
pub(crate) fn scratch_write_error(e: std::io::Error) -> FsError {
    warn!("writing a scratch file failed: {e}");
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
        Some(libc::EFBIG) => FsError::FileTooLarge,
        _ => FsError::Io(e.to_string()),
    }
}

impl PatchFile {
    /// A patch of `base` (None: a file with no object yet, starting empty).
    pub fn new(disk: Arc<DiskCache>, base: Option<Base>) -> FsResult<Self> {
        let file = disk.scratch_file().map_err(|e| {
            warn!("no scratch file for a file written in place: {e}");
            FsError::NoSpace
        })?;
        let size = base.as_ref().map_or(0, |b| b.size);
        Ok(Self {
            file,
            disk,
            base,
            valid_base: size,
            size,
            dirty: BTreeMap::new(),
            reserved: 0,
        })
    }

    /// A patch of a new file whose first `len` bytes are already in `file` (a part staged on
    /// local disk), which holds `reserved` bytes of the disk cache: both are taken over as they
    /// are, nothing is copied, and what the bytes do not need is given back.
    pub fn from_written(disk: Arc<DiskCache>, file: File, len: u64, reserved: u64) -> Self {
        let mut patch = Self {
            file,
            disk,
            base: None,
            valid_base: 0,
            size: len,
            dirty: BTreeMap::new(),
            reserved,
        };
        if len > 0 {
            patch.mark_dirty(0..len);
        }
        let footprint = patch.footprint();
        if footprint < patch.reserved {
            patch.disk.release(patch.reserved - footprint);
            patch.reserved = footprint;
        }
        debug_assert!(
            footprint <= patch.reserved,
            "a staged part reserves whole blocks"
        );
        patch
    }

    /// A file whose content so far is the first `len` bytes of `source` (copy_file_range):
    /// nothing is read or written here; the commit copies them server-side.
    pub fn clone_of(disk: Arc<DiskCache>, source: Base, len: u64) -> FsResult<Self> {
        let mut patch = Self::new(disk, Some(source))?;
        patch.truncate(len);
        Ok(patch)
    }

    /// Extends a clone by the next bytes of its base, up to `end`: only while the file ends
    /// exactly where the base's bytes still in it end (a copy continued where it stopped).
    pub fn extend_clone(&mut self, end: u64) -> bool {
        let Some(base) = &self.base else {
            return false;
        };
        if self.size != self.valid_base || end > base.size || end < self.size {
            return false;
        }
        self.valid_base = end;
        self.size = end;
        true
    }

    /// True when the content is exactly the whole base, untouched: a server-side copy of it.
    pub fn is_whole_base(&self) -> bool {
        self.dirty.is_empty()
            && self
                .base
                .as_ref()
                .is_some_and(|b| self.size == b.size && self.valid_base == b.size)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }

    /// The base object was copied to a new key (the file was renamed).
    pub fn rebase(&mut self, key: String, etag: Option<String>) {
        if let Some(base) = &mut self.base {
            base.key = key;
            base.etag = etag;
        }
    }

    /// Bytes written since the open (kept on local disk).
    pub fn dirty_bytes(&self) -> u64 {
        self.reserved
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= MAX_OBJECT_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        let new_bytes = self.new_blocks(offset..end) * BLOCK;
        if !self.disk.reserve(new_bytes) {
            warn!(
                bytes = new_bytes,
                "the disk cache (--max-cache-size) cannot hold more changed bytes: ENOSPC"
            );
            return Err(FsError::NoSpace);
        }
        if let Err(e) = self.file.write_all_at(data, offset) {
            self.disk.release(new_bytes);
            return Err(scratch_write_error(e));
        }
        self.reserved += new_bytes;
        self.mark_dirty(offset..end);
        self.size = self.size.max(end);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.valid_base = self.valid_base.min(size);
            let cut: Vec<(u64, u64)> = self
                .dirty
                .range(..)
                .filter(|(_, &end)| end > size)
                .map(|(&s, &e)| (s, e))
                .collect();
            for (start, _) in cut {
                self.dirty.remove(&start);
                if start < size {
                    self.dirty.insert(start, size);
                }
            }
            let footprint = self.footprint();
            self.disk.release(self.reserved.saturating_sub(footprint));
            self.reserved = footprint.min(self.reserved);
            // Frees the scratch file's blocks past the new end.
            if let Err(e) = self.file.set_len(size) {
                warn!("shrinking the scratch file failed: {e}");
            }
        }
        self.size = size;
    }

    /// Blocks `range` touches that no written range touches yet.
    fn new_blocks(&self, range: Range<u64>) -> u64 {
        let (first, end) = (range.start / BLOCK, range.end.div_ceil(BLOCK));
        let mut covered = 0;
        let mut next_free = first; // blocks before this one are counted already
        let window = self
            .dirty
            .range(..end * BLOCK)
            .filter(|(_, &e)| e > first * BLOCK);
        for (&s, &e) in window {
            let from = (s / BLOCK).max(next_free);
            let to = e.div_ceil(BLOCK).min(end);
            if to > from {
                covered += to - from;
                next_free = to;
            }
        }
        (end - first) - covered
    }

    /// Blocks the written ranges touch, in bytes.
    fn footprint(&self) -> u64 {
        let mut blocks = 0;
        let mut next_free = 0;
        for (&s, &e) in &self.dirty {
            let from = (s / BLOCK).max(next_free);
            let to = e.div_ceil(BLOCK);
            if to > from {
                blocks += to - from;
                next_free = to;
            }
        }
        blocks * BLOCK
    }

    fn mark_dirty(&mut self, range: Range<u64>) {
        let (mut start, mut end) = (range.start, range.end);
        let touching: Vec<(u64, u64)> = self
            .dirty
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.dirty.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.dirty.insert(start, end);
    }

    /// Where each byte of `range` comes from, in order, in maximal segments.
    pub fn segments(&self, range: Range<u64>) -> Vec<Segment> {
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        let mut push = |range: Range<u64>, source: Source| {
            if range.is_empty() {
                return;
            }
            match out.last_mut() {
                Some(Segment {
                    range: last,
                    source: s,
                }) if *s == source && last.end == range.start => last.end = range.end,
                _ => out.push(Segment { range, source }),
            }
        };
        let mut pos = range.start;
        while pos < end {
            // The written range holding `pos`, or else the next one after it.
            let holding = self
                .dirty
                .range(..=pos)
                .next_back()
                .filter(|(_, &e)| e > pos);
            if let Some((_, &dirty_end)) = holding {
                let to = dirty_end.min(end);
                push(pos..to, Source::Dirty);
                pos = to;
                continue;
            }
            let next_dirty = self
                .dirty
                .range(pos..)
                .next()
                .map_or(end, |(&s, _)| s.min(end));
            if pos < self.valid_base {
                let to = next_dirty.min(self.valid_base);
                push(pos..to, Source::Base);
                pos = to;
            } else {
                push(pos..next_dirty, Source::Zero);
                pos = next_dirty;
            }
        }
        out
    }

    /// The parts of the new object: unchanged base runs of at least `min_copy` bytes are copied
    /// (in parts of at most 32 × `target`, from 256 MiB to 5 GiB, so a long run is copied by
    /// several parts at once: the server copies them in parallel), everything else is uploaded
    /// in parts of up to `target` bytes. Every part but the last holds at least S3's 5 MiB.
    /// Never more than S3's 10,000 parts: when changes are scattered so thinly that every one
    /// would cost a part or two, runs must be longer to be copied and upload parts grow
    /// (both doubled until the plan fits).
    pub fn plan(&self, min_copy: u64, target: u64) -> Vec<PartPlan> {
        let (mut min_copy, mut target) = (min_copy.max(MIN_PART_SIZE), target);
        loop {
            let plan = self.plan_once(min_copy, target);
            let exhausted = min_copy > self.size && target >= MAX_PART_SIZE;
            if plan.len() <= MAX_PARTS as usize || exhausted {
                return plan;
            }
            min_copy = min_copy.saturating_mul(2);
            target = target.saturating_mul(2).min(MAX_PART_SIZE);
        }
    }

    fn plan_once(&self, min_copy: u64, target: u64) -> Vec<PartPlan> {
        let target = target.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        let copy_max = target.saturating_mul(32).clamp(256 << 20, MAX_PART_SIZE);
        let segments = self.segments(0..self.size);
        let segment_at = |pos: u64| -> &Segment {
            let i = segments.partition_point(|s| s.range.end <= pos);
            &segments[i]
        };
        // Bytes of unchanged base from `pos` on.
        let base_run = |pos: u64| -> u64 {
            let s = segment_at(pos);
            if s.source == Source::Base {
                s.range.end - pos
            } else {
                0
            }
        };
        let mut parts = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            let run = base_run(pos);
            if run >= min_copy {
                // A remainder too short to be copied on its own goes with this part.
                let len = if run > copy_max && run - copy_max < min_copy {
                    run.min(MAX_PART_SIZE)
                } else {
                    run.min(copy_max)
                };
                parts.push(PartPlan::Copy(pos..pos + len));
                pos += len;
                continue;
            }
            let start = pos;
            let limit = (start + target).min(self.size);
            let mut end = start;
            while end < limit {
                let run_here = base_run(end);
                let long_run = run_here >= min_copy;
                if long_run && end - start >= MIN_PART_SIZE {
                    break; // the run is copied as a part of its own
                }
                let mut next = segment_at(end).range.end.min(limit);
                if long_run {
                    // Only as much of the run as this part needs to reach S3's minimum.
                    next = next.min(start + MIN_PART_SIZE);
                }
                end = next;
            }
            parts.push(PartPlan::Upload(start..end));
            pos = end;
        }
        parts
    }

    /// The bytes of `range` of the new content: written bytes from the scratch file, the
    /// base's from S3 (pinned to its ETag), zeros past the base.
    pub async fn assemble<S: ObjectStore>(&self, store: &S, range: Range<u64>) -> FsResult<Bytes> {
        let end = range.end.min(self.size);
        let segments = self.segments(range.start..end);
        // The base's bytes in one ranged GET, from its first unchanged byte to its last: a part
        // with scattered writes would otherwise cost one round trip per gap between them (the
        // changed bytes in between come along and are dropped; at most one part).
        let base_span = segments.iter().filter(|s| s.source == Source::Base).fold(
            None,
            |span: Option<Range<u64>>, s| match span {
                None => Some(s.range.clone()),
                Some(span) => Some(span.start..s.range.end),
            },
        );
        let base_bytes = match &base_span {
            Some(span) => {
                let base = self.base.as_ref().expect("base bytes need a base");
                let bytes = store
                    .get_range(&base.key, span.clone(), base.etag.as_deref())
                    .await
                    .map_err(base_error)?;
                if bytes.len() as u64 != span.end - span.start {
                    // Shorter than it was at open: it changed on the server.
                    return Err(FsError::Stale);
                }
                Some(bytes)
            }
            None => None,
        };
        let mut out = Vec::with_capacity(end.saturating_sub(range.start) as usize);
        for segment in segments {
            let Range { start, end } = segment.range.clone();
            match segment.source {
                Source::Dirty => {
                    let at = out.len();
                    out.resize(at + (end - start) as usize, 0);
                    self.file
                        .read_exact_at(&mut out[at..], start)
                        .map_err(|e| FsError::Io(format!("reading the scratch file: {e}")))?;
                }
                Source::Zero => out.resize(out.len() + (end - start) as usize, 0),
                Source::Base => {
                    let (bytes, span) = base_bytes
                        .as_ref()
                        .zip(base_span.as_ref())
                        .expect("fetched above");
                    let from = (start - span.start) as usize;
                    out.extend_from_slice(&bytes[from..from + (end - start) as usize]);
                }
            }
        }
        Ok(Bytes::from(out))
    }
}

/// An error reading or copying the base: gone or changed means the file changed on the server
/// since it was opened (ESTALE).
pub fn base_error(e: StoreError) -> FsError {
    match e {
        StoreError::NotFound | StoreError::PreconditionFailed => FsError::Stale,
        other => other.into(),
    }
}

impl Drop for PatchFile {
    fn drop(&mut self) {
        self.disk.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::disk_cache::DiskCacheConfig;
    use crate::store::memory::MemoryStore;

    const MIB: u64 = 1 << 20;

    fn disk(max_bytes: u64) -> Arc<DiskCache> {
        DiskCache::new(DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes,
            chunk_size: MIB,
            concurrency: 1,
        })
    }

    fn patch_of(size: u64) -> PatchFile {
        let base = Base {
            key: "k".into(),
            etag: None,
            size,
        };
        PatchFile::new(disk(1 << 30), Some(base)).unwrap()
    }

    #[test]
    fn segments_follow_writes_truncates_and_growth() {
        let mut p = patch_of(100);
        p.write(10, &[1; 10]).unwrap();
        p.write(15, &[2; 10]).unwrap(); // overlaps and extends
        p.write(25, &[3; 5]).unwrap(); // touches: merged
        assert_eq!(p.dirty_bytes(), BLOCK, "disk is counted in blocks");
        p.truncate(50);
        p.truncate(60); // grows: 50..60 is zeros, not the base
        p.write(70, &[4; 2]).unwrap(); // beyond the end: a hole of zeros
        let got: Vec<(Range<u64>, Source)> = p
            .segments(0..p.size())
            .into_iter()
            .map(|s| (s.range, s.source))
            .collect();
        assert_eq!(
            got,
            vec![
                (0..10, Source::Base),
                (10..30, Source::Dirty),
                (30..50, Source::Base),
                (50..70, Source::Zero),
                (70..72, Source::Dirty),
            ]
        );
        p.write(3 * BLOCK, &[5; 2]).unwrap();
        assert_eq!(p.dirty_bytes(), 2 * BLOCK);
        p.truncate(20);
        assert_eq!(p.dirty_bytes(), BLOCK, "blocks cut off are given back");
    }

    #[test]
    fn an_append_to_a_large_object_copies_all_but_its_last_part() {
        let mut p = patch_of(1 << 30);
        p.write(1 << 30, &[9; 1024]).unwrap();
        let plan = p.plan(MIN_PART_SIZE, 8 * MIB);
        let uploaded: u64 = plan
            .iter()
            .map(|part| match part {
                PartPlan::Upload(r) => r.end - r.start,
                PartPlan::Copy(_) => 0,
            })
            .sum();
        // The last part may be small: the whole old object is copied, in 256 MiB parts.
        assert_eq!(plan.len(), 5, "{plan:?}");
        assert_eq!(uploaded, 1024, "only the new bytes go up: {plan:?}");
        assert_eq!(plan[0], PartPlan::Copy(0..256 << 20));
        assert_eq!(plan[3], PartPlan::Copy(768 << 20..1 << 30));
    }

    #[test]
    fn every_plan_covers_the_file_with_valid_parts() {
        let mut rng = crate::testdata::SeededRng::new(7);
        for round in 0..200 {
            let size = rng.next_u64() % (64 * MIB);
            let mut p = patch_of(size);
            for _ in 0..(rng.next_u64() % 6) {
                let at = rng.next_u64() % (size + 2 * MIB);
                let len = 1 + rng.next_u64() % (3 * MIB);
                match rng.next_u64() % 3 {
                    0 => p.truncate(at),
                    _ => p.write(at, &vec![1; len as usize]).unwrap(),
                }
            }
            let plan = p.plan(MIN_PART_SIZE, 8 * MIB);
            let mut pos = 0;
            for (i, part) in plan.iter().enumerate() {
                let r = match part {
                    PartPlan::Copy(r) => {
                        let s = p.segments(r.clone());
                        assert!(
                            s.len() == 1 && s[0].source == Source::Base,
                            "round {round}: a copy of changed bytes {s:?}"
                        );
                        r
                    }
                    PartPlan::Upload(r) => r,
                };
                assert_eq!(r.start, pos, "round {round}: parts are contiguous");
                assert!(r.end > r.start);
                if i + 1 < plan.len() {
                    assert!(r.end - r.start >= MIN_PART_SIZE, "round {round}: {plan:?}");
                }
                pos = r.end;
            }
            assert_eq!(pos, p.size(), "round {round}: the plan covers the file");
        }
    }

    #[tokio::test]
    async fn assembled_bytes_mix_base_writes_and_zeros() {
        let store = MemoryStore::new();
        store.insert("k", Bytes::from_static(b"abcdefghij"));
        let mut p = patch_of(10);
        p.write(2, b"XY").unwrap();
        p.truncate(8);
        p.truncate(12);
        p.write(11, b"!").unwrap();
        let got = p.assemble(&store, 0..12).await.unwrap();
        assert_eq!(&got[..], b"abXYefgh\0\0\0!");
        let middle = p.assemble(&store, 3..6).await.unwrap();
        assert_eq!(&middle[..], b"Yef");
    }

    #[test]
    fn a_full_disk_cache_refuses_with_enospc_and_changes_nothing() {
        let base = Base {
            key: "k".into(),
            etag: None,
            size: 10,
        };
        let mut p = PatchFile::new(disk(MIB), Some(base)).unwrap();
        p.write(0, &vec![1; MIB as usize]).unwrap();
        assert_eq!(p.write(MIB, &[1]).unwrap_err().errno(), libc::ENOSPC);
        assert_eq!(p.size(), MIB);
        // Rewriting bytes already held needs no more room.
        p.write(0, &[2; 100]).unwrap();
    }

    #[tokio::test]
    async fn scattered_writes_cost_one_get_of_the_base_per_assembled_range() {
        let store = crate::store::faulty::FaultyStore::new(MemoryStore::new());
        store
            .inner()
            .insert("k", Bytes::from(crate::testdata::random_bytes(1 << 20, 1)));
        let mut p = patch_of(1 << 20);
        for i in 0..100u64 {
            p.write(i * 10_000, b"xy").unwrap();
        }
        let got = p.assemble(&store, 0..1 << 20).await.unwrap();
        assert_eq!(store.calls(crate::store::faulty::Op::Get), 1);
        let base = store.inner().get("k").unwrap();
        assert_eq!(&got[..10_000], &[&b"xy"[..], &base[2..10_000]].concat()[..]);
        assert_eq!(&got[10_002..20_000], &base[10_002..20_000]);
    }
}

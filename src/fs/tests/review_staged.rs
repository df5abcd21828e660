//! Review of staging parts on local disk (commit 7437680): ways the change could lose data,
//! break the "refused and changes nothing" promise of ENOSPC, or leak reservations. Each
//! `staged_a_…`/`staged_an_…` test failed on that commit; the `staged_check_…` ones held.

use super::*;
use crate::fs::disk_cache::DiskCacheConfig;

const MIB: usize = 1 << 20;

/// --max-memory 64 (24 MiB budget, 5 MiB parts, 16 MiB overdraft) with a disk cache of
/// `disk` bytes.
fn config_with_disk(disk: u64) -> FsConfig {
    FsConfig {
        max_memory: 64 << 20,
        disk_cache: Some(DiskCacheConfig {
            dir: std::env::temp_dir(),
            max_bytes: disk,
            chunk_size: 1 << 20,
            concurrency: 2,
        }),
        ..super::posix::with_disk()
    }
}

async fn create(fs: &TestFs, name: &str) -> u64 {
    fs.create(ROOT_INO, OsStr::new(name), 0o644, ROOT)
        .await
        .unwrap()
        .1
}

/// `n` files that each hold a whole part (5 MiB) of the budget: 1 MiB + 1 byte written.
pub(super) async fn hold_budget_parts(fs: &TestFs, n: usize) -> Vec<u64> {
    let mut open = Vec::new();
    for i in 0..n {
        let fh = create(fs, &format!("budget{i}")).await;
        fs.write(fh, 0, &pattern(MIB, i as u8)).await.unwrap();
        fs.write(fh, MIB as u64, b"x").await.unwrap();
        open.push(fh);
    }
    open
}

/// `n` files that each hold 1 MiB of the overdraft (their small start).
pub(super) async fn hold_overdraft(fs: &TestFs, n: usize) -> Vec<u64> {
    let mut open = Vec::new();
    for i in 0..n {
        let fh = create(fs, &format!("over{i:02}")).await;
        fs.write(fh, 0, &pattern(MIB, 100 + i as u8)).await.unwrap();
        open.push(fh);
    }
    open
}

// S1. A file's start spilled to local disk (overdraft used up) is written on in order past
//     1 MiB: `unspill` took the patch out of the writer, then asked for a part's budget;
//     with neither budget nor overdraft nor disk room for a 5 MiB part, it returned early and
//     the spilled bytes were dropped: the write said ENOSPC, yet the file's first MiB, written
//     with success, was gone (the close stored zeros, or an empty object). Now the part is
//     asked for first, and without one the file stays on disk: the write goes there.
#[tokio::test]
async fn staged_a_start_that_cannot_get_a_part_stays_on_disk_and_is_stored_whole() {
    // 4 MiB of disk: a spilled 1 MiB start fits, a 5 MiB staged part does not.
    let (store, fs) = fs_with(&[], config_with_disk(4 << 20));
    let _budget = hold_budget_parts(&fs, 4).await; // 20 of 24 MiB of budget
    let _over = hold_overdraft(&fs, 16).await; // the 16 MiB overdraft
    assert_eq!(fs.write_overdraft.available_permits(), 0);

    let fh = create(&fs, "victim").await;
    let start = pattern(MIB, 7);
    assert_eq!(
        fs.write(fh, 0, &start).await,
        Ok(MIB as u32),
        "spilled to disk"
    );
    let tail = pattern(128 << 10, 9);
    assert_eq!(
        fs.write(fh, MIB as u64, &tail).await,
        Ok(tail.len() as u32),
        "no part to be had: the file stays on disk and the write goes there"
    );
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    let stored = store.inner().get("victim").unwrap();
    let mut expected = start.clone();
    expected.extend_from_slice(&tail);
    assert_eq!(stored.len(), expected.len(), "stored size");
    assert!(
        stored == expected,
        "the first MiB, written with success, is kept"
    );
}

// S1b. Same, then the disk is full too: the write is refused with ENOSPC, and the close
//      stores the MiB written with success (it once stored an object without it).
#[tokio::test]
async fn staged_a_write_refused_after_a_spilled_start_keeps_the_start() {
    // 1 MiB + a little of disk: the spilled start fits, nothing more.
    let (store, fs) = fs_with(&[], config_with_disk((1 << 20) + 4096));
    let _budget = hold_budget_parts(&fs, 4).await;
    let _over = hold_overdraft(&fs, 16).await;
    let fh = create(&fs, "victim").await;
    let start = pattern(MIB, 7);
    fs.write(fh, 0, &start).await.unwrap();
    let refused = fs.write(fh, MIB as u64, &pattern(128 << 10, 9)).await;
    assert_eq!(refused, Err(FsError::NoSpace));
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    let stored = store.inner().get("victim").unwrap_or_default();
    assert!(
        stored == start,
        "the close stores the MiB written with success ({} bytes stored)",
        stored.len()
    );
}

// S3. A file whose part is staged on disk (upload not started) is unlinked while open: the
//     orphan keeps its content on disk by copying the buffered bytes into a patch
//     (`ensure_patch`), which reserves their room while the staged part still holds the room
//     of a whole part. With a disk cache that holds the part and the bytes once, but not
//     twice, `ensure_patch` fails and `orphan` discards the content: the process that still
//     has the unlinked file open reads ESTALE where it wrote 2 MiB with success (in memory,
//     the same bytes went to the patch fine).
#[tokio::test]
async fn staged_an_unlinked_file_keeps_the_content_of_its_staged_part() {
    let (_store, fs) = fs_with(&[], config_with_disk(6 << 20));
    let fh = create(&fs, "tmp").await;
    let data = pattern(2 * MIB, 3);
    fs.write(fh, 0, &data[..MIB]).await.unwrap(); // small start, from the overdraft
    let _budget = hold_budget_parts(&fs, 4).await; // 20 of 24 MiB
    let _over = hold_overdraft(&fs, 15).await; // the rest of the overdraft
    assert_eq!(fs.write_overdraft.available_permits(), 0);
    fs.write(fh, MIB as u64, &data[MIB..]).await.unwrap(); // this part is staged (5 MiB)
    let disk = fs.read_ctx.disk.clone().unwrap();
    assert_eq!(disk.reserved_bytes(), 5 << 20, "the part is staged on disk");
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    let back = fs.read(fh, 0, 4096).await;
    assert_eq!(
        back.as_deref().map(|b| &b[..16]),
        Ok(&data[..16]),
        "the unlinked file, still open, reads back what was written to it"
    );
}

/// A memory store whose part uploads take `delay_ms` (a slow link): a part's budget (or its
/// staged room) stays held meanwhile, as it does in real life.
#[derive(Default)]
pub(super) struct SlowParts {
    pub(super) inner: MemoryStore,
    pub(super) delay_ms: std::sync::atomic::AtomicU64,
}

impl SlowParts {
    async fn slow(&self) {
        let ms = self.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

use crate::store::{ListPage, ObjectInfo, PendingUpload, PutOptions, StoreResult, UploadedPart};
use bytes::Bytes;
use std::ops::Range;

#[async_trait::async_trait]
impl ObjectStore for SlowParts {
    async fn check_bucket(&self) -> StoreResult<()> {
        self.inner.check_bucket().await
    }
    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        self.inner.head(key).await
    }
    async fn list_page(
        &self,
        p: &str,
        d: bool,
        t: Option<String>,
        m: Option<i32>,
    ) -> StoreResult<ListPage> {
        self.inner.list_page(p, d, t, m).await
    }
    async fn get_range(&self, key: &str, r: Range<u64>, m: Option<&str>) -> StoreResult<Bytes> {
        self.inner.get_range(key, r, m).await
    }
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        self.inner.put(key, body, opts).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        self.slow().await;
        self.inner.upload_part(key, id, n, body).await
    }
    async fn upload_part_from_file(
        &self,
        key: &str,
        id: &str,
        n: i32,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        self.slow().await;
        self.inner
            .upload_part_from_file(key, id, n, file, len)
            .await
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        n: i32,
        s: &str,
        r: Range<u64>,
        m: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        self.inner.upload_part_copy(key, id, n, s, r, m).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.inner.complete_multipart(key, id, parts).await
    }
    async fn complete_multipart_expecting(
        &self,
        key: &str,
        id: &str,
        parts: &[UploadedPart],
        expect: &crate::store::Expect,
    ) -> StoreResult<Option<String>> {
        self.inner
            .complete_multipart_expecting(key, id, parts, expect)
            .await
    }
    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &crate::store::Expect,
    ) -> StoreResult<Option<String>> {
        self.inner.put_expecting(key, body, opts, expect).await
    }
    async fn copy_if_match(
        &self,
        s: &str,
        d: &str,
        o: &PutOptions,
        r: bool,
        m: &str,
    ) -> StoreResult<Option<String>> {
        self.inner.copy_if_match(s, d, o, r, m).await
    }
    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        self.inner.delete_version(key, etag).await
    }
    async fn abort_multipart(&self, key: &str, id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, id).await
    }
    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.inner.list_uploads(prefix).await
    }
    async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        self.inner.presign_get(key, expires).await
    }
    async fn copy(&self, s: &str, d: &str, o: &PutOptions, r: bool) -> StoreResult<Option<String>> {
        self.inner.copy(s, d, o, r).await
    }
}

pub(super) type SlowFs = Fs<SlowParts>;

async fn slow_create(fs: &SlowFs, name: &str) -> u64 {
    fs.create(ROOT_INO, OsStr::new(name), 0o644, ROOT)
        .await
        .unwrap()
        .1
}

/// Sets up, without local disk: file "x" streaming (its first 5 MiB part sent), 3 files
/// holding a part of the budget each, and the overdraft used up; uploads take 1 s. Then
/// x's next part finds budget, the one after finds none.
pub(super) async fn streaming_file_with_one_more_part_of_budget(
) -> (Arc<SlowParts>, SlowFs, u64, u64) {
    let store = Arc::new(SlowParts::default());
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            max_memory: 64 << 20,
            disk_cache: None,
            ..super::posix::with_disk()
        },
    );
    let x = slow_create(&fs, "x").await;
    let first = pattern(5 * MIB, 1);
    for (i, chunk) in first.chunks(MIB).enumerate() {
        fs.write(x, (i * MIB) as u64, chunk).await.unwrap();
    }
    for i in 0..3 {
        let fh = slow_create(&fs, &format!("budget{i}")).await;
        fs.write(fh, 0, &pattern(MIB, i)).await.unwrap();
        fs.write(fh, MIB as u64, b"x").await.unwrap();
    }
    // x's first part is uploaded (fast): 24 - 15 = 9 MiB of budget left.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fs.read_ctx.budget.available_permits(), 9 * MIB);
    store
        .delay_ms
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    for i in 0..16 {
        let fh = slow_create(&fs, &format!("over{i:02}")).await;
        fs.write(fh, 0, &pattern(MIB, i)).await.unwrap();
    }
    assert_eq!(fs.write_overdraft.available_permits(), 0);
    (store, fs, x, (5 * MIB) as u64)
}

// S2. ftruncate growing a streamed file streams zeros part by part (`stream_zeros`). The
//     second part it needs finds no budget, overdraft nor disk: `append` now refuses it
//     (NoSpace) -- but `stream_zeros` has already appended (and sent) the zeros of the part
//     before. The truncate answers ENOSPC, yet the file has grown: the close then stores
//     a file 5 MiB longer than any call that succeeded made it. "Refused, changes nothing"
//     does not hold.
#[tokio::test]
async fn staged_a_refused_ftruncate_fails_the_file_rather_than_grow_it() {
    let (store, fs, x, size) = streaming_file_with_one_more_part_of_budget().await;
    let ino = fs.lookup(ROOT_INO, OsStr::new("x")).await.unwrap().ino;
    let grown = fs
        .setattr(
            ino,
            SetAttr {
                size: Some(size + (10 * MIB) as u64),
                ..SetAttr::default()
            },
        )
        .await;
    assert_eq!(grown.map(|_| ()), Err(FsError::NoSpace), "refused");
    store.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    // Zeros were streamed (and uploaded) before the refusal: that cannot be undone, so the
    // file fails and its close says so, rather than store a size no call succeeded in giving.
    assert!(fs.commit(x).await.is_err(), "the close reports the failure");
    fs.release(x).await;
    assert_eq!(
        store.inner.get("x"),
        None,
        "nothing of a wrong size is stored"
    );
}

// S2b. The same with a write past the end of a streamed file (a hole, zeros streamed first):
//      the write is refused with ENOSPC, but the file has grown by the zeros streamed
//      before the refusal.
#[tokio::test]
async fn staged_a_refused_write_past_the_end_fails_the_file_rather_than_grow_it() {
    let (store, fs, x, size) = streaming_file_with_one_more_part_of_budget().await;
    let at = size + (10 * MIB) as u64;
    let refused = fs.write(x, at, b"tail").await;
    assert_eq!(refused, Err(FsError::NoSpace), "refused");
    store.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    assert!(fs.commit(x).await.is_err(), "the close reports the failure");
    fs.release(x).await;
    assert_eq!(
        store.inner.get("x"),
        None,
        "nothing of a wrong size is stored"
    );
}

/// S3 with a disk cache one MiB larger (room for the staged part and the patch at once): the
/// unlinked file reads back. Passes: the loss in S3 comes from the staged part's room being
/// held while its bytes are copied into the patch.
#[tokio::test]
async fn staged_control_with_room_for_both_the_unlinked_file_reads_back() {
    let (_store, fs) = fs_with(&[], config_with_disk(7 << 20));
    let fh = create(&fs, "tmp").await;
    let data = pattern(2 * MIB, 3);
    fs.write(fh, 0, &data[..MIB]).await.unwrap();
    let _budget = hold_budget_parts(&fs, 4).await;
    let _over = hold_overdraft(&fs, 15).await;
    fs.write(fh, MIB as u64, &data[MIB..]).await.unwrap();
    let disk = fs.read_ctx.disk.clone().unwrap();
    assert_eq!(disk.reserved_bytes(), 5 << 20, "the part is staged on disk");
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    let back = fs.read(fh, 0, 4096).await.unwrap();
    assert_eq!(&back[..16], &data[..16]);
}

// Check (expected to pass): a write spanning a part boundary whose next part is refused
// returns the count it took; the rest is refused with ENOSPC and changes nothing; sent again
// once memory is back it goes through, and the file is stored exactly.
#[tokio::test]
async fn staged_check_a_short_write_at_a_refused_part_boundary_loses_nothing() {
    let (store, fs, x, size) = streaming_file_with_one_more_part_of_budget().await;
    let mut expected = pattern(5 * MIB, 1);
    let more = pattern(6 * MIB, 2);
    let mut at = size as usize;
    let mut pieces = vec![MIB / 2];
    pieces.extend([MIB; 5]);
    let mut short = None;
    for len in pieces {
        let off = at - size as usize;
        let n = fs.write(x, at as u64, &more[off..off + len]).await.unwrap() as usize;
        at += n;
        if n < len {
            short = Some((n, len));
            break;
        }
    }
    assert_eq!(
        short,
        Some((MIB / 2, MIB)),
        "short at the boundary of part 2"
    );
    let off = at - size as usize;
    assert_eq!(
        fs.write(x, at as u64, &more[off..off + MIB / 2]).await,
        Err(FsError::NoSpace)
    );
    store.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await; // part 2 uploaded: budget back
    assert_eq!(
        fs.write(x, at as u64, &more[off..off + MIB / 2]).await,
        Ok((MIB / 2) as u32)
    );
    at += MIB / 2;
    fs.commit(x).await.unwrap();
    fs.release(x).await;
    expected.extend_from_slice(&more[..at - size as usize]);
    assert!(store.inner.get("x").unwrap() == expected, "stored exactly");
}

// Check (expected to pass): a part staged on disk, changed in place (overwrite of bytes
// still in it), cut by ftruncate within it and written on, is stored exactly, and every
// reservation is given back.
#[tokio::test]
async fn staged_check_overwrite_and_truncate_within_a_staged_part() {
    let (store, fs) = fs_with(&[], config_with_disk(64 << 20));
    let fh = create(&fs, "s").await;
    let mut data = pattern(5 * MIB, 5);
    fs.write(fh, 0, &data).await.unwrap(); // part 1 sent from memory: streaming now
    let budget = hold_budget_parts(&fs, 4).await;
    let over = hold_overdraft(&fs, 16).await;
    let more = pattern(3 * MIB, 6);
    for (i, chunk) in more.chunks(MIB).enumerate() {
        fs.write(fh, (5 * MIB + i * MIB) as u64, chunk)
            .await
            .unwrap();
    }
    data.extend_from_slice(&more);
    let disk = fs.read_ctx.disk.clone().unwrap();
    assert_eq!(disk.reserved_bytes(), 5 << 20, "part 2 is staged");
    // Overwrite inside the staged part.
    fs.write(fh, (6 * MIB + 10) as u64, b"HELLO").await.unwrap();
    data[6 * MIB + 10..6 * MIB + 15].copy_from_slice(b"HELLO");
    // Cut within it, then write on.
    let ino = fs.lookup(ROOT_INO, OsStr::new("s")).await.unwrap().ino;
    let cut = 7 * MIB + 3;
    fs.setattr(
        ino,
        SetAttr {
            size: Some(cut as u64),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    data.truncate(cut);
    let tail = pattern(4 * MIB, 8);
    for (i, chunk) in tail.chunks(MIB).enumerate() {
        fs.write(fh, (cut + i * MIB) as u64, chunk).await.unwrap();
    }
    data.extend_from_slice(&tail);
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.inner().get("s").unwrap() == data, "stored exactly");
    assert!(store.staged_parts() > 0);
    for fh in budget.into_iter().chain(over) {
        fs.commit(fh).await.unwrap();
        fs.release(fh).await;
    }
    assert_eq!(disk.reserved_bytes(), 0);
    assert_eq!(fs.write_overdraft.available_permits(), 16 << 20);
    assert_eq!(fs.read_ctx.budget.available_permits(), 24 << 20);
}

// Check (expected to pass): the first part of a new file staged on disk (no upload yet) and
// closed goes up as a one-part multipart upload and is stored exactly; an O_EXCL create
// keeps its condition.
#[tokio::test]
async fn staged_check_a_single_staged_part_is_stored_exactly() {
    let (store, fs) = fs_with(&[], config_with_disk(64 << 20));
    let _budget = hold_budget_parts(&fs, 4).await;
    let _over = hold_overdraft(&fs, 15).await;
    let fh = create(&fs, "one").await;
    let data = pattern(2 * MIB + 17, 9);
    fs.write(fh, 0, &data[..MIB]).await.unwrap();
    fs.write(fh, MIB as u64, &data[MIB..2 * MIB]).await.unwrap();
    fs.write(fh, (2 * MIB) as u64, &data[2 * MIB..])
        .await
        .unwrap();
    let disk = fs.read_ctx.disk.clone().unwrap();
    assert!(disk.reserved_bytes() >= 5 << 20, "staged");
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.inner().get("one").unwrap() == data);
}

// Check (expected to pass): after the refusals above (unspill refused, orphan discarded),
// once every file is closed no disk room, overdraft or budget stays taken.
#[tokio::test]
async fn staged_check_nothing_leaks_after_the_refusals() {
    let (_store, fs) = fs_with(&[], config_with_disk(5 << 20));
    let tmp = create(&fs, "tmp").await;
    fs.write(tmp, 0, &pattern(MIB, 1)).await.unwrap();
    let budget = hold_budget_parts(&fs, 4).await;
    let over = hold_overdraft(&fs, 15).await;
    fs.write(tmp, MIB as u64, &pattern(MIB, 2)).await.unwrap(); // staged
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap(); // discarded (S3)
    let extra = hold_overdraft_named(&fs, "more", 1).await; // overdraft used up again
    let victim = create(&fs, "victim").await;
    fs.write(victim, 0, &pattern(MIB, 7)).await.unwrap(); // spilled
                                                          // S1 fixed: no part to be had, the start stays on disk and the write goes there.
    let written = fs.write(victim, MIB as u64, &pattern(4096, 1)).await;
    assert_eq!(written, Ok(4096));
    // S3 fixed: the staged part became the unlinked file's content.
    assert_eq!(fs.read(tmp, 0, 16).await.map(|b| b.len()), Ok(16));
    for fh in [tmp, victim]
        .into_iter()
        .chain(budget)
        .chain(over)
        .chain(extra)
    {
        let _ = fs.commit(fh).await;
        fs.release(fh).await;
    }
    let disk = fs.read_ctx.disk.clone().unwrap();
    assert_eq!(disk.reserved_bytes(), 0, "disk room");
    assert_eq!(
        fs.write_overdraft.available_permits(),
        16 << 20,
        "overdraft"
    );
    assert_eq!(fs.read_ctx.budget.available_permits(), 24 << 20, "budget");
}

async fn hold_overdraft_named(fs: &TestFs, prefix: &str, n: usize) -> Vec<u64> {
    let mut open = Vec::new();
    for i in 0..n {
        let fh = create(fs, &format!("{prefix}{i:02}")).await;
        fs.write(fh, 0, &pattern(MIB, i as u8)).await.unwrap();
        open.push(fh);
    }
    open
}

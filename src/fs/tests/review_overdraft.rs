//! Review of the write overdraft (shared bound on small starts and over-budget parts, spill
//! of a file's start to local disk).

use super::*;

/// Fills the overdraft with the small starts of `n` files of 1 MiB each, left open.
async fn fill_overdraft(fs: &TestFs, n: usize) -> Vec<u64> {
    let mut open = Vec::new();
    for i in 0..n {
        let (_, fh) = fs
            .create(ROOT_INO, OsStr::new(&format!("filler{i:02}")), 0o644, ROOT)
            .await
            .unwrap();
        fs.write(fh, 0, &pattern(1 << 20, i as u8)).await.unwrap();
        open.push(fh);
    }
    open
}

// R1. One program writing several files in turn (tee to several files, split -n r/N, a tool
//     writing partition files), FUSE-sized 128 KiB writes, --max-memory 64 (budget 24 MiB,
//     8 MiB parts, 16 MiB overdraft). Three files take the budget for the part they fill,
//     the fourth goes over budget from the overdraft, the fifth finds budget and overdraft
//     used up and now waits for the budget "as long as it takes" -- but the budget is held by
//     the parts of files 1-3, which only this same program fills, after this write returns.
//     Before the change the wait ended after 5 s (a part over budget); now the write never
//     returns, holding the writer's lock (flush, fsync, getattr's size, unmount's commit_all
//     of this file wait on it too).
#[tokio::test]
async fn overdraft_a_program_writing_files_in_turn_never_waits_forever_for_budget() {
    // With local disk: the fifth file's part is staged there (without, it gets ENOSPC: see
    // `bounds::without_local_disk_a_write_past_every_bound_gets_enospc_and_loses_nothing`).
    let config = FsConfig {
        max_memory: 64 << 20,
        write_part_size: 8 << 20,
        ..super::posix::with_disk()
    };
    let (store, fs) = fs_with(&[], config);
    let mut files = Vec::new();
    for i in 0..5u8 {
        let (_, fh) = fs
            .create(ROOT_INO, OsStr::new(&format!("out{i}")), 0o644, ROOT)
            .await
            .unwrap();
        files.push((fh, pattern(2 << 20, i)));
    }
    let program = async {
        for round in 0..16u64 {
            let at = round * (128 << 10);
            for (fh, data) in &files {
                fs.write(*fh, at, &data[at as usize..at as usize + (128 << 10)])
                    .await
                    .unwrap();
            }
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(30), program).await;
    assert!(
        done.is_ok(),
        "a write waited forever for budget held by parts only this program fills (deadlock)"
    );
    for (i, (fh, data)) in files.into_iter().enumerate() {
        fs.commit(fh).await.unwrap();
        fs.release(fh).await;
        assert_eq!(store.inner().get(&format!("out{i}")).unwrap(), data);
    }
}

// R2. A file stored once (fsync), truncated to 0 with ftruncate and written again, its start
//     spilled to disk because the overdraft is used up (a patch with no base), renamed away
//     and back (mv a b; mv b a). The first rename deleted the old object of "a" (the streamed
//     case: "the old name's object goes now"). `finish_patch` now falls back to
//     `stream_expect`, which returns the writer's old base {a, etag of v1}: the commit expects
//     a version that this mount itself deleted, fails with ESTALE, and the acknowledged
//     rewrite is lost (the name is gone from S3 altogether). Before the change this patch
//     was committed unconditionally.
#[tokio::test]
async fn overdraft_a_spilled_rewrite_renamed_away_and_back_is_stored() {
    let config = FsConfig {
        max_memory: 64 << 20,
        ..super::posix::with_disk()
    };
    let (store, fs) = fs_with(&[], config);
    let _fillers = fill_overdraft(&fs, 16).await;
    assert_eq!(fs.write_overdraft.available_permits(), 0);
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"version one").await.unwrap();
    fs.commit(fh).await.unwrap(); // fsync
    assert_eq!(&store.inner().get("a").unwrap()[..], b"version one");
    let change = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    fs.setattr(entry.ino, change).await.unwrap(); // ftruncate(fd, 0)
    fs.write(fh, 0, b"version two").await.unwrap(); // spills: overdraft used up
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), false)
        .await
        .unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(committed, Ok(()), "the rewrite was not stored");
    assert_eq!(store.inner().get("a").as_deref(), Some(&b"version two"[..]));
}

// R2b. The same without the spill (the bytes stream; overdraft not exhausted): to tell
//      whether the stale base is the change's or was there before in the streamed path.
#[tokio::test]
async fn overdraft_a_streamed_rewrite_renamed_away_and_back_is_stored() {
    let config = FsConfig {
        max_memory: 64 << 20,
        ..super::posix::with_disk()
    };
    let (store, fs) = fs_with(&[], config);
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"version one").await.unwrap();
    fs.commit(fh).await.unwrap();
    let change = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    fs.setattr(entry.ino, change).await.unwrap();
    fs.write(fh, 0, b"version two").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), false)
        .await
        .unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(committed, Ok(()), "the rewrite was not stored");
    assert_eq!(store.inner().get("a").as_deref(), Some(&b"version two"[..]));
}

// R2c. The out-of-order variant (a write behind the end sends the file to a patch with no
//      base, no overdraft involved): the second commit's `or_else(stream_expect)` alone.
#[tokio::test]
async fn overdraft_an_out_of_order_rewrite_renamed_away_and_back_is_stored() {
    let (store, fs) = fs_with(&[], super::posix::with_disk());
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"version one").await.unwrap();
    fs.commit(fh).await.unwrap();
    let change = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    fs.setattr(entry.ino, change).await.unwrap();
    fs.write(fh, 0, b"version two").await.unwrap();
    fs.write(fh, 0, b"V").await.unwrap(); // behind the end: a patch with no base
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), false)
        .await
        .unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(committed, Ok(()), "the rewrite was not stored");
    assert_eq!(store.inner().get("a").as_deref(), Some(&b"Version two"[..]));
}

// R3. Once a file's start spilled (overdraft used up), every later byte of it goes to local
//     disk too, never back to streaming: a plain sequential write of a new file larger than
//     the disk cache (--max-cache-size) now fails with ENOSPC partway, where it streamed
//     before (and does whenever the overdraft has room).
#[tokio::test]
async fn overdraft_a_large_new_file_whose_start_spilled_still_streams() {
    let mut config = FsConfig {
        max_memory: 64 << 20,
        ..super::posix::with_disk()
    };
    config.disk_cache.as_mut().unwrap().max_bytes = 8 << 20;
    let (store, fs) = fs_with(&[], config);
    let _fillers = fill_overdraft(&fs, 16).await;
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("big"), 0o644, ROOT)
        .await
        .unwrap();
    let data = pattern(12 << 20, 9);
    let mut at = 0u64;
    for chunk in data.chunks(128 << 10) {
        let written = fs.write(fh, at, chunk).await;
        assert_eq!(written, Ok(chunk.len() as u32), "write at {at} refused");
        at += chunk.len() as u64;
    }
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().get("big").unwrap(), data);
}

// R4 (sweep, expected to pass): every path that empties or replaces a small start gives its
//     overdraft back: ftruncate to 0, unlink while open (orphan), renamed over (discard), a
//     failed commit, a start that grows into a whole part, a commit, a read through O_RDWR.
#[tokio::test]
async fn overdraft_every_path_that_empties_a_small_start_returns_its_permits() {
    let config = FsConfig {
        max_memory: 64 << 20,
        ..super::posix::with_disk()
    };
    let full = config.write_overdraft();
    let (store, fs) = fs_with(&[], config);
    let avail = |fs: &TestFs| fs.write_overdraft.available_permits();
    let mk = |name: &'static str| {
        let fs = &fs;
        async move {
            let (e, fh) = fs
                .create(ROOT_INO, OsStr::new(name), 0o644, ROOT)
                .await
                .unwrap();
            fs.write(fh, 0, &pattern(512 << 10, 1)).await.unwrap();
            assert!(avail(fs) < full, "{name}: the start holds some");
            (e.ino, fh)
        }
    };
    // ftruncate to 0
    let (ino, t) = mk("t").await;
    fs.setattr(
        ino,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(avail(&fs), full, "after ftruncate 0");
    // unlink while open
    let (_, u) = mk("u").await;
    fs.unlink(ROOT_INO, OsStr::new("u")).await.unwrap();
    assert_eq!(avail(&fs), full, "after unlink");
    // renamed over
    write_file(&fs, "src", b"x").await.unwrap();
    let (_, d) = mk("d").await;
    fs.rename(
        ROOT_INO,
        OsStr::new("src"),
        ROOT_INO,
        OsStr::new("d"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(avail(&fs), full, "after rename over");
    // failed commit
    let (_, f) = mk("f").await;
    store.fail(
        Op::Put,
        crate::store::StoreError::Transient("503".into()),
        1,
    );
    assert!(fs.commit(f).await.is_err());
    assert_eq!(avail(&fs), full, "after failed commit");
    // growing into a whole part
    let (_, c) = mk("c").await;
    fs.write(c, 512 << 10, &pattern(512 << 10, 2))
        .await
        .unwrap();
    fs.write(c, 1 << 20, &pattern(128 << 10, 3)).await.unwrap();
    assert_eq!(avail(&fs), full, "after growing into a part");
    // commit
    let (_, k) = mk("k").await;
    fs.commit(k).await.unwrap();
    assert_eq!(avail(&fs), full, "after commit");
    // read back through the writer (moves the start to a patch)
    let (_, r) = mk("r").await;
    fs.set_random_access(r).await;
    let _ = fs.read(r, 0, 10).await.unwrap();
    assert_eq!(avail(&fs), full, "after read through the writer");
    for fh in [t, u, d, f, c, k, r] {
        let _ = fs.commit(fh).await;
        fs.release(fh).await;
    }
    assert_eq!(avail(&fs), full, "all closed");
}

//! Review of copy_file_range (server-side clones) against the existing write path: each test
//! asserts the promised behaviour (a close that returns 0 stored exactly what was written and
//! copied; a file with no name overwrites nothing). Sections 1 and 3 fail on 1556b15; the
//! tests of section 2 failed on 731e108 and pass since 1556b15 (kept as regressions).

use super::posix::{close, open_path, with_disk};
use super::*;

async fn create(fs: &TestFs, name: &str) -> u64 {
    fs.create(ROOT_INO, OsStr::new(name), 0o600, ROOT)
        .await
        .unwrap()
        .1
}

fn truncate_to(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..SetAttr::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A copy's destination renamed before its close. `FileWriter::patch_base_size` reports the
//    clone's base (the copy SOURCE, another key) as if it were the file's own old object, so
//    `rename_file` copies whatever the destination's OLD name holds and `rebase`s the clone
//    onto that copy: the commit then stores the destination's old bytes (or the rename fails
//    with ENOENT when the destination is new).

#[tokio::test]
async fn review_copy_into_an_overwritten_file_then_renamed_stores_the_old_bytes() {
    let copied = pattern(1 << 20, 1);
    let old = pattern(1 << 20, 9);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", copied.clone());
    store.inner().insert("dst", old.clone());
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    // cp onto an existing file: open with O_TRUNC, then copy_file_range.
    let dst = open_path(&fs, "dst", libc::O_WRONLY | libc::O_TRUNC).await;
    let n = fs.copy_range(src, 0, dst, 0, 1 << 30).await.unwrap();
    assert_eq!(n, copied.len() as u64);
    fs.rename(
        ROOT_INO,
        OsStr::new("dst"),
        ROOT_INO,
        OsStr::new("moved"),
        false,
    )
    .await
    .unwrap();
    let closed = close(&fs, dst).await;
    close(&fs, src).await.unwrap();
    if closed.is_ok() {
        let stored = store.inner().get("moved").map(|b| b.to_vec());
        assert!(
            stored.as_deref() == Some(&copied[..]),
            "close returned 0 but `moved` holds {} (the copy's source is {})",
            match &stored {
                Some(s) if s[..] == old[..] => "the destination's OLD content".to_string(),
                Some(s) => format!("{} other bytes", s.len()),
                None => "nothing".to_string(),
            },
            "src"
        );
    }
    closed.unwrap();
}

#[tokio::test]
async fn review_copy_into_a_new_file_then_renamed_before_close_lands_under_the_new_name() {
    let copied = pattern(1 << 20, 2);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", copied.clone());
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let dst = create(&fs, "tmp").await;
    fs.copy_range(src, 0, dst, 0, 1 << 30).await.unwrap();
    // Write to a temporary name, then rename it into place before closing.
    fs.rename(
        ROOT_INO,
        OsStr::new("tmp"),
        ROOT_INO,
        OsStr::new("final"),
        false,
    )
    .await
    .expect("renaming a file a copy was written into");
    close(&fs, dst).await.unwrap();
    close(&fs, src).await.unwrap();
    assert_eq!(store.inner().get("final").map(|b| b.to_vec()), Some(copied));
    assert!(store.inner().get("tmp").is_none());
}

// ---------------------------------------------------------------------------------------------
// 2. A file that lost its name comes back through copy_file_range. `clone_range` accepts a
//    writer in state Discarded when it is empty and has no base (write.rs, the `_ if
//    self.size == 0 && self.base.is_none()` arm) and then sets `state = Open` (only Orphaned
//    is kept), so the next close commits a CopyObject onto the writer's key: the name that
//    now belongs to another file (rename over it), or a name that was unlinked.

#[tokio::test]
async fn review_copy_into_a_file_renamed_over_overwrites_the_file_now_under_its_name() {
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", pattern(64 << 10, 3));
    store
        .inner()
        .insert("new", "the new version, renamed into place");
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    // cp has created its destination...
    let dst = create(&fs, "target").await;
    // ...when another program renames a new version over that name.
    fs.rename(
        ROOT_INO,
        OsStr::new("new"),
        ROOT_INO,
        OsStr::new("target"),
        false,
    )
    .await
    .unwrap();
    // The copy goes to the file that has no name any more: nowhere.
    let _ = fs.copy_range(src, 0, dst, 0, 1 << 30).await;
    let _ = close(&fs, dst).await;
    close(&fs, src).await.unwrap();
    assert_eq!(
        store.inner().get("target").as_deref(),
        Some(&b"the new version, renamed into place"[..]),
        "the renamed file under `target` was overwritten by a copy into a discarded writer"
    );
}

#[tokio::test]
async fn review_copy_into_an_unlinked_streamed_file_brings_its_name_back() {
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", pattern(64 << 10, 4));
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    // Streamed past its first part: unlinking it cannot keep its bytes, so it is discarded.
    write_at(&fs, fh, 0, &pattern(6 << 20, 5)).await;
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    fs.setattr(entry.ino, truncate_to(0)).await.unwrap(); // ftruncate(fd, 0)
    let _ = fs.copy_range(src, 0, fh, 0, 1 << 30).await;
    let _ = close(&fs, fh).await;
    close(&fs, src).await.unwrap();
    assert!(
        store.inner().get("f").is_none(),
        "an unlinked file reappeared in S3 after a copy into its open descriptor"
    );
    assert_eq!(lookup_path(&fs, "f").await.unwrap_err(), FsError::NotFound);
}

// ---------------------------------------------------------------------------------------------
// 3. A source open for writing whose content differs from its base while "not dirty".
//    `Fs::copy_range` takes a write handle's `base()` whenever `!is_dirty()`, but an Orphaned
//    writer (unlinked while open) is never dirty and keeps its later changes on local disk:
//    the copy silently clones the stale base object instead of what the handle reads.

#[tokio::test]
async fn review_copy_from_a_file_changed_after_its_unlink_copies_its_current_bytes() {
    let original = pattern(64 << 10, 6);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("s", original.clone());
    let s = open_path(&fs, "s", libc::O_RDWR).await;
    fs.unlink(ROOT_INO, OsStr::new("s")).await.unwrap();
    fs.write(s, 0, b"CHANGED AFTER THE UNLINK").await.unwrap();
    let mut current = original.clone();
    current[..24].copy_from_slice(b"CHANGED AFTER THE UNLINK");
    // What the handle reads is the file's content.
    assert_eq!(&fs.read(s, 0, 24).await.unwrap()[..], &current[..24]);
    let dst = create(&fs, "copy").await;
    match fs.copy_range(s, 0, dst, 0, 1 << 30).await {
        Err(e) => assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}"), // the kernel copies then
        Ok(n) => {
            assert_eq!(n, current.len() as u64);
            close(&fs, dst).await.unwrap();
            let stored = store.inner().get("copy").unwrap();
            assert!(
                stored[..] == current[..],
                "copy_file_range returned {n} and the close 0, but `copy` holds {}",
                if stored[..] == original[..] {
                    "the source's bytes from before its change (the unlinked base object)"
                } else {
                    "other bytes"
                }
            );
        }
    }
    close(&fs, s).await.unwrap();
}

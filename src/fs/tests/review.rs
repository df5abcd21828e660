//! Regression tests from the fresh-context review of the POSIX work: each one showed a way to
//! lose data, blend versions, destroy or leak an object, and asserts what the README promises
//! instead (each failed on the code as reviewed; all pass since the fixes).

use super::gate::Gate;
use super::posix::{close, open_path, with_disk};
use super::*;
use crate::fs::patch::{Base, PartPlan, PatchFile};
use crate::store::StoreError;

fn touch(mtime: SystemTime) -> SetAttr {
    SetAttr {
        mtime: Some(mtime),
        atime: Some(mtime),
        ..SetAttr::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Blend: a rename of a file changed in place copies whatever the old name holds NOW (no
//    x-amz-copy-source-if-match on the base's ETag) and rebases the change onto that copy.

#[tokio::test]
async fn review_rename_of_a_file_changed_in_place_blends_a_base_changed_on_the_server() {
    let (store, fs) = fs_with(&[("a", "hello world")], with_disk());
    let fh = open_path(&fs, "a", libc::O_WRONLY).await;
    fs.write(fh, 0, b"J").await.unwrap(); // in place: patch over base "hello world"
                                          // Another client replaces the object meanwhile.
    store.inner().insert("a", "HELLO WORLD");
    // The rename copies only the version the change starts from: refused, nothing moves.
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await;
    assert_eq!(renamed.unwrap_err().errno(), libc::ESTALE);
    let closed = close(&fs, fh).await;
    assert_eq!(closed.unwrap_err().errno(), libc::ESTALE, "never a blend");
    assert_eq!(store.inner().get("a").as_deref(), Some(&b"HELLO WORLD"[..]));
    assert!(store.inner().get("b").is_none());
}

// Same root cause, large file: the multipart commit copies the rebased (other) version.
#[tokio::test]
async fn review_rename_of_a_large_file_changed_in_place_blends_a_base_changed_on_the_server() {
    let mine = crate::testdata::random_bytes(12 << 20, 1);
    let theirs = crate::testdata::random_bytes(12 << 20, 2);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("a", mine.clone());
    let fh = open_path(&fs, "a", libc::O_WRONLY).await;
    fs.write(fh, 12 << 20, b"APPENDED").await.unwrap();
    store.inner().insert("a", theirs.clone());
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await;
    assert_eq!(renamed.unwrap_err().errno(), libc::ESTALE);
    let closed = close(&fs, fh).await;
    assert_eq!(closed.unwrap_err().errno(), libc::ESTALE, "never a blend");
    assert_eq!(store.inner().get("a").map(|b| b.to_vec()), Some(theirs));
    assert!(store.inner().get("b").is_none());
}

// ---------------------------------------------------------------------------------------------
// 2. A metadata change (touch/chmod/setxattr) of a file open for writing with nothing unsent
//    is a server-side self-copy that gives the object a new ETag, but the writer's base stays
//    pinned to the old one: the next write + close fails with ESTALE and the write is lost.

#[tokio::test]
async fn review_touch_of_a_file_open_for_appending_fails_the_next_close() {
    let (store, fs) = fs_with(&[("log", "line1\n")], with_disk());
    let fh = open_path(&fs, "log", libc::O_WRONLY | libc::O_APPEND).await;
    let log = lookup_path(&fs, "log").await.unwrap();
    fs.setattr(log.ino, touch(SystemTime::now())).await.unwrap();
    fs.write(fh, 6, b"line2\n").await.unwrap();
    let closed = close(&fs, fh).await;
    assert_eq!(closed, Ok(()), "append after a touch");
    assert_eq!(&store.inner().get("log").unwrap()[..], b"line1\nline2\n");
}

#[tokio::test]
async fn review_setxattr_on_a_file_open_for_writing_fails_the_next_close() {
    let (store, fs) = fs_with(&[("f", "0123456789")], with_disk());
    let fh = open_path(&fs, "f", libc::O_RDWR).await;
    let f = lookup_path(&fs, "f").await.unwrap();
    fs.setxattr(f.ino, OsStr::new("user.tag"), b"v", 0)
        .await
        .unwrap();
    fs.write(fh, 2, b"ab").await.unwrap();
    let closed = close(&fs, fh).await;
    assert_eq!(closed, Ok(()), "pwrite after fsetxattr");
    assert_eq!(&store.inner().get("f").unwrap()[..], b"01ab456789");
}

#[tokio::test]
async fn review_fchmod_between_fsync_and_more_writes_fails_the_close() {
    let (store, fs) = fs_with(&[], with_disk());
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("n"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"first ").await.unwrap();
    fs.commit(fh).await.unwrap(); // fsync
    fs.setattr(
        entry.ino,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap(); // fchmod
    fs.write(fh, 6, b"second").await.unwrap();
    let closed = close(&fs, fh).await;
    assert_eq!(closed, Ok(()), "write after fsync + fchmod");
    assert_eq!(&store.inner().get("n").unwrap()[..], b"first second");
}

// ---------------------------------------------------------------------------------------------
// 3. truncate(path) of a file nobody has open rewrites the object with the POSIX headers only:
//    its user xattrs are dropped (README: "metadata kept"; "A change of content keeps them").

#[tokio::test]
async fn review_truncate_path_drops_user_xattrs() {
    for size in [3u64, 0] {
        let (store, fs) = fs_with(&[("f", "content")], with_disk());
        let f = lookup_path(&fs, "f").await.unwrap();
        fs.setxattr(f.ino, OsStr::new("user.origin"), b"https://x", 0)
            .await
            .unwrap();
        fs.setattr(
            f.ino,
            SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(store.inner().get("f").unwrap().len() as u64, size);
        let info = store.inner().info("f").unwrap();
        assert_eq!(
            info.user_metadata.get("origin").map(String::as_str),
            Some("https://x"),
            "truncate(path, {size}) lost the xattr: {:?}",
            info.user_metadata
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. truncate(path) trusts the size cached in the inode, even when it is known stale: after a
//    truncating open whose commit failed (old object intact), truncate(path, 5) writes zeros
//    instead of the object's first 5 bytes.

#[tokio::test]
async fn review_truncate_path_after_a_failed_overwrite_zeroes_stored_bytes() {
    let (store, fs) = fs_with(&[("f", "hello world")], with_disk());
    // The kernel's dentry for "f" (valid for the entry TTL): truncate(2) reaches setattr
    // without a new lookup.
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    store.fail(Op::Put, StoreError::Transient("503".into()), 1);
    assert!(fs.flush(fh, false).await.is_err(), "the overwrite failed");
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("f").unwrap()[..],
        b"hello world",
        "atomic replace: the old object is intact"
    );
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(5),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&store.inner().get("f").unwrap()[..], b"hello");
}

// ---------------------------------------------------------------------------------------------
// 5. The deferred delete of an unlinked open file is unconditional: an object another client
//    put under that name meanwhile is deleted at the last close (and hidden until then).

#[tokio::test]
async fn review_last_close_of_an_unlinked_file_deletes_another_clients_new_object() {
    let (store, fs) = fs_with(&[("f", "old")], with_disk());
    let reader = open_path(&fs, "f", libc::O_RDONLY).await;
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    // Another client stores a new file under the same name (an upload, a sync job...).
    store.inner().insert("f", "theirs");
    close(&fs, reader).await.unwrap();
    assert_eq!(
        store.inner().get("f").as_deref(),
        Some(&b"theirs"[..]),
        "the other client's object was deleted"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Race: the last release of an unlinked file takes its orphan entry and then deletes the
//    key; a create (or rename) under the same name in that window finds no orphan to settle,
//    commits (close returns 0), and the release's DELETE then removes the new file.

#[tokio::test]
async fn review_orphan_delete_racing_a_create_deletes_the_new_committed_file() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("delete", "f");
    let last_close = fs.release(reader);
    let new_file = async {
        // The old file's last release is deleting its object now.
        store.entered.notified().await;
        let created = fs.create(ROOT_INO, OsStr::new("f"), 0o644, ROOT).await;
        let closed = match created {
            Ok((_, fh)) => {
                fs.write(fh, 0, b"new").await.unwrap();
                let closed = fs.commit(fh).await; // close() returned 0: S3 holds "new"
                fs.release(fh).await;
                closed
            }
            Err(e) => Err(e), // refused (EBUSY, say): nothing acknowledged, nothing lost
        };
        store.go.notify_one();
        closed
    };
    let ((), closed) = tokio::join!(last_close, new_file);
    if closed.is_err() {
        return;
    }
    assert_eq!(
        store.inner.get("f").as_deref(),
        Some(&b"new"[..]),
        "an acknowledged new file was deleted by the old file's last close"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A directory rename copies every object below it, the object of an unlinked open file
//    included: the unlinked file comes back under the new directory, and its last close
//    deletes only the old key, so it stays for good.

#[tokio::test]
async fn review_directory_rename_brings_back_an_unlinked_open_file_for_good() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let (store, fs) = fs_with(&[("d/f", "unlinked"), ("d/g", "kept")], config);
    let reader = open_path(&fs, "d/f", libc::O_RDONLY).await;
    let d = lookup_path(&fs, "d").await.unwrap();
    fs.unlink(d.ino, OsStr::new("f")).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await
        .unwrap();
    close(&fs, reader).await.unwrap();
    assert_eq!(
        lookup_path(&fs, "e/f").await.map(|e| e.attrs.size),
        Err(FsError::NotFound),
        "the unlinked file is back"
    );
    assert!(
        store.inner().get("e/f").is_none(),
        "left in S3 after its last close"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. rmdir of a directory that lists empty fails while a file unlinked in it is still open
//    (its object waits in S3 for the last close): `rm -rf` fails.

#[tokio::test]
async fn review_rmdir_fails_while_an_unlinked_file_in_it_is_open() {
    let (_, fs) = fs_with(&[("d/f", "x")], with_disk());
    let reader = open_path(&fs, "d/f", libc::O_RDONLY).await;
    let d = lookup_path(&fs, "d").await.unwrap();
    fs.unlink(d.ino, OsStr::new("f")).await.unwrap();
    assert_eq!(names_in(&fs, "d", true).await.len(), 2, "lists empty");
    let removed = fs.rmdir(ROOT_INO, OsStr::new("d")).await;
    close(&fs, reader).await.unwrap();
    assert_eq!(removed, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// 9. fchmod / fsetxattr through the descriptor of an unlinked file self-copies whatever object
//    now has its old key: a new file made under the name gets the old file's mode and xattrs.

#[tokio::test]
async fn review_fchmod_and_fsetxattr_of_an_unlinked_file_change_the_new_file() {
    let (store, fs) = fs_with(&[("f", "old")], with_disk());
    let old = lookup_path(&fs, "f").await.unwrap();
    let reader = fs.open(old.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    write_file(&fs, "f", b"new").await.unwrap();
    let before = store.inner().info("f").unwrap();
    let _ = fs
        .setattr(
            old.ino,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .await;
    let _ = fs
        .setxattr(old.ino, OsStr::new("user.from_old"), b"x", 0)
        .await;
    close(&fs, reader).await.unwrap();
    let after = store.inner().info("f").unwrap();
    assert_eq!(
        after.user_metadata, before.user_metadata,
        "the new file's metadata was changed through the unlinked file's descriptor"
    );
    assert_eq!(after.etag, before.etag);
}

// ---------------------------------------------------------------------------------------------
// 10. plan() can return more than S3's 10,000 parts: scattered small changes in a large object
//     each cost an upload part (to reach 5 MiB) plus a copy part, whatever the target size, and
//     finish_patch goes on with the over-long plan (part numbers past 10,000: the close fails).

#[test]
fn review_a_plan_never_has_more_than_ten_thousand_parts() {
    const MIB: u64 = 1 << 20;
    let changes = 6_000u64;
    let stride = 11 * MIB;
    let disk = disk_cache::DiskCache::new(disk_cache::DiskCacheConfig {
        dir: std::env::temp_dir(),
        max_bytes: 1 << 30,
        chunk_size: MIB,
        concurrency: 1,
    });
    let base = Base {
        key: "big".into(),
        etag: Some("\"e\"".into()),
        size: changes * stride,
    };
    let mut patch = PatchFile::new(disk, Some(base)).unwrap();
    for i in 0..changes {
        patch.write(i * stride, b"x").unwrap();
    }
    // finish_patch doubles the target up to 5 GiB; no target helps.
    let plan = patch.plan(write::MIN_PART_SIZE, 5 << 30);
    let copies = plan
        .iter()
        .filter(|p| matches!(p, PartPlan::Copy(_)))
        .count();
    assert!(
        plan.len() <= write::MAX_PARTS as usize,
        "{} parts ({copies} copies) for a {} GiB object with {changes} one-byte changes",
        plan.len(),
        (changes * stride) >> 30
    );
}

// 6b. Same window, and the held DELETE fails: `keep_orphan` (added in 011d531) puts the key
//     back as an orphan although a new file now owns it: the new, committed file is hidden
//     from the mount at once, and deleted by the unmount's delete_orphans.

#[tokio::test]
async fn review_a_failed_orphan_delete_racing_a_create_hides_then_deletes_the_new_file() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    store
        .fail_held
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let fs = Fs::new(store.clone(), config);
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("delete", "f");
    let last_close = fs.release(reader);
    let new_file = async {
        store.entered.notified().await;
        let created = fs.create(ROOT_INO, OsStr::new("f"), 0o644, ROOT).await;
        let closed = match created {
            Ok((entry, fh)) => {
                fs.write(fh, 0, b"new").await.unwrap();
                let closed = fs.commit(fh).await;
                fs.release(fh).await;
                fs.forget(entry.ino, 1); // the kernel lets go of the new dentry
                closed
            }
            Err(e) => Err(e), // refused: nothing acknowledged, nothing lost
        };
        store.go.notify_one();
        closed
    };
    let ((), closed) = tokio::join!(last_close, new_file);
    if closed.is_err() {
        return;
    }
    assert_eq!(store.inner.get("f").as_deref(), Some(&b"new"[..]));
    let seen = fs
        .lookup(ROOT_INO, OsStr::new("f"))
        .await
        .map(|e| e.attrs.size);
    fs.commit_all().await;
    fs.delete_orphans().await; // unmount
    let after_unmount = store.inner.get("f");
    assert_eq!(
        (seen, after_unmount.as_deref()),
        (Ok(3), Some(&b"new"[..])),
        "(lookup of the new file, S3 after the unmount)"
    );
}

// 9b. The same through truncate(2) of the unlinked file (by its /proc/self/fd path, with no
//     writer): truncating the unlinked file to 0 empties the NEW file under its old name.

#[tokio::test]
async fn review_truncate_of_an_unlinked_file_empties_the_new_file_under_its_name() {
    let (store, fs) = fs_with(&[("f", "old")], with_disk());
    let old = lookup_path(&fs, "f").await.unwrap();
    let reader = fs.open(old.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    write_file(&fs, "f", b"new content").await.unwrap();
    let _ = fs
        .setattr(
            old.ino,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .await;
    close(&fs, reader).await.unwrap();
    assert_eq!(
        store.inner().get("f").as_deref(),
        Some(&b"new content"[..]),
        "the new file was emptied through the unlinked file"
    );
}

// 1b. The rename launders a stale base for a writer with nothing written yet too: its later
//     in-place writes land on the other client's version (a blend) instead of ESTALE.

#[tokio::test]
async fn review_rename_of_a_clean_writer_rebases_onto_another_clients_version() {
    let (store, fs) = fs_with(&[("a", "hello world")], with_disk());
    let fh = open_path(&fs, "a", libc::O_WRONLY).await; // opened without O_TRUNC, pinned
    store.inner().insert("a", "HELLO WORLD");
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await;
    assert_eq!(renamed.unwrap_err().errno(), libc::ESTALE);
    fs.write(fh, 0, b"J").await.unwrap();
    let closed = close(&fs, fh).await;
    assert_eq!(closed.unwrap_err().errno(), libc::ESTALE, "never a blend");
    assert_eq!(store.inner().get("a").as_deref(), Some(&b"HELLO WORLD"[..]));
}

// ---------------------------------------------------------------------------------------------
// 13. The disk bound counts changed BYTES, not the blocks they occupy: one byte written every
//     4 KiB reserves 1/4096 of what the scratch file takes on disk, so --max-cache-size can be
//     exceeded ~4096 times (README: "Disk: at most --max-cache-size of ... changed bytes").

#[test]
fn review_scattered_one_byte_writes_take_far_more_disk_than_the_cache_bound() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("bucketfs-review-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let max_bytes = 1u64 << 20;
    let disk = disk_cache::DiskCache::new(disk_cache::DiskCacheConfig {
        dir: dir.clone(),
        max_bytes,
        chunk_size: 1 << 20,
        concurrency: 1,
    });
    let mut patch = PatchFile::new(disk.clone(), None).unwrap();
    let mut refused = false;
    for i in 0..(64u64 << 20) / 4096 {
        // Counted in blocks: the bound refuses (ENOSPC) before the disk goes over it.
        if let Err(e) = patch.write(i * 4096, b"x") {
            assert_eq!(e.errno(), libc::ENOSPC);
            refused = true;
            break;
        }
    }
    assert!(refused, "the bound was never reached");
    // The scratch file: the only open file in our directory.
    let mut allocated = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.starts_with(&dir) {
            allocated = std::fs::metadata(fd.path()).unwrap().blocks() * 512;
        }
    }
    drop(patch);
    let _ = std::fs::remove_dir(&dir);
    assert!(allocated > 0, "scratch file not found");
    assert!(
        allocated <= max_bytes,
        "{allocated} bytes of disk taken under a {max_bytes}-byte bound ({} reserved)",
        (64u64 << 20) / 4096
    );
}

// 6c. create's own settle_orphan takes the orphan and DELETEs with the key NOT held busy: a
//     second create under the same name in that window makes a new file, whose fsync'd bytes
//     the first create's DELETE then removes (the first create then fails with EBUSY, and the
//     second's close returns 0 with nothing in S3).

#[tokio::test]
async fn review_two_creates_over_an_orphan_lose_the_second_ones_fsynced_bytes() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("delete", "f");
    let first = async {
        // Its settle_orphan DELETE is held at the gate.
        fs.create(ROOT_INO, OsStr::new("f"), 0o644, ROOT).await
    };
    let second = async {
        store.entered.notified().await;
        // Refused while the first create deletes the old object: nothing is acknowledged
        // that the delete could then remove.
        let created = fs.create(ROOT_INO, OsStr::new("f"), 0o644, ROOT).await;
        store.go.notify_one();
        created
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.unwrap_err().errno(), libc::EBUSY);
    let (_, fh) = first.unwrap();
    fs.write(fh, 0, b"mine").await.unwrap();
    let closed = fs.commit(fh).await;
    fs.release(fh).await;
    fs.release(reader).await;
    closed.unwrap();
    assert_eq!(
        store.inner.get("f").as_deref(),
        Some(&b"mine"[..]),
        "fsync and close returned 0, and nothing is in S3"
    );
}

// ---------------------------------------------------------------------------------------------
// 14. (Against the uncommitted `delete_orphan`, which deletes an orphan only if S3 still holds
//     the ETag its inode had at unlink.) A file renamed while dirty keeps its OLD name's ETag in
//     its attributes, while its new name holds another object (a copy of the base, or the
//     object it was renamed over): unlinked while open, its last close finds a "newer object"
//     and keeps it. The unlinked name comes back, with stale content, for good.

#[tokio::test]
async fn review_unlinking_a_file_renamed_while_changed_in_place_leaves_its_object() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let (store, fs) = fs_with(&[("a", "hello world")], config);
    let fh = open_path(&fs, "a", libc::O_RDWR).await;
    fs.write(fh, 0, b"J").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.unlink(ROOT_INO, OsStr::new("b")).await.unwrap();
    let _ = close(&fs, fh).await;
    assert!(
        store.inner().get("b").is_none(),
        "left in S3 after its last close"
    );
    assert_eq!(
        lookup_path(&fs, "b").await.map(|e| e.attrs.size),
        Err(FsError::NotFound)
    );
}

#[tokio::test]
async fn review_unlinking_a_file_renamed_over_another_while_streaming_brings_the_other_back() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let (store, fs) = fs_with(&[("a", "a's old"), ("b", "b's old")], config);
    let fh = open_path(&fs, "a", libc::O_WRONLY | libc::O_TRUNC).await;
    fs.write(fh, 0, b"new").await.unwrap();
    let _b = lookup_path(&fs, "b").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.unlink(ROOT_INO, OsStr::new("b")).await.unwrap();
    let _ = close(&fs, fh).await;
    assert!(
        store.inner().get("b").is_none(),
        "the object renamed over, then unlinked, is back: {:?}",
        store.inner().get("b")
    );
}

// 2b. (Against the uncommitted fix of 2, which rebases the writer onto its self-copy.) The
//     self-copy must be conditioned on the writer's base ETag: otherwise a version another
//     client wrote since the open is copied, the writer is rebased onto it, and the next
//     in-place write is stored on top of that version (a blend) instead of failing ESTALE.

#[tokio::test]
async fn review_metadata_change_of_an_open_file_launders_another_clients_version() {
    for via_xattr in [false, true] {
        let (store, fs) = fs_with(&[("f", "hello world")], with_disk());
        let fh = open_path(&fs, "f", libc::O_WRONLY).await;
        let f = lookup_path(&fs, "f").await.unwrap();
        store.inner().insert("f", "HELLO WORLD"); // another client, after our open
        if via_xattr {
            let _ = fs.setxattr(f.ino, OsStr::new("user.k"), b"v", 0).await;
        } else {
            let _ = fs.setattr(f.ino, touch(SystemTime::now())).await;
        }
        let _ = fs.write(fh, 0, b"J").await;
        let closed = close(&fs, fh).await;
        assert_ne!(
            store.inner().get("f").as_deref(),
            Some(&b"JELLO WORLD"[..]),
            "blend stored (xattr: {via_xattr}, close: {closed:?})"
        );
    }
}

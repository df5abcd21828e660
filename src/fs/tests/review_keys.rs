//! Regression tests for the findings of a fresh-context review of concurrent operations on
//! shared names (each is one operation acting on a key it no longer owns, or a
//! read-modify-write nothing serialized). Each failed on the code as reviewed; the fix is the
//! key owner (`owner.rs`, `claims.rs`). tests/explore searches the same classes at random.

use super::gate::Gate;
use super::*;

fn xattrs() -> FsConfig {
    FsConfig {
        user_xattrs: true,
        ..FsConfig::default()
    }
}

fn chmod(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

fn truncate(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..SetAttr::default()
    }
}

// 1. A descriptor of a file that was renamed over still acted on the name it lost: fchmod and
//    fsetxattr through a read-only descriptor of the old `g` rewrote the new `g`'s metadata.
#[tokio::test]
async fn a_descriptor_of_a_file_renamed_over_changes_nothing_under_its_old_name() {
    let (store, fs) = fs_with(&[("f", "f's content"), ("g", "old g")], xattrs());
    let old_g = lookup_path(&fs, "g").await.unwrap();
    let fh = fs.open(old_g.ino, libc::O_RDONLY).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    // Through the old descriptor: the old file is nameless now; nothing in S3 changes.
    fs.setattr(old_g.ino, chmod(0o600)).await.unwrap();
    fs.setxattr(old_g.ino, OsStr::new("user.k"), b"v", 0)
        .await
        .unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("g").unwrap()[..], b"f's content");
    let meta = store.inner().info("g").unwrap().user_metadata;
    assert_eq!(
        (meta.get("mode"), meta.get("k")),
        (None, None),
        "the new g kept its own metadata"
    );
}

// 1b. The same through ftruncate of a writer that failed: it emptied the new `g`.
#[tokio::test]
async fn a_failed_writer_of_a_file_renamed_over_truncates_nothing_under_its_old_name() {
    let (store, fs) = fs_of(&[("f", "f's content"), ("g", "old g")]);
    let old_g = lookup_path(&fs, "g").await.unwrap();
    let fh = fs
        .open(old_g.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    store.fail(Op::Put, StoreError::Transient("503".into()), 1);
    assert!(fs.commit(fh).await.is_err(), "the writer failed");
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    let _ = fs.setattr(old_g.ino, truncate(0)).await;
    fs.release(fh).await;
    assert_eq!(&store.inner().get("g").unwrap()[..], b"f's content");
}

// 2. A directory renamed over an "empty" one destroyed a file being created in it: emptiness
//    was asked of S3 only. POSIX says ENOTEMPTY.
#[tokio::test]
async fn a_directory_is_not_renamed_over_one_with_a_file_being_written() {
    let (store, fs) = fs_of(&[("src/x", "moved"), ("dst/", "")]);
    let dst = lookup_path(&fs, "dst").await.unwrap();
    let (_, fh) = fs
        .create(dst.ino, OsStr::new("x"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"being written").await.unwrap();
    let renamed = fs
        .rename(
            ROOT_INO,
            OsStr::new("src"),
            ROOT_INO,
            OsStr::new("dst"),
            false,
        )
        .await;
    assert_eq!(renamed, Err(FsError::NotEmpty));
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("src/x").unwrap()[..], b"moved");
    assert_eq!(&store.inner().get("dst/x").unwrap()[..], b"being written");
}

// 3. A directory rename whose delete failed: the README said every source is still under the
//    old name and advised `rm -r NEW`, which deleted the only copies. Now: a failure while
//    deleting leaves every object under the new name (the old name keeps those whose delete
//    failed); a failure while copying leaves the old directory whole and takes the copies back.
#[tokio::test]
async fn a_directory_rename_that_fails_while_deleting_leaves_every_object_under_the_new_name() {
    let keys: Vec<(String, String)> = (0..20)
        .map(|i| (format!("d/{i:02}"), i.to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (store, fs) = fs_of(&refs);
    lookup_path(&fs, "d").await.unwrap();
    store.fail(Op::Delete, StoreError::Transient("503".into()), 1);
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await;
    assert_eq!(renamed.unwrap_err().errno(), libc::EIO);
    for (key, body) in &keys {
        let moved = key.replacen("d/", "e/", 1);
        assert_eq!(store.inner().get(&moved).as_deref(), Some(body.as_bytes()));
    }
    let left: Vec<String> = store
        .inner()
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("d/"))
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the source whose delete failed: {left:?}"
    );
}

#[tokio::test]
async fn a_directory_rename_that_fails_while_copying_leaves_the_old_directory_whole() {
    let (store, fs) = fs_of(&[("d/a", "1"), ("d/b", "2"), ("d/c", "3")]);
    lookup_path(&fs, "d").await.unwrap();
    store.fail(Op::Copy, StoreError::Transient("503".into()), 1);
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await;
    assert_eq!(renamed.unwrap_err().errno(), libc::EIO);
    assert_eq!(store.inner().keys(), vec!["d/a", "d/b", "d/c"]);
    // Whole again in the mount too: the rename can simply be run again.
    fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await
        .unwrap();
    assert_eq!(store.inner().keys(), vec!["e/a", "e/b", "e/c"]);
}

// 4. Lost metadata updates: setxattr read the metadata (HEAD), a chmod completed, then the
//    setxattr's self-copy wrote the old mode back. Two concurrent setxattrs lost one.
#[tokio::test]
async fn a_chmod_during_a_setxattr_is_kept() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "content");
    let fs = Fs::new(store.clone(), xattrs());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("head-after", "f"); // the setxattr has read the metadata
    let setting = fs.setxattr(f.ino, OsStr::new("user.k"), b"v", 0);
    let changing = async {
        store.entered.notified().await;
        fs.setattr(f.ino, chmod(0o600)).await
    };
    let (set, changed) = tokio::join!(setting, changing);
    set.unwrap();
    changed.unwrap();
    let meta = store.inner.info("f").unwrap().user_metadata;
    assert_eq!(
        (
            meta.get("mode").map(String::as_str),
            meta.get("k").map(String::as_str)
        ),
        (Some("33152"), Some("v")),
        "both the chmod and the xattr are in S3"
    );
    assert_eq!(fs.getattr(f.ino).await.unwrap().attrs.perm, 0o600);
}

#[tokio::test]
async fn two_concurrent_setxattrs_of_different_names_are_both_kept() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "content");
    let fs = Fs::new(store.clone(), xattrs());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("head-after", "f");
    let first = fs.setxattr(f.ino, OsStr::new("user.a"), b"1", 0);
    let second = async {
        store.entered.notified().await;
        fs.setxattr(f.ino, OsStr::new("user.b"), b"2", 0).await
    };
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    let meta = store.inner.info("f").unwrap().user_metadata;
    assert_eq!(
        (
            meta.get("a").map(String::as_str),
            meta.get("b").map(String::as_str)
        ),
        (Some("1"), Some("2"))
    );
}

// 5. A store answer about a stale inode removed whatever entry then held its name: the file
//    being written there vanished, and a second create of it succeeded (EBUSY promised).
#[tokio::test]
async fn not_found_for_a_stale_inode_leaves_the_file_now_under_its_name() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    };
    let (_store, fs) = fs_with(&[("g", "old g")], config);
    let old_g = lookup_path(&fs, "g").await.unwrap();
    let (new_file, fh) = fs
        .create(ROOT_INO, OsStr::new("h"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("g")).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("h"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    // The old inode asks S3: "g" is not there (the new file is not stored yet).
    assert_eq!(fs.getattr(old_g.ino).await.unwrap_err(), FsError::NotFound);
    let seen = lookup_path(&fs, "g").await.unwrap();
    assert_eq!(seen.ino, new_file.ino, "the file being written is still g");
    assert_eq!(
        fs.create(ROOT_INO, OsStr::new("g"), 0o644, ROOT)
            .await
            .unwrap_err(),
        FsError::Busy
    );
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
}

// 7. An unlink that returned 0 was undone by a concurrent truncate(path): the truncate's PUT
//    brought the name back, empty. A rename during the truncate left both names.
#[tokio::test]
async fn an_unlink_during_a_truncate_by_path_stays_done() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "content");
    let fs = Fs::new(store.clone(), FsConfig::default());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("head-after", "f"); // the truncate read what S3 holds
    let truncating = fs.setattr(f.ino, truncate(0));
    let unlinking = async {
        store.entered.notified().await;
        fs.unlink(ROOT_INO, OsStr::new("f")).await
    };
    let (truncated, unlinked) = tokio::join!(truncating, unlinking);
    truncated.unwrap();
    unlinked.unwrap();
    assert_eq!(store.inner.keys(), Vec::<String>::new());
}

#[tokio::test]
async fn a_rename_during_a_truncate_by_path_leaves_one_name() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "content");
    let fs = Fs::new(store.clone(), super::posix::with_disk());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("head-after", "f");
    let truncating = fs.setattr(f.ino, truncate(2));
    let renaming = async {
        store.entered.notified().await;
        fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
            .await
    };
    let (truncated, renamed) = tokio::join!(truncating, renaming);
    truncated.unwrap();
    renamed.unwrap();
    assert_eq!(store.inner.keys(), vec!["g".to_string()]);
    assert_eq!(&store.inner.get("g").unwrap()[..], b"co");
}

// 8. "SIGTERM refuses new changes (EROFS)" was false for descriptors already open: a write
//    after the shutdown stored every file was accepted and never stored.
#[tokio::test]
async fn after_the_shutdown_began_writes_on_open_descriptors_are_refused() {
    let (store, fs) = fs_of(&[("src", "copied")]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"before").await.unwrap();
    let src = lookup_path(&fs, "src").await.unwrap();
    let reader = fs.open(src.ino, libc::O_RDONLY).await.unwrap();
    let (_, copy_fh) = fs
        .create(ROOT_INO, OsStr::new("copy"), 0o644, ROOT)
        .await
        .unwrap();
    fs.begin_shutdown();
    assert!(fs.commit_all().await.is_empty());
    assert_eq!(fs.write(fh, 6, b" after").await, Err(FsError::ReadOnly));
    assert_eq!(
        fs.copy_range(reader, 0, copy_fh, 0, 6).await,
        Err(FsError::ReadOnly)
    );
    assert_eq!(&store.inner().get("f").unwrap()[..], b"before");
}

// 6. An upload that completed under a file's old name destroyed another client's object
//    there: the file was renamed while its multipart upload ran (this mount deleted the old
//    name's object at once), another client wrote the old name, and the close completed the
//    upload over it, copied it to the new name and deleted it. Now the completion there
//    expects nothing under the old name: the other client's object stays, and the close
//    reports that this file's content was not stored.
#[tokio::test]
async fn an_upload_renamed_away_never_replaces_another_clients_object_under_the_old_name() {
    let (store, fs) = super::multipart_fs(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    let data = super::pattern(11 << 20, 5);
    super::write_at(&fs, fh, 0, &data[..6 << 20]).await;
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    super::write_at(&fs, fh, 6 << 20, &data[6 << 20..]).await;
    store.inner().insert("f", "another client's"); // a second machine writes f
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    fs.release(fh).await;
    assert_eq!(&store.inner().get("f").unwrap()[..], b"another client's");
    assert_eq!(
        store.inner().get("g"),
        None,
        "nothing stored under the new name"
    );
    assert_eq!(store.inner().open_uploads(), 0, "the upload was aborted");
}

// A change in place (a write into an existing object) commits only over the version it
// started from: another client's newer version is kept, and the close gets ESTALE.
#[tokio::test]
async fn a_change_in_place_never_replaces_a_newer_version_written_meanwhile() {
    let (store, fs) = fs_with(&[("f", "0123456789")], super::posix::with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(f.ino, libc::O_RDWR).await.unwrap();
    fs.write(fh, 2, b"XY").await.unwrap();
    store.inner().insert("f", "newer, from another client");
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("f").unwrap()[..],
        b"newer, from another client"
    );
}

// From the review of the key owner: a directory handle listed before a rename re-recorded
// the renamed directory's children under their old keys; an unlink through the new name then
// deleted a new file made under the old one.
#[tokio::test]
async fn a_listing_taken_before_a_directory_rename_does_not_bring_old_keys_back() {
    let config = FsConfig {
        metadata_ttl: Duration::from_secs(60),
        ..FsConfig::default()
    };
    let (store, fs) = fs_with(&[("d/x", "x"), ("d/y", "old")], config);
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    fs.lookup(d, OsStr::new("y")).await.unwrap();
    let dh = fs.opendir(d).unwrap();
    let first = fs.readdir(dh, 0, 3, true).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await
        .unwrap();
    let rest = fs
        .readdir(dh, first.last().unwrap().offset, 3, true)
        .await
        .unwrap();
    fs.releasedir(dh);
    for item in first.iter().chain(&rest).filter(|i| i.counted) {
        fs.forget(item.entry.ino, 1);
    }
    let new_d = fs
        .mkdir(ROOT_INO, OsStr::new("d"), 0o755, ROOT)
        .await
        .unwrap()
        .ino;
    let (_, w) = fs
        .create(new_d, OsStr::new("y"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(w, 0, b"victim").await.unwrap();
    fs.commit(w).await.unwrap();
    fs.release(w).await;
    fs.unlink(d, OsStr::new("y")).await.unwrap(); // d is "e" now
    assert_eq!(&store.inner().get("d/y").unwrap()[..], b"victim");
    assert_eq!(store.inner().get("e/y"), None);
}

// From the final review: a file being written whose name a listing took for a directory (another
// client made `f/x`) lost its binding; the commit then discarded the writer and later writes
// and the final close returned 0 with nothing stored. Now the writer fails: every later call
// through it reports ESTALE.
#[tokio::test]
async fn a_writer_whose_name_was_taken_by_a_directory_reports_every_later_call() {
    let (store, fs) = fs_of(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"a").await.unwrap();
    store.inner().insert("f/x", "another client's");
    let dh = fs.opendir(ROOT_INO).unwrap();
    let listed = fs.readdir(dh, 0, 100, true).await.unwrap();
    fs.releasedir(dh);
    for item in listed.iter().filter(|i| i.counted) {
        fs.forget(item.entry.ino, 1);
    }
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    assert!(
        fs.write(fh, 1, b"b").await.is_err(),
        "a later write is refused"
    );
    assert!(fs.commit(fh).await.is_err(), "and so is the final close");
    fs.release(fh).await;
    assert_eq!(store.inner().get("f"), None);
}

// From the final review: a listing page fetched before this mount stored a new version gave
// the file its old size and ETag back, and a truncate to the old size was skipped.
#[tokio::test]
async fn a_listing_fetched_before_a_commit_does_not_bring_the_old_size_back() {
    let mut keys: Vec<(String, String)> = (0..300)
        .map(|i| (format!("d/{i:03}"), "x".into()))
        .collect();
    keys.push(("d/f".into(), "0123456789".into()));
    let refs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = FsConfig {
        metadata_ttl: Duration::from_secs(60),
        ..super::posix::with_disk()
    };
    let (store, fs) = fs_with(&refs, config);
    let d = lookup_path(&fs, "d").await.unwrap().ino;
    let dh = fs.opendir(d).unwrap();
    let first = fs.readdir(dh, 0, 3, true).await.unwrap();
    let f = fs.lookup(d, OsStr::new("f")).await.unwrap();
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"01234567890123456789").await.unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    let rest = fs
        .readdir(dh, first.last().unwrap().offset, 400, true)
        .await
        .unwrap();
    fs.releasedir(dh);
    for item in first.iter().chain(&rest).filter(|i| i.counted) {
        fs.forget(item.entry.ino, 1);
    }
    fs.setattr(f.ino, truncate(10)).await.unwrap();
    assert_eq!(store.inner().get("d/f").unwrap().len(), 10);
}

// A rename copies the source, then deletes it. Another client's version written under the
// old name between the two stays: only the version copied is deleted.
#[tokio::test]
async fn a_rename_never_deletes_a_version_written_after_its_copy() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "ours");
    let fs = Fs::new(store.clone(), FsConfig::default());
    fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("copy-after", "f");
    let rename = fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false);
    let other_client = async {
        store.entered.notified().await;
        store.inner.insert("f", "another client's");
        store.go.notify_one();
    };
    let (renamed, ()) = tokio::join!(rename, other_client);
    renamed.unwrap();
    assert_eq!(&store.inner.get("g").unwrap()[..], b"ours");
    assert_eq!(
        store.inner.get("f").as_deref(),
        Some(&b"another client's"[..]),
        "the other client's version is not the one that moved"
    );
}

// The same for every object of a directory rename.
#[tokio::test]
async fn a_directory_rename_never_deletes_a_version_written_after_its_copy() {
    let store = Arc::new(Gate::default());
    store.inner.insert("d/a", "a");
    store.inner.insert("d/b", "b");
    let fs = Fs::new(store.clone(), FsConfig::default());
    fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    store.arm("copy-after", "d/b");
    let rename = fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false);
    let other_client = async {
        store.entered.notified().await;
        store.inner.insert("d/b", "another client's");
        store.go.notify_one();
    };
    let (renamed, ()) = tokio::join!(rename, other_client);
    renamed.unwrap();
    assert_eq!(&store.inner.get("e/a").unwrap()[..], b"a");
    assert_eq!(&store.inner.get("e/b").unwrap()[..], b"b");
    assert_eq!(store.inner.get("d/a"), None);
    assert_eq!(
        store.inner.get("d/b").as_deref(),
        Some(&b"another client's"[..])
    );
}

// A rename moves what the name holds: when another client replaced the source after this
// mount looked at it, the copy pinned to the version seen fails its condition, and the
// version there now is moved (and deleted), not the old one brought back.
#[tokio::test]
async fn a_rename_of_a_file_replaced_since_it_was_looked_at_moves_the_new_version() {
    let (store, fs) = fs_with(
        &[("f", "old")],
        FsConfig {
            metadata_ttl: Duration::from_secs(60),
            ..FsConfig::default()
        },
    );
    lookup_path(&fs, "f").await.unwrap();
    store.inner().insert("f", "newer, from another client");
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    assert_eq!(
        &store.inner().get("g").unwrap()[..],
        b"newer, from another client"
    );
    assert_eq!(store.inner().get("f"), None);
}

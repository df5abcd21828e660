//! Regression tests from a fresh-context review of the lifecycle of files unlinked while open
//! ("orphans": their object waits for the last close, hidden). Each failed on the code as
//! reviewed; the fix keeps an orphan's record, and its key hidden and busy, until its object
//! is gone.

use super::gate::Gate;
use super::posix::{close, open_path, with_disk};
use super::*;

// A. (Was:) rmdir takes the orphan record and DELETEs its key without holding it busy: a create +
//    close (returns 0) under that name in the window is deleted by rmdir's DELETE.
#[tokio::test]
async fn review_rmdir_orphan_delete_removes_a_new_committed_file() {
    let store = Arc::new(Gate::default());
    store.inner.insert("d/g", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    let g = fs.lookup(d.ino, OsStr::new("g")).await.unwrap();
    let reader = fs.open(g.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(d.ino, OsStr::new("g")).await.unwrap();
    store.arm("delete", "d/g");
    let removing = fs.rmdir(ROOT_INO, OsStr::new("d"));
    let new_file = async {
        store.entered.notified().await; // rmdir is deleting the orphan's object
        let closed = match fs.create(d.ino, OsStr::new("g"), 0o644, ROOT).await {
            Ok((_, fh)) => {
                fs.write(fh, 0, b"new").await.unwrap();
                let closed = fs.commit(fh).await;
                fs.release(fh).await;
                closed
            }
            Err(e) => Err(e), // refused: nothing acknowledged
        };
        store.go.notify_one();
        closed
    };
    let (removed, closed) = tokio::join!(removing, new_file);
    fs.release(reader).await;
    if let Err(e) = &closed {
        // The create waits for rmdir's claim on the directory, then finds it gone (ENOENT):
        // nothing acknowledged, nothing lost.
        assert_eq!((e.errno(), &removed), (libc::ENOENT, &Ok(())));
        return;
    }
    assert_eq!(
        (removed, store.inner.get("d/g").as_deref()),
        (Ok(()), Some(&b"new"[..])),
        "(rmdir, S3 after create+close of d/g returned 0)"
    );
}

// B. (Was:) unlink of an open file HEADs the object before recording the orphan; the last close in
//    that window finds no orphan and deletes nothing; the record then made has no handle left
//    to close: the object outlives its last close (hidden; only the unmount deletes it).
#[tokio::test]
async fn review_last_close_during_unlink_leaves_the_object() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    store.arm("head", "f");
    let unlinking = fs.unlink(ROOT_INO, OsStr::new("f"));
    let closing = async {
        store.entered.notified().await; // unlink saw the open handle, is HEADing
        fs.release(reader).await; // the last close
        store.go.notify_one();
    };
    let (unlinked, ()) = tokio::join!(unlinking, closing);
    unlinked.unwrap();
    assert_eq!(
        store.inner.get("f"),
        None,
        "unlinked, last handle closed, and the object is still in S3"
    );
}

// C. (Was:) While the last close DELETEs the orphan's object the record is out of the table: a
//    lookup in that window brings the unlinked name back. If the DELETE fails the record is
//    kept, so a file then written under that name (close returns 0) is hidden, and the next
//    symlink(2) of the name deletes it (settle_orphan) instead of failing EEXIST.
#[tokio::test]
async fn review_lookup_during_a_failed_orphan_delete_loses_the_next_written_file() {
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
    let lookup = async {
        store.entered.notified().await;
        let seen = fs.lookup(ROOT_INO, OsStr::new("f")).await;
        store.go.notify_one();
        seen
    };
    let ((), seen) = tokio::join!(last_close, lookup);
    assert_eq!(
        seen.map(|e| e.ino),
        Err(FsError::NotFound),
        "the unlinked name came back while its object was being deleted"
    );
    // The delete failed: the object stays hidden until the unmount deletes it.
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("f")).await.map(|e| e.ino),
        Err(FsError::NotFound)
    );
    let dir = fs.opendir(ROOT_INO).unwrap();
    let listed = fs.readdir(dir, 0, 100, true).await.unwrap();
    fs.releasedir(dir);
    assert!(!listed.iter().any(|item| item.name == "f"), "listed");
    fs.delete_orphans().await;
    assert_eq!(store.inner.get("f"), None, "deleted at the unmount");
    // A file written under the name afterwards is a file like any other.
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"mine").await.unwrap();
    let closed = fs.commit(fh).await;
    fs.release(fh).await;
    closed.unwrap();
    let symlinked = fs
        .symlink(ROOT_INO, OsStr::new("f"), OsStr::new("t"), ROOT)
        .await;
    assert_eq!(
        (symlinked.map(|_| ()), store.inner.get("f").as_deref()),
        (Err(FsError::Exists), Some(&b"mine"[..])),
        "(symlink over the written file, S3)"
    );
}

// D. (Was:) mkdir does not settle the orphan under the file key of its name: lookups of the new
//    directory say ENOENT (lookup_entry's is_orphan_key check) until the old file's last close.
#[tokio::test]
async fn review_mkdir_over_an_unlinked_open_file_is_hidden() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let (_store, fs) = fs_with(&[("f", "old")], config);
    let reader = super::posix::open_path(&fs, "f", libc::O_RDONLY).await;
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    fs.mkdir(ROOT_INO, OsStr::new("f"), 0o755, ROOT)
        .await
        .unwrap();
    let seen = lookup_path(&fs, "f").await.map(|e| e.attrs.kind);
    super::posix::close(&fs, reader).await.unwrap();
    assert_eq!(seen, Ok(Kind::Dir));
}

// E. (Was:) A lookup that starts after unlink returned 0 HEADs the orphan's object, the last
// close deletes it and drops the record, then the lookup checks is_orphan_key: not an orphan
// any more, so the unlinked name is returned (and cached for the TTL when it is not zero).
#[tokio::test]
async fn review_lookup_after_unlink_sees_the_name_when_the_last_close_races() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..with_disk()
    };
    let fs = Fs::new(store.clone(), config);
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    // unlink returned 0: from here on, f does not exist.
    store.arm("head-after", "f");
    let lookup = fs.lookup(ROOT_INO, OsStr::new("f"));
    let last_close = async {
        store.entered.notified().await; // the lookup's HEAD found the orphan's object
        fs.release(reader).await; // the last close deletes it
        store.go.notify_one();
    };
    let (seen, ()) = tokio::join!(lookup, last_close);
    assert_eq!(store.inner.get("f"), None);
    assert_eq!(
        seen.map(|e| e.ino),
        Err(FsError::NotFound),
        "a lookup started after unlink returned 0 found the unlinked name"
    );
}

// F. (Was:) unlink(d, "x") of an open file while d is renamed to e (the kernel locks d for the
// unlink and only the parent for a same-directory rename: they run together). unlink's HEAD
// of d/x finds nothing (moved), so no orphan is recorded; unlink returns 0 and the file's
// object stays for good under e/x, visible after the TTL.
#[tokio::test]
async fn review_unlink_racing_a_directory_rename_leaves_the_object() {
    let store = Arc::new(Gate::default());
    store.inner.insert("d/x", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    let x = fs.lookup(d.ino, OsStr::new("x")).await.unwrap();
    let reader = fs.open(x.ino, libc::O_RDONLY).await.unwrap();
    store.arm("head", "d/x");
    let unlinking = fs.unlink(d.ino, OsStr::new("x"));
    let renaming = async {
        store.entered.notified().await; // unlink saw the open handle, HEADs d/x
        let renamed = fs
            .rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
            .await;
        store.go.notify_one();
        renamed
    };
    let (unlinked, renamed) = tokio::join!(unlinking, renaming);
    fs.release(reader).await; // the last close
                              // Now: the rename waits for the unlink's claim on d/x, then moves what is left (nothing:
                              // the unlinked file's object stays hidden at d/x until the last close deletes it).
    assert_eq!((unlinked, renamed), (Ok(()), Ok(())));
    assert_eq!(
        store.inner.keys(),
        Vec::<String>::new(),
        "unlink of x returned 0, its last handle closed, and its object is still in S3"
    );
}

// G. (Was:) `mv d e; mv e d` while a file of d is unlinked but open: the orphan's object and
// record stay at d/x; a new x made in e (written, closed: acknowledged) is copied to d/x by
// the second rename (rename_dir settles nothing below the destination, and "d" is absent by
// the negative cache, so no emptiness check). The record now covers the new file: lookups
// hide it after the TTL, and rmdir d takes it for an orphan, deletes it and returns 0.
#[tokio::test]
async fn review_directory_renamed_back_over_an_orphan_loses_a_new_file() {
    let (store, fs) = fs_with(&[("d/", ""), ("d/x", "old")], with_disk());
    let reader = open_path(&fs, "d/x", libc::O_RDONLY).await;
    let d = lookup_path(&fs, "d").await.unwrap();
    fs.unlink(d.ino, OsStr::new("x")).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false)
        .await
        .unwrap();
    let (_, fh) = fs
        .create(d.ino, OsStr::new("x"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"precious").await.unwrap();
    close(&fs, fh).await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("e"), ROOT_INO, OsStr::new("d"), false)
        .await
        .unwrap();
    assert_eq!(store.inner().get("d/x").as_deref(), Some(&b"precious"[..]));
    tokio::time::sleep(Duration::from_millis(1100)).await; // the metadata TTL (1 s)
    let seen = lookup_path(&fs, "d/x").await.map(|e| e.attrs.size);
    let removed = fs.rmdir(ROOT_INO, OsStr::new("d")).await;
    fs.release(reader).await;
    assert_eq!(
        (seen, removed, store.inner().get("d/x").as_deref()),
        (Ok(8), Err(FsError::NotEmpty), Some(&b"precious"[..])),
        "(lookup of d/x, rmdir d, S3's d/x)"
    );
}

// H. (Was:) A request dropped while deleting a claimed orphan (BusyKeys is drop-safe,
// the `deleting` flag is not): the record stays `deleting` for good. The last close cannot
// claim it, and every create of the name is EBUSY until the unmount.
#[tokio::test]
async fn review_a_dropped_claim_leaves_the_name_busy() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let fs = Fs::new(store.clone(), with_disk());
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    let reader = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    store.arm("delete", "f");
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        fs.create(ROOT_INO, OsStr::new("f"), 0o644, ROOT),
    )
    .await;
    assert!(dropped.is_err(), "held, then dropped");
    fs.release(reader).await; // the last close
    let again = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .map(|_| ());
    assert_eq!(
        (again, store.inner.get("f").is_some()),
        (Ok(()), false),
        "(create after the last close, orphan object still in S3)"
    );
}

// F'. The other order of F: an unlink in a directory whose rename is moving its objects waits
//     for the rename (its claim on the directory's tree), then unlinks the file where the
//     rename moved it.
#[tokio::test]
async fn an_unlink_in_a_directory_being_renamed_waits_and_follows_it() {
    let store = Arc::new(Gate::default());
    store.inner.insert("d/x", "x");
    store.inner.insert("d/y", "y");
    let fs = Fs::new(store.clone(), with_disk());
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    fs.lookup(d.ino, OsStr::new("x")).await.unwrap();
    store.arm("delete", "d/y");
    let renaming = fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false);
    let unlinking = async {
        store.entered.notified().await; // the rename deletes its sources
        let unlinked = fs.unlink(d.ino, OsStr::new("x")).await;
        store.go.notify_one();
        unlinked
    };
    let (renamed, unlinked) = tokio::join!(renaming, unlinking);
    assert_eq!((renamed, unlinked), (Ok(()), Ok(())));
    assert_eq!(store.inner.keys(), vec!["e/y".to_string()]);
}

// I. (Was:) A directory rename marks "d/" busy, but a rename of a file OUT of d only checks its
//    destination: it runs while the directory's objects are being copied, and the file
//    ends up under both names (the renamed-away name comes back under the new directory).
#[tokio::test]
async fn review_file_renamed_out_of_a_renaming_directory_exists_twice() {
    let store = Arc::new(Gate::default());
    store.inner.insert("d/f", "data");
    let fs = Fs::new(store.clone(), FsConfig::default());
    let d = fs.lookup(ROOT_INO, OsStr::new("d")).await.unwrap();
    fs.lookup(d.ino, OsStr::new("f")).await.unwrap();
    store.arm("copy-after", "d/f");
    let dir_rename = fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), false);
    let file_rename = async {
        store.entered.notified().await; // d/f copied to e/f, not yet deleted
        let r = fs
            .rename(d.ino, OsStr::new("f"), ROOT_INO, OsStr::new("x"), false)
            .await;
        store.go.notify_one();
        r
    };
    let (dir, file) = tokio::join!(dir_rename, file_rename);
    let keys = store.inner.keys();
    assert!(
        !(keys.contains(&"e/f".to_string()) && keys.contains(&"x".to_string())),
        "dir rename {dir:?}, file rename {file:?}: S3 holds {keys:?}"
    );
}

async fn failed_write(fs: &Fs<Gate>, ino: u64, store: &Gate) {
    store
        .fail_put
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let fh = fs.open(ino, libc::O_WRONLY).await.unwrap();
    fs.write(fh, 0, b"0123456789").await.unwrap();
    assert!(fs.commit(fh).await.is_err(), "close must fail");
    fs.release(fh).await;
    store
        .fail_put
        .store(false, std::sync::atomic::Ordering::SeqCst);
}

// J. (Was:) The stamps make current_parts (chmod) take a failed writer's local attributes for the
//    object's: the writer wrote while chmod's HEAD ran, so the HEAD answer is refused as
//    "older"; chmod then stores them with a fresh expiry: getattr shows 10 bytes, S3 has 3.
#[tokio::test]
async fn review_chmod_revives_a_failed_writers_size_through_the_stamp() {
    let store = Arc::new(Gate::default());
    store.inner.insert("f", "old");
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::from_secs(60),
            ..super::posix::with_disk()
        },
    );
    let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
    failed_write(&fs, f.ino, &store).await; // attributes distrusted (expired)
    store.arm("head", "f");
    let chmod = fs.setattr(
        f.ino,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    );
    let writer = async {
        store.entered.notified().await; // chmod asks S3 for the current attributes
        failed_write(&fs, f.ino, &store).await;
        store.go.notify_one();
    };
    let (chmod, ()) = tokio::join!(chmod, writer);
    let size = fs.getattr(f.ino).await.unwrap().attrs.size;
    assert_eq!(
        (size, store.inner.get("f").map(|b| b.len())),
        (3, Some(3)),
        "chmod {chmod:?}: getattr size vs S3 size"
    );
}

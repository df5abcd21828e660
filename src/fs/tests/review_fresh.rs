//! Findings of the fresh-context review of the final "one owner per key" change (each test
//! failed on the code as reviewed). Classes: a version this mount started from that no
//! condition guarded (an empty base), a cached "absent" trusted for a write that must not
//! replace, a delete of an object this mount never saw, and an ETag that no longer described
//! what S3 holds under the key.

use super::*;

// F1. `>>` onto an existing EMPTY file (a log just touched): the writer's base is an empty
//     object, so the appended bytes stream and the close is an unconditional PutObject. Another
//     client's version written between the open and the close is replaced, although an
//     existing file opened without O_TRUNC is a change in place that must never replace a
//     version it did not start from (the same with a non-empty file fails with ESTALE).
#[tokio::test]
async fn fresh_appending_to_an_empty_file_never_replaces_another_clients_version() {
    let (store, fs) = fs_of(&[("log", "")]);
    let log = lookup_path(&fs, "log").await.unwrap();
    let fh = fs
        .open(log.ino, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    store.inner().insert("log", "another client's lines\n");
    fs.write(fh, 0, b"mine\n").await.unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("log").unwrap()[..],
        b"another client's lines\n",
        "another client's version was replaced by a change that never saw it (close: {committed:?})"
    );
}

// F1b. The same through O_RDWR (a patch with no base: an unconditional PutObject too).
#[tokio::test]
async fn fresh_rdwr_write_into_an_empty_file_never_replaces_another_clients_version() {
    let (store, fs) = fs_with(&[("f", "")], super::posix::with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(f.ino, libc::O_RDWR).await.unwrap();
    store.inner().insert("f", "another client's");
    fs.write(fh, 0, b"mine").await.unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("f").unwrap()[..],
        b"another client's",
        "close: {committed:?}"
    );
}

// F1c. Writing on after an fsync of an empty file (this mount's own version, size 0):
//      the next close replaces whatever another client wrote since the fsync.
#[tokio::test]
async fn fresh_writing_on_after_fsync_of_an_empty_file_never_replaces_another_clients_version() {
    let (store, fs) = fs_of(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.commit(fh).await.unwrap(); // fsync: an empty object
    store.inner().insert("f", "another client's");
    fs.write(fh, 0, b"mine").await.unwrap();
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("f").unwrap()[..],
        b"another client's",
        "close: {committed:?}"
    );
}

// Control: the same with a non-empty file fails with ESTALE and keeps the other version.
#[tokio::test]
async fn fresh_control_appending_to_a_nonempty_file_keeps_another_clients_version() {
    let (store, fs) = fs_with(&[("log", "x\n")], super::posix::with_disk());
    let log = lookup_path(&fs, "log").await.unwrap();
    let fh = fs
        .open(log.ino, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    store.inner().insert("log", "another client's lines\n");
    fs.write(fh, 2, b"mine\n").await.unwrap();
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("log").unwrap()[..],
        b"another client's lines\n"
    );
}

// F2. A file made here and still being written (pending: this mount never stored it, nor saw
//     any object under its name) is unlinked while open: the unlink deletes whatever S3 holds
//     under the name unconditionally ("nothing of it in S3, unless a failed rename copied
//     something"), i.e. an object another client wrote there meanwhile.
#[tokio::test]
async fn fresh_unlinking_a_file_being_created_never_deletes_another_clients_object() {
    let (store, fs) = fs_of(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"mine").await.unwrap();
    store.inner().insert("f", "another client's");
    fs.unlink(ROOT_INO, OsStr::new("f")).await.unwrap();
    let _ = fs.commit(fh).await;
    fs.release(fh).await;
    assert_eq!(
        store.inner().get("f").as_deref(),
        Some(&b"another client's"[..]),
        "an object this mount never saw was deleted"
    );
}

// F3. A name this mount recently found absent (negative cache, 1 s) is made by another client;
//     symlink(2) then PUTs over it unconditionally (it must be EEXIST, never a replacement).
#[tokio::test]
async fn fresh_symlink_never_replaces_an_object_another_client_made_after_the_lookup() {
    let (store, fs) = fs_of(&[]);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("l")).await.unwrap_err(),
        FsError::NotFound
    );
    store.inner().insert("l", "another client's file");
    let made = fs
        .symlink(ROOT_INO, OsStr::new("l"), OsStr::new("target"), ROOT)
        .await;
    assert_eq!(
        &store.inner().get("l").unwrap()[..],
        b"another client's file",
        "symlink answered {made:?}"
    );
}

// F3b. The same for open(O_CREAT|O_EXCL): the create is granted from the negative cache and
//      its close PUTs over the other client's object (a lock file taken twice).
#[tokio::test]
async fn fresh_exclusive_create_never_replaces_an_object_another_client_made_after_the_lookup() {
    let (store, fs) = fs_of(&[]);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("lock")).await.unwrap_err(),
        FsError::NotFound
    );
    store.inner().insert("lock", "held by another client");
    let created = fs
        .create_with_flags(ROOT_INO, OsStr::new("lock"), 0o644, libc::O_EXCL, ROOT)
        .await;
    let mut closed = None;
    if let Ok((_, fh)) = &created {
        fs.write(*fh, 0, b"mine").await.unwrap();
        closed = Some(fs.commit(*fh).await);
        fs.release(*fh).await;
    }
    assert_eq!(
        &store.inner().get("lock").unwrap()[..],
        b"held by another client",
        "create: {:?}, close: {closed:?}",
        created.map(|(e, _)| e.ino)
    );
}

// F3c. rename(RENAME_NOREPLACE) onto such a name copies over the other client's object.
#[tokio::test]
async fn fresh_rename_noreplace_never_replaces_an_object_another_client_made_after_the_lookup() {
    let (store, fs) = fs_of(&[("a", "mine")]);
    lookup_path(&fs, "a").await.unwrap();
    assert!(fs.lookup(ROOT_INO, OsStr::new("b")).await.is_err());
    store.inner().insert("b", "another client's");
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), true)
        .await;
    assert_eq!(
        &store.inner().get("b").unwrap()[..],
        b"another client's",
        "rename answered {renamed:?}"
    );
}

// F4. A file being rewritten (O_TRUNC) is renamed over an existing file, then renamed on:
//     `mv a b; mv b c`. The first rename leaves the replaced b's object in S3 until the new
//     content is stored (by design) and gives the moved inode the ETag of a's old version; the
//     second rename deletes "b" only if it holds that ETag, which it never does: the replaced
//     file comes back under b after both renames succeeded.
#[tokio::test]
async fn fresh_a_file_being_written_renamed_over_another_then_on_leaves_no_old_object_behind() {
    let (store, fs) = fs_of(&[("a", "old a"), ("b", "old b")]);
    let a = lookup_path(&fs, "a").await.unwrap();
    lookup_path(&fs, "b").await.unwrap();
    let fh = fs
        .open(a.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"new a").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("c"), false)
        .await
        .unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("c").unwrap()[..], b"new a");
    assert_eq!(store.inner().get("a"), None);
    assert_eq!(
        store.inner().get("b").as_deref(),
        None,
        "the file renamed over came back under b"
    );
}

// The same class, found after the review: a new file whose writes turn to local disk (a
// write behind the end before any part was uploaded, or its start spilled past the
// overdraft) lost the condition its stream carried: an O_EXCL file's first upload replaced
// an object another client made meanwhile.
#[tokio::test]
async fn an_exclusive_file_written_out_of_order_never_replaces_another_clients_object() {
    let (store, fs) = fs_with(&[], super::posix::with_disk());
    let (_, fh) = fs
        .create_with_flags(ROOT_INO, OsStr::new("lock"), 0o644, libc::O_EXCL, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"mine, first").await.unwrap();
    fs.write(fh, 0, b"M").await.unwrap(); // behind the end: the file goes to local disk
    store.inner().insert("lock", "held by another client");
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    fs.release(fh).await;
    assert_eq!(
        &store.inner().get("lock").unwrap()[..],
        b"held by another client"
    );
}

// From the review of the overdraft (a suspicion, proven here): an O_EXCL file filled by a
// whole-object copy_file_range (`cp`) is stored with one CopyObject, which carries no
// condition on its destination: it replaced an object another client made meanwhile.
#[tokio::test]
async fn an_exclusive_copy_never_replaces_another_clients_object() {
    let (store, fs) = fs_with(&[("src", "source bytes")], super::posix::with_disk());
    let source = lookup_path(&fs, "src").await.unwrap();
    let reader = fs.open(source.ino, libc::O_RDONLY).await.unwrap();
    let (_, fh) = fs
        .create_with_flags(ROOT_INO, OsStr::new("dst"), 0o644, libc::O_EXCL, ROOT)
        .await
        .unwrap();
    assert_eq!(fs.copy_range(reader, 0, fh, 0, 12).await, Ok(12));
    store.inner().insert("dst", "another client's");
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::ESTALE);
    fs.release(fh).await;
    fs.release(reader).await;
    assert_eq!(&store.inner().get("dst").unwrap()[..], b"another client's");
}

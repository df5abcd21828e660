//! Regression tests from a fresh-context review of cached attributes that describe no
//! stored version (a failed writer's size, a HEAD answer older than this mount's commit)
//! being used as the base of a change, a read's size, or a truncate's shortcut. Each failed
//! on the code as reviewed.

use super::gate::Gate;
use super::posix::{close, with_disk};
use super::*;

/// A truncating open that wrote `data`, whose close failed (S3 keeps the old object).
async fn failed_truncating_write(
    store: &FaultyStore<MemoryStore>,
    fs: &TestFs,
    ino: u64,
    data: &[u8],
) {
    let fh = fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    if !data.is_empty() {
        fs.write(fh, 0, data).await.unwrap();
    }
    store.fail(Op::Put, StoreError::Transient("injected".into()), 1);
    assert!(close(fs, fh).await.is_err());
}

/// 1. chmod / setxattr (no writer) rebuild the attributes from the failed writer's cached
///    size, give them the self-copy's real ETag and a fresh expiry: readers and the next
///    open for writing take size 3 for the stored 10-byte object.
#[tokio::test]
async fn review_metadata_change_after_a_failed_write_revives_its_size() {
    for via_xattr in [true, false] {
        let (store, fs) = fs_with(&[("f", "0123456789")], with_disk());
        // The kernel's dentry, valid for the entry TTL: chmod/setxattr reach the inode directly.
        let f = lookup_path(&fs, "f").await.unwrap();
        failed_truncating_write(&store, &fs, f.ino, b"abc").await;
        assert_eq!(&store.inner().get("f").unwrap()[..], b"0123456789");
        if via_xattr {
            fs.setxattr(f.ino, OsStr::new("user.k"), b"v", 0)
                .await
                .unwrap();
        } else {
            let chmod = SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            };
            fs.setattr(f.ino, chmod).await.unwrap();
        }
        let seen = fs.getattr(f.ino).await.unwrap().attrs.size;
        let r = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
        let read = fs.read(r, 0, 100).await.unwrap();
        fs.release(r).await;
        // `echo ! >> f`: O_APPEND writes arrive at the size the kernel was given.
        let fh = fs
            .open(f.ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
        fs.write(fh, seen, b"!").await.unwrap();
        close(&fs, fh).await.unwrap();
        assert_eq!(
            (seen, &read[..], &store.inner().get("f").unwrap()[..]),
            (10, &b"0123456789"[..], &b"0123456789!"[..]),
            "via_xattr: {via_xattr}"
        );
    }
}

/// 2. truncate(path) is skipped when the size asked for equals the cached (stale) size: after
///    a truncating open whose commit failed, `truncate -s 0 f` returns 0 and S3 keeps every
///    byte (this mount then shows an empty file, a fresh mount the old one).
#[tokio::test]
async fn review_truncate_path_to_the_failed_writers_size_is_skipped() {
    let (store, fs) = fs_with(&[("f", "0123456789")], with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    failed_truncating_write(&store, &fs, f.ino, b"").await;
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, truncate).await.unwrap();
    let fresh = Fs::new(store.clone(), with_disk());
    let other = lookup_path(&fresh, "f").await.unwrap().attrs.size;
    assert_eq!(
        (other, store.inner().get("f").unwrap().len()),
        (0, 0),
        "truncate(path, 0) acknowledged, S3 unchanged"
    );
}

/// 3. A writer that failed inside ftruncate (growing a streamed file) stays the inode's writer
///    (setattr never calls writer_failed); a rename then treats it as a streaming writer and
///    deletes the stored object, which nothing will ever replace: both names gone.
#[tokio::test]
async fn review_rename_after_a_failed_ftruncate_deletes_the_stored_object() {
    let (store, fs) = fs_with(&[("f", "0123456789")], with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    store.fail(Op::UploadPart, StoreError::Transient("injected".into()), 1);
    fs.write(fh, 0, &vec![1u8; 5 << 20]).await.unwrap(); // part 1 goes up (and fails)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let grow = SetAttr {
        size: Some(10 << 20),
        ..SetAttr::default()
    };
    let truncated = fs.setattr(f.ino, grow).await;
    assert!(truncated.is_err(), "{truncated:?}");
    let renamed = fs
        .rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await;
    let closed = close(&fs, fh).await;
    let keys = store.inner().keys();
    let survives = keys
        .iter()
        .any(|k| store.inner().get(k).as_deref() == Some(&b"0123456789"[..]));
    assert!(
        survives,
        "rename: {renamed:?}, close: {closed:?}, keys: {keys:?}"
    );
}

/// 4. A lookup (or getattr) whose HEAD was answered before this mount's own commit of the file
///    lands after it: upsert_child / refresh_file_info overwrite the committed attributes with
///    the older version's, fresh. The old object was empty, so the next open's base (size 0)
///    is not even pinned: a read shows nothing, and `echo x >> f` stores "x" over "abc".
#[tokio::test]
async fn review_a_slow_lookup_overwrites_a_commit_made_meanwhile() {
    for via_getattr in [true, false] {
        let store = Arc::new(Gate::default());
        store.inner.insert("f", "");
        let config = FsConfig {
            metadata_ttl: Duration::from_millis(100),
            ..with_disk()
        };
        let fs = Fs::new(store.clone(), config);
        let f = fs.lookup(ROOT_INO, OsStr::new("f")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await; // the TTL passes
        store.arm("head-after", "f"); // its answer waits
        let slow = async {
            if via_getattr {
                fs.getattr(f.ino).await.map(|_| ())
            } else {
                fs.lookup(ROOT_INO, OsStr::new("f")).await.map(|_| ())
            }
        };
        let writer = async {
            store.entered.notified().await;
            // `echo abc > f` in another process, while that HEAD's answer is on its way.
            let fh = fs
                .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
                .await
                .unwrap();
            fs.write(fh, 0, b"abc").await.unwrap();
            {
                fs.commit(fh).await.unwrap();
                fs.release(fh).await;
            }
            store.go.notify_one();
        };
        let (slow, ()) = tokio::join!(slow, writer);
        slow.unwrap();
        let seen = fs.getattr(f.ino).await.unwrap().attrs.size;
        let r = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
        let read = fs.read(r, 0, 100).await.unwrap();
        fs.release(r).await;
        let fh = fs
            .open(f.ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
        fs.write(fh, seen, b"x").await.unwrap();
        {
            fs.commit(fh).await.unwrap();
            fs.release(fh).await;
        }
        assert_eq!(
            (seen, &read[..], &store.inner.get("f").unwrap()[..]),
            (3, &b"abc"[..], &b"abcx"[..]),
            "via_getattr: {via_getattr}"
        );
    }
}

/// 5. (Found with the fix of 1-3, which strips a failed writer's ETag.) create(2) over a name
///    whose cached attributes have no ETag took the file for one only in this mount: when its
///    upload failed, the name S3 still holds disappeared.
#[tokio::test]
async fn review_a_failed_create_over_a_failed_writers_file_hides_the_stored_object() {
    let (store, fs) = fs_with(&[("f", "0123456789")], with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    failed_truncating_write(&store, &fs, f.ino, b"abc").await;
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    store.fail(Op::Put, StoreError::Transient("injected".into()), 1);
    assert!(close(&fs, fh).await.is_err());
    assert_eq!(
        lookup_path(&fs, "f").await.map(|e| e.attrs.size),
        Ok(10),
        "the failed create leaves the stored object showing"
    );
}

//! Archived objects (GLACIER, DEEP_ARCHIVE): reading fails with ENODATA until restored; a
//! restore is asked for and followed through the `bucketfs.restore` attribute.

use super::posix::{close, open_path, with_disk};
use super::*;

async fn restore_status(fs: &TestFs, ino: u64) -> String {
    String::from_utf8(
        fs.getxattr(ino, OsStr::new("bucketfs.restore"))
            .await
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_archived_object_reads_after_a_restore_asked_through_an_attribute() {
    let (store, fs) = fs_with(&[("cold.txt", "frozen"), ("warm.txt", "here")], with_disk());
    store.inner().archive("cold.txt", "GLACIER");
    let cold = lookup_path(&fs, "cold.txt").await.unwrap();
    // stat works; reading does not, with its own errno.
    assert_eq!(cold.attrs.size, 6);
    let fh = open_path(&fs, "cold.txt", libc::O_RDONLY).await;
    let read = fs.read(fh, 0, 100).await.unwrap_err();
    assert_eq!(read.errno(), libc::ENODATA);
    assert!(read.to_string().contains("bucketfs.restore"), "{read}");
    close(&fs, fh).await.unwrap();

    assert_eq!(restore_status(&fs, cold.ino).await, "archived");
    fs.setxattr(cold.ino, OsStr::new("bucketfs.restore"), b"2 bulk", 0)
        .await
        .unwrap();
    assert_eq!(restore_status(&fs, cold.ino).await, "in progress");
    // Asking again while it runs is fine.
    fs.setxattr(cold.ino, OsStr::new("bucketfs.restore"), b"2", 0)
        .await
        .unwrap();
    let fh = open_path(&fs, "cold.txt", libc::O_RDONLY).await;
    assert_eq!(
        fs.read(fh, 0, 100).await.unwrap_err().errno(),
        libc::ENODATA
    );
    close(&fs, fh).await.unwrap();

    store.inner().finish_restore("cold.txt");
    assert!(restore_status(&fs, cold.ino)
        .await
        .starts_with("restored until "));
    let fh = open_path(&fs, "cold.txt", libc::O_RDONLY).await;
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"frozen");
    close(&fs, fh).await.unwrap();

    // Not archived: nothing to restore.
    let warm = lookup_path(&fs, "warm.txt").await.unwrap();
    assert_eq!(restore_status(&fs, warm.ino).await, "not archived");
    let refused = fs
        .setxattr(warm.ino, OsStr::new("bucketfs.restore"), b"1", 0)
        .await;
    assert_eq!(refused.unwrap_err().errno(), libc::EINVAL);
    // Values that are not "DAYS [TIER]".
    for bad in [&b"0"[..], b"soon", b"2 fast", b"1 bulk extra", b""] {
        let refused = fs
            .setxattr(cold.ino, OsStr::new("bucketfs.restore"), bad, 0)
            .await;
        assert_eq!(refused.unwrap_err().errno(), libc::EINVAL, "{bad:?}");
    }
}

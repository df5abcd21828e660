//! copy_file_range: `cp` inside the mount copies server-side, pinned to the source version;
//! every other shape of copy is left to the kernel (EOPNOTSUPP), which reads and writes.

use super::posix::{close, open_path, with_disk};
use super::*;

async fn create(fs: &TestFs, name: &str) -> u64 {
    fs.create(ROOT_INO, OsStr::new(name), 0o600, ROOT)
        .await
        .unwrap()
        .1
}

#[tokio::test]
async fn a_whole_file_copy_is_one_copy_object_and_moves_no_bytes() {
    let data = pattern(3 << 20, 7);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", data.clone());
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let dst = create(&fs, "dst").await;
    // cp asks for more than the file holds, then once more at the end.
    let n = fs.copy_range(src, 0, dst, 0, 1 << 30).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(fs.copy_range(src, n, dst, n, 1 << 30).await.unwrap(), 0);
    assert_eq!(
        fs.getattr(lookup_path(&fs, "dst").await.unwrap().ino)
            .await
            .unwrap()
            .attrs
            .size,
        n
    );
    close(&fs, dst).await.unwrap();
    close(&fs, src).await.unwrap();
    assert_eq!(store.inner().get("dst").unwrap(), data);
    assert_eq!(store.calls(Op::Copy), 1);
    assert_eq!(store.calls(Op::Get), 0, "no byte read through the mount");
    assert_eq!(store.bytes_sent(), 0, "no byte sent");
    // The copy carries the new file's own metadata (its mode), not the source's.
    let mode = &store.inner().info("dst").unwrap().user_metadata["mode"];
    assert_eq!(mode, &(libc::S_IFREG | 0o600).to_string());
}

#[tokio::test]
async fn a_copy_in_chunks_composes_server_side_parts() {
    // The kernel hands over less than 2 GiB per call: a larger file comes in several calls,
    // each going on where the last stopped.
    let data = pattern(23 << 20, 3);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("big", data.clone());
    let src = open_path(&fs, "big", libc::O_RDONLY).await;
    let dst = create(&fs, "copy").await;
    let mut at = 0;
    loop {
        let n = fs.copy_range(src, at, dst, at, 10 << 20).await.unwrap();
        if n == 0 {
            break;
        }
        at += n;
    }
    assert_eq!(at, data.len() as u64);
    close(&fs, dst).await.unwrap();
    assert_eq!(store.inner().get("copy").unwrap(), data);
    assert_eq!(store.calls(Op::Copy), 1, "a whole copy is one CopyObject");
    assert_eq!(store.bytes_sent(), 0);
}

#[tokio::test]
async fn writes_after_a_copy_are_composed_with_the_copied_bytes() {
    let data = pattern(12 << 20, 5);
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", data.clone());
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let dst = create(&fs, "dst").await;
    assert_eq!(
        fs.copy_range(src, 0, dst, 0, u32::MAX as u64)
            .await
            .unwrap(),
        data.len() as u64
    );
    fs.write(dst, data.len() as u64, b"TAIL").await.unwrap();
    close(&fs, dst).await.unwrap();
    let mut expected = data.clone();
    expected.extend_from_slice(b"TAIL");
    assert_eq!(store.inner().get("dst").unwrap(), expected);
    assert!(
        store.calls(Op::UploadPartCopy) >= 1,
        "the copied bytes stay server-side"
    );
    assert!(store.bytes_sent() < 6 << 20, "sent {}", store.bytes_sent());
}

#[tokio::test]
async fn a_source_changed_since_its_open_fails_the_close_and_leaves_no_blend() {
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", pattern(1 << 20, 1));
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let dst = create(&fs, "dst").await;
    fs.copy_range(src, 0, dst, 0, 1 << 30).await.unwrap();
    store.inner().insert("src", pattern(1 << 20, 2));
    assert_eq!(close(&fs, dst).await.unwrap_err().errno(), libc::ESTALE);
    assert!(store.inner().get("dst").is_none());
}

#[tokio::test]
async fn other_copies_are_left_to_the_kernel() {
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", pattern(1 << 20, 1));
    store.inner().insert("other", pattern(1 << 20, 9));
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    let other = open_path(&fs, "other", libc::O_RDONLY).await;
    let not_supported = |r: FsResult<u64>| r.unwrap_err().errno() == libc::EOPNOTSUPP;
    // Different offsets.
    let dst = create(&fs, "a").await;
    assert!(not_supported(fs.copy_range(src, 0, dst, 10, 100).await));
    // Into a file with bytes written already.
    fs.write(dst, 0, b"x").await.unwrap();
    assert!(not_supported(fs.copy_range(src, 0, dst, 0, 100).await));
    close(&fs, dst).await.unwrap();
    // Into the middle of an existing file (opened without truncation).
    let existing = open_path(&fs, "other", libc::O_WRONLY).await;
    assert!(not_supported(fs.copy_range(src, 0, existing, 0, 100).await));
    close(&fs, existing).await.unwrap();
    // Continuing from a different source than the copy started with.
    let dst = create(&fs, "b").await;
    assert_eq!(fs.copy_range(src, 0, dst, 0, 4096).await.unwrap(), 4096);
    assert!(not_supported(
        fs.copy_range(other, 4096, dst, 4096, 4096).await
    ));
    // Into a read-only handle.
    assert_eq!(
        fs.copy_range(src, 0, other, 0, 10)
            .await
            .unwrap_err()
            .errno(),
        libc::EBADF
    );
    // A prefix copy is exactly that prefix.
    close(&fs, dst).await.unwrap();
    assert_eq!(store.inner().get("b").unwrap(), pattern(1 << 20, 1)[..4096]);
}

#[tokio::test]
async fn a_copy_into_a_file_replaced_or_unlinked_meanwhile_stores_nothing_there() {
    let (store, fs) = fs_with(&[], with_disk());
    store.inner().insert("src", pattern(1 << 20, 1));
    store
        .inner()
        .insert("other", b"the file renamed over dst".to_vec());
    let src = open_path(&fs, "src", libc::O_RDONLY).await;
    // dst is being written when another file is renamed over it: its writes are dropped.
    let dst = create(&fs, "dst").await;
    fs.rename(
        ROOT_INO,
        OsStr::new("other"),
        ROOT_INO,
        OsStr::new("dst"),
        false,
    )
    .await
    .unwrap();
    let copied = fs.copy_range(src, 0, dst, 0, 1 << 30).await;
    assert_eq!(copied.unwrap_err().errno(), libc::EOPNOTSUPP);
    let _ = close(&fs, dst).await;
    assert_eq!(
        store.inner().get("dst").unwrap(),
        b"the file renamed over dst".to_vec(),
        "the displaced writer's copy replaced the renamed file"
    );
    // An unlinked file keeps its bytes local; a copy into it stores nothing either.
    let gone = create(&fs, "gone").await;
    fs.unlink(ROOT_INO, OsStr::new("gone")).await.unwrap();
    let _ = fs.copy_range(src, 0, gone, 0, 1 << 30).await;
    let _ = close(&fs, gone).await;
    assert!(store.inner().get("gone").is_none());
}

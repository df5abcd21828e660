//! Filesystem semantics against the in-memory store.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::namespace::{Caller, SetAttr};
use super::*;
use crate::store::faulty::{FaultyStore, Op};
use crate::store::memory::MemoryStore;

type TestFs = Fs<FaultyStore<MemoryStore>>;

fn fs_with(keys: &[(&str, &str)], config: FsConfig) -> (Arc<FaultyStore<MemoryStore>>, TestFs) {
    let store = Arc::new(FaultyStore::new(MemoryStore::with_page_size(3)));
    for (key, body) in keys {
        store.inner().insert(key, body.to_string());
    }
    let fs = Fs::new(store.clone(), config);
    (store, fs)
}

fn fs_of(keys: &[(&str, &str)]) -> (Arc<FaultyStore<MemoryStore>>, TestFs) {
    fs_with(keys, FsConfig::default())
}

async fn lookup_path(fs: &TestFs, path: &str) -> FsResult<Entry> {
    let mut entry = fs.getattr(ROOT_INO).await?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        entry = fs.lookup(entry.ino, OsStr::new(part)).await?;
    }
    Ok(entry)
}

async fn names_in(fs: &TestFs, path: &str, plus: bool) -> Vec<(String, Kind)> {
    let dir = lookup_path(fs, path).await.unwrap();
    let fh = fs.opendir(dir.ino).unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let items = fs.readdir(fh, offset, 2, plus).await.unwrap();
        if items.is_empty() {
            break;
        }
        for item in items {
            offset = item.offset;
            out.push((item.name, item.entry.attrs.kind));
        }
    }
    fs.releasedir(fh);
    out
}

const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// Resolves the parent directory of `path` and the last component.
async fn parent_of<'a>(fs: &TestFs, path: &'a str) -> FsResult<(u64, &'a OsStr)> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    Ok((lookup_path(fs, dir).await?.ino, OsStr::new(name)))
}

/// create + write in chunks + close, as `cp` does.
async fn write_file(fs: &TestFs, path: &str, data: &[u8]) -> FsResult<()> {
    let (parent, name) = parent_of(fs, path).await?;
    let (_, fh) = fs.create(parent, name, 0o644, ROOT).await?;
    let mut offset = 0;
    for chunk in data.chunks(4096) {
        fs.write(fh, offset, chunk).await?;
        offset += chunk.len() as u64;
    }
    let committed = fs.commit(fh).await;
    fs.release(fh).await;
    committed
}

async fn read_all(fs: &TestFs, path: &str) -> FsResult<Vec<u8>> {
    let entry = lookup_path(fs, path).await?;
    let fh = fs.open(entry.ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 7).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await;
    Ok(out)
}

#[tokio::test]
async fn lookup_finds_files_implicit_and_marker_directories() {
    let (_, fs) = fs_of(&[("f.txt", "hello"), ("implicit/x", "1"), ("marked/", "")]);
    let f = lookup_path(&fs, "f.txt").await.unwrap();
    assert_eq!((f.attrs.kind, f.attrs.size), (Kind::File, 5));
    assert_eq!(
        lookup_path(&fs, "implicit").await.unwrap().attrs.kind,
        Kind::Dir
    );
    assert_eq!(
        lookup_path(&fs, "marked").await.unwrap().attrs.kind,
        Kind::Dir
    );
    assert_eq!(lookup_path(&fs, "missing").await, Err(FsError::NotFound));
    assert_eq!(lookup_path(&fs, "f.txt/x").await, Err(FsError::NotDir));
}

#[tokio::test]
async fn directory_wins_a_clash_in_lookup_and_readdir() {
    let (_, fs) = fs_of(&[("a", "file"), ("a/inner", "x"), ("a.txt", "y")]);
    assert_eq!(lookup_path(&fs, "a").await.unwrap().attrs.kind, Kind::Dir);
    assert_eq!(
        names_in(&fs, "", true).await,
        vec![
            (".".into(), Kind::Dir),
            ("..".into(), Kind::Dir),
            ("a".into(), Kind::Dir),
            ("a.txt".into(), Kind::File)
        ]
    );
}

#[tokio::test]
async fn readdir_lists_every_entry_once_and_hides_bad_keys() {
    let keys: Vec<(String, &str)> = (0..20).map(|i| (format!("d/{i:02}"), "x")).collect();
    let mut all: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    all.extend([
        ("d/", ""),
        ("d//evil", "x"),
        ("d/../up", "x"),
        ("d/sub/y", "1"),
    ]);
    let (_, fs) = fs_of(&all);
    for plus in [false, true] {
        let names = names_in(&fs, "d", plus).await;
        assert_eq!(names.len(), 2 + 20 + 1, "{names:?}");
        assert!(names.contains(&("sub".into(), Kind::Dir)));
        assert!(!names
            .iter()
            .any(|(n, _)| n.is_empty() || n == "evil" || n == "up"));
    }
}

#[tokio::test]
async fn readdirplus_entries_carry_references_until_forgotten() {
    let (_, fs) = fs_of(&[("a", "1"), ("b", "2")]);
    let before = fs.inode_count();
    let fh = fs.opendir(ROOT_INO).unwrap();
    let items = fs.readdir(fh, 0, 100, true).await.unwrap();
    assert_eq!(fs.inode_count(), before + 2);
    for item in items.iter().filter(|i| i.counted) {
        fs.forget(item.entry.ino, 1);
    }
    assert_eq!(fs.inode_count(), before);
}

#[tokio::test]
async fn metadata_is_cached_for_the_ttl_and_negatives_too() {
    let config = FsConfig {
        metadata_ttl: Duration::from_millis(200),
        ..FsConfig::default()
    };
    let (store, fs) = fs_with(&[("f", "abc")], config);
    lookup_path(&fs, "f").await.unwrap();
    assert_eq!(lookup_path(&fs, "nope").await, Err(FsError::NotFound));
    let heads = store.calls(Op::Head);
    for _ in 0..5 {
        lookup_path(&fs, "f").await.unwrap();
        assert_eq!(lookup_path(&fs, "nope").await, Err(FsError::NotFound));
    }
    assert_eq!(store.calls(Op::Head), heads, "served from the caches");
    // Changes by another client show after the TTL.
    store.inner().insert("nope", "now here");
    store.inner().insert("f", "longer now");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(lookup_path(&fs, "nope").await.unwrap().attrs.size, 8);
    let f = lookup_path(&fs, "f").await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().attrs.size, 10);
    assert_eq!(read_all(&fs, "f").await.unwrap(), b"longer now");
}

#[tokio::test]
async fn ttl_zero_always_asks_the_store() {
    let config = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..FsConfig::default()
    };
    let (store, fs) = fs_with(&[("f", "abc")], config);
    let f = lookup_path(&fs, "f").await.unwrap();
    let heads = store.calls(Op::Head);
    fs.getattr(f.ino).await.unwrap();
    fs.getattr(f.ino).await.unwrap();
    assert_eq!(store.calls(Op::Head), heads + 2);
    store.inner().delete("f").await.unwrap();
    assert_eq!(fs.getattr(f.ino).await, Err(FsError::NotFound));
    assert_eq!(lookup_path(&fs, "f").await, Err(FsError::NotFound));
}

#[tokio::test]
async fn files_read_back_exactly() {
    let body: String = (0..5000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (_, fs) = fs_of(&[("dir/big", body.as_str()), ("empty", "")]);
    assert_eq!(read_all(&fs, "dir/big").await.unwrap(), body.as_bytes());
    assert_eq!(read_all(&fs, "empty").await.unwrap(), b"");
}

#[tokio::test]
async fn a_read_only_mount_refuses_every_change() {
    let ro = FsConfig {
        read_only: true,
        ..FsConfig::default()
    };
    let (store, fs) = fs_with(&[("f", "abc"), ("d/x", "1")], ro);
    let f = lookup_path(&fs, "f").await.unwrap();
    assert_eq!(
        fs.open(f.ino, libc::O_WRONLY).await.unwrap_err().errno(),
        libc::EROFS
    );
    let caller = Caller { uid: 0, gid: 0 };
    let name = OsStr::new("new");
    assert_eq!(
        fs.create(ROOT_INO, name, 0o644, caller)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.mkdir(ROOT_INO, name, 0o755, caller)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.unlink(ROOT_INO, OsStr::new("f"))
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, name, false)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(f.ino, chmod).await.unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(store.inner().keys(), ["d/x", "f"]);
}

#[tokio::test]
async fn a_prefix_mount_sees_only_its_prefix() {
    let config = FsConfig {
        prefix: "team/data/".into(),
        ..FsConfig::default()
    };
    let (_, fs) = fs_with(
        &[
            ("team/data/a", "1"),
            ("team/data/s/b", "2"),
            ("team/other", "3"),
            ("top", "4"),
        ],
        config,
    );
    assert_eq!(
        names_in(&fs, "", false).await,
        vec![
            (".".into(), Kind::Dir),
            ("..".into(), Kind::Dir),
            ("a".into(), Kind::File),
            ("s".into(), Kind::Dir)
        ]
    );
    assert_eq!(lookup_path(&fs, "top").await, Err(FsError::NotFound));
    assert_eq!(read_all(&fs, "s/b").await.unwrap(), b"2");
}

#[tokio::test]
async fn store_errors_reach_the_caller_with_their_kind() {
    let (store, fs) = fs_of(&[("f", "abc")]);
    store.fail(Op::Head, StoreError::AccessDenied("denied".into()), 1);
    assert_eq!(
        lookup_path(&fs, "f").await.unwrap_err().errno(),
        libc::EACCES
    );
    store.fail(Op::List, StoreError::Transient("reset".into()), 1);
    assert_eq!(lookup_path(&fs, "g").await.unwrap_err().errno(), libc::EIO);
    let fh = fs.opendir(ROOT_INO).unwrap();
    store.fail(Op::List, StoreError::Throttled("slow down".into()), 1);
    assert_eq!(
        fs.readdir(fh, 0, 10, false).await.unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(
        fs.readdir(fh, 0, 10, false).await.unwrap().len(),
        3,
        "works once the store does"
    );
}

#[tokio::test]
async fn invalid_names_are_rejected_with_their_errno() {
    let (_, fs) = fs_of(&[]);
    let long = "n".repeat(256);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new(&long))
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
    let deep = format!("{}/", "d".repeat(1020));
    let config = FsConfig {
        prefix: deep,
        ..FsConfig::default()
    };
    let (_, fs) = fs_with(&[], config);
    assert_eq!(
        fs.lookup(ROOT_INO, OsStr::new("abcdef"))
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
}

#[tokio::test]
async fn after_a_stale_read_the_next_open_sees_the_new_object() {
    let (store, fs) = fs_of(&[("f", "old contents")]);
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(f.ino, libc::O_RDONLY).await.unwrap();
    store.inner().insert("f", "new contents!");
    assert_eq!(fs.read(fh, 0, 100).await, Err(FsError::Stale));
    fs.release(fh).await;
    // Well within the TTL, yet the reopen asks the store again.
    assert_eq!(read_all(&fs, "f").await.unwrap(), b"new contents!");
}

#[tokio::test]
async fn written_files_appear_at_close_with_metadata() {
    let (store, fs) = fs_of(&[]);
    let (parent, name) = parent_of(&fs, "notes.txt").await.unwrap();
    let caller = Caller {
        uid: 1000,
        gid: 100,
    };
    let (entry, fh) = fs.create(parent, name, 0o640, caller).await.unwrap();
    fs.write(fh, 0, b"hello ").await.unwrap();
    fs.write(fh, 6, b"world").await.unwrap();
    assert!(
        store.inner().get("notes.txt").is_none(),
        "not in S3 before close"
    );
    // Visible in the mount at once, with the size written so far.
    assert_eq!(fs.getattr(entry.ino).await.unwrap().attrs.size, 11);
    assert!(names_in(&fs, "", true)
        .await
        .contains(&("notes.txt".into(), Kind::File)));
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("notes.txt").unwrap()[..], b"hello world");
    let info = store.inner().info("notes.txt").unwrap();
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        info.user_metadata["mode"],
        (libc::S_IFREG | 0o640).to_string()
    );
    assert_eq!(info.user_metadata["uid"], "1000");
    assert_eq!(info.user_metadata["gid"], "100");
    assert_eq!(read_all(&fs, "notes.txt").await.unwrap(), b"hello world");
}

#[tokio::test]
async fn empty_files_from_create_then_close_exist() {
    let (store, fs) = fs_of(&[]);
    write_file(&fs, "empty", b"").await.unwrap();
    assert_eq!(store.inner().get("empty").map(|b| b.len()), Some(0));
}

#[tokio::test]
async fn overwrite_with_truncate_replaces_the_object() {
    let (store, fs) = fs_of(&[("f", "old old old")]);
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("f").unwrap()[..], b"new");
    // Appending to an existing object is refused, and changes nothing.
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    assert_eq!(
        fs.write(fh, 3, b"more").await.unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(&store.inner().get("f").unwrap()[..], b"new");
    // Without the disk cache (`--max-cache-size 0`), changes in place are refused;
    // truncate(path, 0) empties a file.
    let grow = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(f.ino, grow).await.unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    let empty = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, empty).await.unwrap();
    assert_eq!(store.inner().get("f").unwrap().len(), 0);
}

#[tokio::test]
async fn reading_a_file_being_written_is_a_clear_error() {
    let (_, fs) = fs_of(&[("f", "committed")]);
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.write(fh, 0, b"pending").await.unwrap();
    assert_eq!(
        fs.open(f.ino, libc::O_RDONLY).await.unwrap_err().errno(),
        libc::EBUSY
    );
    assert_eq!(
        fs.open(f.ino, libc::O_WRONLY).await.unwrap_err().errno(),
        libc::EBUSY
    );
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(read_all(&fs, "f").await.unwrap(), b"pending");
}

#[tokio::test]
async fn a_failed_upload_fails_close_and_leaves_nothing() {
    let (store, fs) = fs_of(&[]);
    store.fail(Op::Put, StoreError::Transient("503 Slow Down".into()), 1);
    let err = write_file(&fs, "lost", b"data").await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(store.inner().get("lost").is_none());
    assert_eq!(store.inner().open_uploads(), 0);
}

#[tokio::test]
async fn mkdir_rmdir_and_unlink() {
    let (store, fs) = fs_of(&[]);
    let caller = ROOT;
    fs.mkdir(ROOT_INO, OsStr::new("d"), 0o750, caller)
        .await
        .unwrap();
    assert_eq!(store.inner().keys(), ["d/"]);
    assert_eq!(
        fs.mkdir(ROOT_INO, OsStr::new("d"), 0o750, caller)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    write_file(&fs, "d/f", b"x").await.unwrap();
    let d = lookup_path(&fs, "d").await.unwrap();
    assert_eq!(
        fs.rmdir(ROOT_INO, OsStr::new("d"))
            .await
            .unwrap_err()
            .errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        fs.unlink(ROOT_INO, OsStr::new("d"))
            .await
            .unwrap_err()
            .errno(),
        libc::EISDIR
    );
    fs.unlink(d.ino, OsStr::new("f")).await.unwrap();
    assert_eq!(lookup_path(&fs, "d/f").await, Err(FsError::NotFound));
    fs.rmdir(ROOT_INO, OsStr::new("d")).await.unwrap();
    assert!(store.inner().keys().is_empty());
    assert_eq!(lookup_path(&fs, "d").await, Err(FsError::NotFound));
    // An implicit directory is not empty while keys exist below it.
    store.inner().insert("imp/deep/x", "1");
    assert_eq!(
        fs.rmdir(ROOT_INO, OsStr::new("imp"))
            .await
            .unwrap_err()
            .errno(),
        libc::ENOTEMPTY
    );
}

#[tokio::test]
async fn renames_move_files_and_whole_directories() {
    let (store, fs) = fs_of(&[
        ("src/a", "A"),
        ("src/sub/b", "B"),
        ("src/", ""),
        ("other", "O"),
    ]);
    fs.rename(
        ROOT_INO,
        OsStr::new("other"),
        ROOT_INO,
        OsStr::new("moved"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(read_all(&fs, "moved").await.unwrap(), b"O");
    assert_eq!(lookup_path(&fs, "other").await, Err(FsError::NotFound));
    let src = lookup_path(&fs, "src").await.unwrap();
    assert_eq!(
        fs.rename(
            ROOT_INO,
            OsStr::new("src"),
            src.ino,
            OsStr::new("inside"),
            false
        )
        .await
        .unwrap_err()
        .errno(),
        libc::EINVAL,
        "a directory cannot move into itself"
    );
    let a = lookup_path(&fs, "src/a").await.unwrap();
    fs.rename(
        ROOT_INO,
        OsStr::new("src"),
        ROOT_INO,
        OsStr::new("dst"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        store.inner().keys(),
        ["dst/", "dst/a", "dst/sub/b", "moved"]
    );
    assert_eq!(read_all(&fs, "dst/sub/b").await.unwrap(), b"B");
    // An inode the kernel already holds follows the move.
    let fh = fs.open(a.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 10).await.unwrap()[..], b"A");
    // Replacing an existing file; and RENAME_NOREPLACE.
    fs.rename(
        ROOT_INO,
        OsStr::new("moved"),
        lookup_path(&fs, "dst").await.unwrap().ino,
        OsStr::new("a"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(read_all(&fs, "dst/a").await.unwrap(), b"O");
    write_file(&fs, "x", b"x").await.unwrap();
    let dst = lookup_path(&fs, "dst").await.unwrap();
    assert_eq!(
        fs.rename(ROOT_INO, OsStr::new("x"), dst.ino, OsStr::new("a"), true)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
}

#[tokio::test]
async fn chmod_chown_and_utimes_persist_as_metadata() {
    let (store, fs) = fs_of(&[]);
    write_file(&fs, "f.bin", b"data").await.unwrap();
    let f = lookup_path(&fs, "f.bin").await.unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let change = SetAttr {
        mode: Some(0o600),
        uid: Some(42),
        gid: Some(43),
        mtime: Some(mtime),
        ..SetAttr::default()
    };
    let entry = fs.setattr(f.ino, change).await.unwrap();
    assert_eq!(
        (entry.attrs.perm, entry.attrs.uid, entry.attrs.gid),
        (0o600, 42, 43)
    );
    let info = store.inner().info("f.bin").unwrap();
    assert_eq!(
        info.user_metadata["mode"],
        (libc::S_IFREG | 0o600).to_string()
    );
    assert_eq!(info.user_metadata["mtime"], "1600000000");
    assert_eq!(
        &store.inner().get("f.bin").unwrap()[..],
        b"data",
        "content kept"
    );
    // A fresh mount reads them back.
    let fresh = Fs::new(store.clone(), FsConfig::default());
    let again = lookup_path(&fresh, "f.bin").await.unwrap();
    assert_eq!(
        (
            again.attrs.perm,
            again.attrs.uid,
            again.attrs.gid,
            again.attrs.mtime
        ),
        (0o600, 42, 43, mtime)
    );
}

#[tokio::test]
async fn unlinking_a_file_being_written_uploads_nothing() {
    let (store, fs) = fs_of(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("tmp"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"scratch").await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.inner().keys().is_empty());
}

#[tokio::test]
async fn renaming_a_file_being_written_uploads_it_under_the_new_name() {
    let (store, fs) = fs_of(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new(".tmp123"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"saved").await.unwrap();
    fs.rename(
        ROOT_INO,
        OsStr::new(".tmp123"),
        ROOT_INO,
        OsStr::new("doc.txt"),
        false,
    )
    .await
    .unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().keys(), ["doc.txt"]);
    assert_eq!(read_all(&fs, "doc.txt").await.unwrap(), b"saved");
}

#[tokio::test]
async fn names_and_keys_too_long_are_refused_on_create() {
    let (_, fs) = fs_of(&[]);
    let long = "n".repeat(256);
    assert_eq!(
        fs.create(ROOT_INO, OsStr::new(&long), 0o644, ROOT)
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
    let config = FsConfig {
        prefix: format!("{}/", "p".repeat(1000)),
        ..FsConfig::default()
    };
    let (_, fs) = fs_with(&[], config);
    let name = "m".repeat(40);
    assert_eq!(
        fs.create(ROOT_INO, OsStr::new(&name), 0o644, ROOT)
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        fs.mkdir(ROOT_INO, OsStr::new(&name), 0o755, ROOT)
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
}

#[tokio::test]
async fn directory_rename_moves_every_key_across_listing_pages() {
    // Page size 2: "a/", "a/b/" on the first page, "a/b/x/" on the next.
    let store = Arc::new(FaultyStore::new(MemoryStore::with_page_size(2)));
    let fs = Fs::new(store.clone(), FsConfig::default());
    for dir in ["a", "a/b", "a/b/x", "c"] {
        let (parent, name) = parent_of(&fs, dir).await.unwrap();
        fs.mkdir(parent, name, 0o755, ROOT).await.unwrap();
    }
    let c = lookup_path(&fs, "c").await.unwrap();
    fs.rename(ROOT_INO, OsStr::new("a"), c.ino, OsStr::new("x"), false)
        .await
        .unwrap();
    assert_eq!(store.inner().keys(), ["c/", "c/x/", "c/x/b/", "c/x/b/x/"]);
}

/// A filesystem with 5 MiB parts over a store that enforces S3's part rules.
fn multipart_fs(keys: &[(&str, &[u8])]) -> (Arc<FaultyStore<MemoryStore>>, TestFs) {
    let store = Arc::new(FaultyStore::new(
        MemoryStore::with_page_size(3).with_min_part_size(write::MIN_PART_SIZE as usize),
    ));
    for (key, body) in keys {
        store.inner().insert(key, body.to_vec());
    }
    let config = FsConfig {
        write_part_size: write::MIN_PART_SIZE,
        ..FsConfig::default()
    };
    (store.clone(), Fs::new(store, config))
}

/// A small deterministic generator (xorshift) for the randomized class tests: each case
/// replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn write_at(fs: &TestFs, fh: u64, offset: u64, data: &[u8]) {
    let mut at = offset;
    for chunk in data.chunks(128 << 10) {
        fs.write(fh, at, chunk).await.unwrap();
        at += chunk.len() as u64;
    }
}

#[tokio::test]
async fn a_file_renamed_mid_multipart_upload_keeps_every_byte_under_its_new_name() {
    let (store, fs) = multipart_fs(&[("w2.bin", b"replaced")]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("w1.bin"), 0o644, ROOT)
        .await
        .unwrap();
    let first = pattern(20 << 20, 1);
    write_at(&fs, fh, 0, &first).await;
    assert_eq!(store.inner().open_uploads(), 1, "a multipart upload runs");
    fs.rename(
        ROOT_INO,
        OsStr::new("w1.bin"),
        ROOT_INO,
        OsStr::new("w2.bin"),
        false,
    )
    .await
    .unwrap();
    assert!(
        store.inner().get("w1.bin").is_none(),
        "the old name is gone at once"
    );
    let second = pattern(1 << 20, 2);
    write_at(&fs, fh, first.len() as u64, &second).await;
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    let mut expected = first;
    expected.extend_from_slice(&second);
    assert_eq!(store.inner().get("w2.bin").unwrap(), expected);
    assert_eq!(store.inner().keys(), ["w2.bin"]);
    assert_eq!(store.inner().open_uploads(), 0);
    // Renamed twice, the second time with the upload re-homed already.
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    let data = pattern(12 << 20, 3);
    write_at(&fs, fh, 0, &data[..6 << 20]).await;
    fs.rename(ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("b"), false)
        .await
        .unwrap();
    write_at(&fs, fh, 6 << 20, &data[6 << 20..11 << 20]).await;
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("c"), false)
        .await
        .unwrap();
    write_at(&fs, fh, 11 << 20, &data[11 << 20..]).await;
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().get("c").unwrap(), data);
    assert_eq!(store.inner().keys(), ["c", "w2.bin"]);
    assert_eq!(store.inner().open_uploads(), 0);
}

#[tokio::test]
async fn an_overwrite_leaves_the_old_object_until_it_completes() {
    let old = pattern(3 << 20, 9);
    let (store, fs) = multipart_fs(&[("big", &old)]);
    let f = lookup_path(&fs, "big").await.unwrap();
    // As the kernel does for O_TRUNC: open without it, then SETATTR size 0.
    let fh = fs.open(f.ino, libc::O_WRONLY).await.unwrap();
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, truncate.clone()).await.unwrap();
    write_at(&fs, fh, 0, &pattern(12 << 20, 4)).await;
    assert_eq!(
        store.inner().get("big").unwrap(),
        old,
        "untouched while writing"
    );
    // The writer fails: the old object survives, and the name shows it again.
    store.fail(
        Op::CompleteMultipart,
        StoreError::Transient("500".into()),
        1,
    );
    assert_eq!(fs.commit(fh).await.unwrap_err().errno(), libc::EIO);
    fs.release(fh).await;
    assert_eq!(store.inner().get("big").unwrap(), old);
    assert_eq!(store.inner().open_uploads(), 0);
    assert_eq!(read_all(&fs, "big").await.unwrap(), old);
    // Abandoned (the handle never closed, as at a crash): still the old object.
    let fh = fs.open(f.ino, libc::O_WRONLY).await.unwrap();
    fs.setattr(f.ino, truncate).await.unwrap();
    write_at(&fs, fh, 0, b"partial").await;
    drop(fs);
    assert_eq!(store.inner().get("big").unwrap(), old);
}

/// Seen in the stress test under load: a writer that failed left its local size in the
/// inode's attributes, next to the stored object's ETag; a listing took them for that
/// version's, so the next open for writing based its change on the failed writer's size and
/// an acknowledged close stored zeros over the object's bytes.
#[tokio::test]
async fn a_failed_writers_local_size_never_passes_for_the_objects() {
    let (store, fs) = fs_with(&[("f", "0123456789")], posix::with_disk());
    let f = lookup_path(&fs, "f").await.unwrap();
    let failed = posix::open_path(&fs, "f", libc::O_WRONLY).await;
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, truncate).await.unwrap();
    fs.write(failed, 0, b"abc").await.unwrap();
    store.fail(Op::Put, StoreError::Transient("injected".into()), 1);
    assert!(fs.commit(failed).await.is_err());
    // A listing of the directory (readdirplus), then a lookup: what S3 holds.
    assert!(names_in(&fs, "", true).await.iter().any(|(n, _)| n == "f"));
    let seen = lookup_path(&fs, "f").await.unwrap().attrs.size;
    // A change in place starts from the stored object.
    let fh = posix::open_path(&fs, "f", libc::O_WRONLY).await;
    fs.write(fh, 12, b"!").await.unwrap();
    posix::close(&fs, fh).await.unwrap();
    assert!(posix::close(&fs, failed).await.is_err());
    assert_eq!(
        (seen, &store.inner().get("f").unwrap()[..]),
        (10, &b"0123456789\0\0!"[..])
    );
}

#[tokio::test]
async fn a_failed_close_of_a_new_file_leaves_no_name_behind() {
    let (store, fs) = fs_of(&[("kept", "x")]);
    store.fail(Op::Put, StoreError::Transient("503".into()), 1);
    assert_eq!(
        write_file(&fs, "lost", b"data").await.unwrap_err().errno(),
        libc::EIO
    );
    let names: Vec<String> = names_in(&fs, "", false)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, [".", "..", "kept"]);
    assert_eq!(
        lookup_path(&fs, "lost").await.unwrap_err().errno(),
        libc::ENOENT
    );
    // The name is free for a new attempt, which works.
    write_file(&fs, "lost", b"again").await.unwrap();
    assert_eq!(read_all(&fs, "lost").await.unwrap(), b"again");
}

#[tokio::test]
async fn only_one_of_two_concurrent_opens_for_writing_becomes_the_writer() {
    let (_, fs) = fs_of(&[("f", "old")]);
    let fs = Arc::new(fs);
    let f = lookup_path(&fs, "f").await.unwrap();
    for _ in 0..50 {
        let (a, b) = tokio::join!(
            fs.open(f.ino, libc::O_WRONLY | libc::O_TRUNC),
            fs.open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        );
        let winners: Vec<u64> = [a.as_ref().ok(), b.as_ref().ok()]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        assert_eq!(winners.len(), 1, "{a:?} {b:?}");
        let loser = if a.is_err() { a } else { b };
        assert_eq!(loser.unwrap_err().errno(), libc::EBUSY);
        fs.commit(winners[0]).await.unwrap();
        fs.release(winners[0]).await;
    }
}

#[tokio::test]
async fn a_rename_over_a_file_open_for_writing_stops_that_writer() {
    let (store, fs) = multipart_fs(&[("src", b"source")]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("dst"), 0o644, ROOT)
        .await
        .unwrap();
    write_at(&fs, fh, 0, &pattern(6 << 20, 5)).await;
    fs.rename(
        ROOT_INO,
        OsStr::new("src"),
        ROOT_INO,
        OsStr::new("dst"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(store.inner().open_uploads(), 0, "its upload was aborted");
    // It can go on writing, but nothing it writes lands anywhere.
    write_at(&fs, fh, 6 << 20, b"more").await;
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().keys(), ["dst"]);
    assert_eq!(&store.inner().get("dst").unwrap()[..], b"source");
    assert_eq!(read_all(&fs, "dst").await.unwrap(), b"source");
}

#[tokio::test]
async fn unlinking_a_file_mid_multipart_upload_aborts_it_at_once() {
    let (store, fs) = multipart_fs(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("tmp"), 0o644, ROOT)
        .await
        .unwrap();
    write_at(&fs, fh, 0, &pattern(11 << 20, 6)).await;
    fs.unlink(ROOT_INO, OsStr::new("tmp")).await.unwrap();
    assert_eq!(store.inner().open_uploads(), 0);
    write_at(&fs, fh, 11 << 20, b"tail").await;
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.inner().keys().is_empty());
    assert_eq!(store.calls(Op::CompleteMultipart), 0);
}

#[tokio::test]
async fn the_journal_lists_uploads_only_while_they_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(journal::UploadJournal::create(dir.path()).unwrap());
    let (store, fs) = multipart_fs(&[]);
    let fs = fs.with_journal(journal.clone());
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("big"), 0o644, ROOT)
        .await
        .unwrap();
    write_at(&fs, fh, 0, &pattern(6 << 20, 7)).await;
    assert_eq!(journal.in_flight(), 1);
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(journal.in_flight(), 0);
    // A failed upload is aborted and leaves the journal too.
    store.fail(Op::UploadPart, StoreError::Transient("reset".into()), 1);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("bad"), 0o644, ROOT)
        .await
        .unwrap();
    let mut offset = 0;
    for chunk in pattern(12 << 20, 8).chunks(1 << 20) {
        if fs.write(fh, offset, chunk).await.is_err() {
            break;
        }
        offset += chunk.len() as u64;
    }
    assert!(fs.commit(fh).await.is_err());
    fs.release(fh).await;
    assert_eq!(journal.in_flight(), 0);
    assert_eq!(store.inner().open_uploads(), 0);
}

#[tokio::test]
async fn closing_a_duplicate_right_after_a_truncating_open_keeps_the_old_object() {
    let (store, fs) = fs_of(&[("f", "old content")]);
    let f = lookup_path(&fs, "f").await.unwrap();
    let fh = fs.open(f.ino, libc::O_WRONLY).await.unwrap();
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, truncate).await.unwrap();
    // dd closes a duplicate of its output right after opening it.
    assert!(fs.is_empty_replacement(fh));
    fs.flush(fh, true).await.unwrap();
    assert_eq!(&store.inner().get("f").unwrap()[..], b"old content");
    fs.write(fh, 0, b"new").await.unwrap();
    assert!(!fs.is_empty_replacement(fh));
    fs.flush(fh, true).await.unwrap();
    assert_eq!(&store.inner().get("f").unwrap()[..], b"new");
    fs.release(fh).await;
    // `: > f` or `truncate -s 0 f`: the only descriptor closes, and the file is empty in S3.
    let fh = fs
        .open(f.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    fs.flush(fh, false).await.unwrap();
    assert!(store.inner().get("f").unwrap().is_empty());
    fs.release(fh).await;
}

#[tokio::test]
async fn a_truncate_does_not_bring_an_unlinked_writer_back() {
    let (store, fs) = fs_of(&[]);
    let (entry, fh) = fs
        .create(ROOT_INO, OsStr::new("gone"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    fs.unlink(ROOT_INO, OsStr::new("gone")).await.unwrap();
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(entry.ino, truncate).await.unwrap();
    fs.write(fh, 0, b"resurrected?").await.unwrap();
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert!(store.inner().keys().is_empty());
}

#[tokio::test]
async fn a_name_renamed_over_an_open_committed_file_can_be_created_again() {
    let (_, fs) = fs_of(&[]);
    let (_, a) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(a, 0, b"first").await.unwrap();
    fs.commit(a).await.unwrap();
    let (_, b) = fs
        .create(ROOT_INO, OsStr::new("b"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(b, 0, b"second").await.unwrap();
    fs.flush(b, false).await.unwrap();
    fs.release(b).await;
    fs.rename(ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("a"), false)
        .await
        .unwrap();
    let (_, c) = fs
        .create(ROOT_INO, OsStr::new("a"), 0o644, ROOT)
        .await
        .unwrap();
    fs.release(c).await;
    fs.release(a).await;
}

#[tokio::test]
async fn a_closed_committed_writer_hands_the_file_to_a_new_open() {
    let (store, fs) = fs_of(&[]);
    let (entry, first) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(first, 0, b"one").await.unwrap();
    // Not closed yet: a second writer is refused.
    assert_eq!(
        fs.open(entry.ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .unwrap_err()
            .errno(),
        libc::EBUSY
    );
    // Closed (its release not arrived yet): the next open takes over.
    fs.flush(first, false).await.unwrap();
    let second = fs
        .open(entry.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    assert_eq!(
        fs.write(first, 3, b"late").await.unwrap_err().errno(),
        libc::EBUSY
    );
    fs.write(second, 0, b"two").await.unwrap();
    fs.release(first).await; // the late release changes nothing
    fs.flush(second, false).await.unwrap();
    fs.release(second).await;
    assert_eq!(&store.inner().get("f").unwrap()[..], b"two");
}

#[tokio::test]
async fn shutdown_keeps_old_objects_of_files_opened_to_be_replaced_with_nothing_written() {
    let (store, fs) = fs_of(&[("old", "keep me")]);
    let old = lookup_path(&fs, "old").await.unwrap();
    let _replacing = fs
        .open(old.ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    let (_, written) = fs
        .create(ROOT_INO, OsStr::new("new"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(written, 0, b"fresh").await.unwrap();
    fs.begin_shutdown();
    assert!(fs.commit_all().await.is_empty());
    assert_eq!(&store.inner().get("old").unwrap()[..], b"keep me");
    assert_eq!(&store.inner().get("new").unwrap()[..], b"fresh");
    assert_eq!(
        fs.create(ROOT_INO, OsStr::new("late"), 0o644, ROOT)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS,
        "no new change during shutdown"
    );
}

/// Seen in the stress test: a file renamed while its multipart upload ran completes under
/// its old key and is moved at the commit; one failed delete of that copy brought the old
/// name back for good. The delete is tried three times.
#[tokio::test]
async fn the_pre_rename_copy_of_a_file_renamed_while_uploading_is_deleted_despite_a_fault() {
    let (store, fs) = multipart_fs(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    let data = pattern(11 << 20, 5);
    write_at(&fs, fh, 0, &data[..6 << 20]).await;
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    write_at(&fs, fh, 6 << 20, &data[6 << 20..]).await;
    store.fail(Op::Delete, StoreError::Transient("injected".into()), 2);
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().keys(), vec!["g".to_string()]);
    assert_eq!(&store.inner().get("g").unwrap()[..], &data[..]);
}

#[tokio::test]
async fn a_file_renamed_away_and_back_while_uploading_lands_under_its_name() {
    let (store, fs) = multipart_fs(&[]);
    let (_, fh) = fs
        .create(ROOT_INO, OsStr::new("f"), 0o644, ROOT)
        .await
        .unwrap();
    let data = pattern(11 << 20, 9);
    write_at(&fs, fh, 0, &data[..6 << 20]).await;
    fs.rename(ROOT_INO, OsStr::new("f"), ROOT_INO, OsStr::new("g"), false)
        .await
        .unwrap();
    // Another file may not take the key where f's upload still completes...
    let (_, other) = fs
        .create(ROOT_INO, OsStr::new("h"), 0o644, ROOT)
        .await
        .unwrap();
    fs.write(other, 0, b"h").await.unwrap();
    fs.commit(other).await.unwrap();
    fs.release(other).await;
    assert_eq!(
        fs.rename(ROOT_INO, OsStr::new("h"), ROOT_INO, OsStr::new("f"), false)
            .await
            .unwrap_err()
            .errno(),
        libc::EBUSY
    );
    // ...but the file itself may go back there.
    fs.rename(ROOT_INO, OsStr::new("g"), ROOT_INO, OsStr::new("f"), false)
        .await
        .unwrap();
    write_at(&fs, fh, 6 << 20, &data[6 << 20..]).await;
    fs.commit(fh).await.unwrap();
    fs.release(fh).await;
    assert_eq!(store.inner().get("f").unwrap(), data);
    assert_eq!(store.inner().keys(), ["f", "h"]);
    assert_eq!(store.inner().open_uploads(), 0);
}

mod archive;
mod bounds;
mod copy_range;
mod gate;
mod posix;
mod review;
mod review_attrs;
mod review_copy;
mod review_fresh;
mod review_keys;
mod review_orphan;
mod review_overdraft;
mod review_staged;
mod review_staged_fix;
mod round_trips;

//! Filesystem semantics against the in-memory store.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

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
    fs.release(fh);
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
async fn writes_are_refused_cleanly() {
    let (_, fs) = fs_of(&[("f", "abc")]);
    let f = lookup_path(&fs, "f").await.unwrap();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let err = fs.open(f.ino, flags).await.unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
    }
    let ro = FsConfig {
        read_only: true,
        ..FsConfig::default()
    };
    let (_, fs) = fs_with(&[("f", "abc")], ro);
    let f = lookup_path(&fs, "f").await.unwrap();
    assert_eq!(
        fs.open(f.ino, libc::O_WRONLY).await.unwrap_err().errno(),
        libc::EROFS
    );
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
    fs.release(fh);
    // Well within the TTL, yet the reopen asks the store again.
    assert_eq!(read_all(&fs, "f").await.unwrap(), b"new contents!");
}

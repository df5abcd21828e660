//! POSIX comfort against the in-memory store: symlinks, special files, times, directory modes.

use super::*;

#[tokio::test]
async fn symlinks_are_s3fs_objects_and_read_back_in_a_fresh_mount() {
    let (store, fs) = fs_of(&[("d/", "")]);
    let dir = lookup_path(&fs, "d").await.unwrap();
    let link = fs
        .symlink(dir.ino, OsStr::new("l"), OsStr::new("../target/file"), ROOT)
        .await
        .unwrap();
    assert_eq!((link.attrs.kind, link.attrs.size), (Kind::Symlink, 14));
    assert_eq!(&fs.readlink(link.ino).await.unwrap()[..], b"../target/file");
    // In S3 as s3fs writes it: the body is the target, the mode carries S_IFLNK.
    assert_eq!(&store.inner().get("d/l").unwrap()[..], b"../target/file");
    let info = store.inner().info("d/l").unwrap();
    assert_eq!(
        info.user_metadata["mode"],
        (libc::S_IFLNK | 0o777).to_string()
    );
    // A name that exists is not replaced.
    let again = fs
        .symlink(dir.ino, OsStr::new("l"), OsStr::new("x"), ROOT)
        .await;
    assert_eq!(again.unwrap_err().errno(), libc::EEXIST);
    // A fresh mount sees a symlink both by lookup and in the listing of a small directory.
    let fresh = Fs::new(store.clone(), FsConfig::default());
    assert_eq!(
        names_in(&fresh, "d", true).await,
        vec![
            (".".to_string(), Kind::Dir),
            ("..".to_string(), Kind::Dir),
            ("l".to_string(), Kind::Symlink)
        ]
    );
    let fresh = Fs::new(store.clone(), FsConfig::default());
    let looked_up = lookup_path(&fresh, "d/l").await.unwrap();
    assert_eq!(looked_up.attrs.kind, Kind::Symlink);
    assert_eq!(
        &fresh.readlink(looked_up.ino).await.unwrap()[..],
        b"../target/file"
    );
    // Renamed like a file, it stays a symlink.
    fresh
        .rename(
            lookup_path(&fresh, "d").await.unwrap().ino,
            OsStr::new("l"),
            ROOT_INO,
            OsStr::new("moved"),
            false,
        )
        .await
        .unwrap();
    let moved = Fs::new(store.clone(), FsConfig::default());
    let entry = lookup_path(&moved, "moved").await.unwrap();
    assert_eq!(entry.attrs.kind, Kind::Symlink);
    assert!(store.inner().get("d/l").is_none());
}

#[tokio::test]
async fn fifos_sockets_and_devices_are_empty_objects_with_their_mode() {
    let (store, fs) = fs_of(&[]);
    let cases = [
        ("fifo", libc::S_IFIFO | 0o640, 0, Kind::Fifo),
        ("sock", libc::S_IFSOCK | 0o600, 0, Kind::Socket),
        ("chr", libc::S_IFCHR | 0o620, 0x0501, Kind::CharDevice),
        ("blk", libc::S_IFBLK | 0o660, 0x0801, Kind::BlockDevice),
    ];
    for (name, mode, rdev, kind) in cases {
        let entry = fs
            .mknod_special(ROOT_INO, OsStr::new(name), mode, rdev, ROOT)
            .await
            .unwrap();
        assert_eq!(entry.attrs.kind, kind, "{name}");
        assert_eq!(store.inner().get(name).unwrap().len(), 0, "{name}");
    }
    let fresh = Fs::new(store.clone(), FsConfig::default());
    for (name, mode, rdev, kind) in cases {
        let entry = lookup_path(&fresh, name).await.unwrap();
        assert_eq!(
            (entry.attrs.kind, entry.attrs.perm, entry.attrs.rdev),
            (kind, mode & 0o7777, rdev),
            "{name}"
        );
    }
    let regular = fs
        .mknod_special(ROOT_INO, OsStr::new("r"), libc::S_IFREG | 0o644, 0, ROOT)
        .await;
    assert_eq!(regular.unwrap_err().errno(), libc::EINVAL);
}

#[tokio::test]
async fn times_keep_nanoseconds_dates_past_2038_and_omitted_fields() {
    let (store, fs) = fs_of(&[]);
    write_file(&fs, "f", b"x").await.unwrap();
    let f = lookup_path(&fs, "f").await.unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(4_102_444_800, 123_456_789);
    let atime = SystemTime::UNIX_EPOCH + Duration::new(1_000, 5);
    let before = SystemTime::now();
    let entry = fs
        .setattr(
            f.ino,
            SetAttr {
                mtime: Some(mtime),
                atime: Some(atime),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert!(entry.attrs.ctime >= before, "ctime moves on utimes");
    // UTIME_OMIT of atime: only mtime changes.
    let later = SystemTime::UNIX_EPOCH + Duration::new(5_000_000_000, 1);
    fs.setattr(
        f.ino,
        SetAttr {
            mtime: Some(later),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let fresh = Fs::new(store.clone(), FsConfig::default());
    let again = lookup_path(&fresh, "f").await.unwrap();
    assert_eq!((again.attrs.mtime, again.attrs.atime), (later, atime));
    assert!(again.attrs.ctime >= before);
}

#[tokio::test]
async fn chmod_moves_ctime_and_a_directory_mode_is_read_back() {
    let (store, fs) = fs_of(&[]);
    let dir = fs
        .mkdir(ROOT_INO, OsStr::new("d"), 0o700, Caller { uid: 7, gid: 8 })
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let changed = fs
        .setattr(
            dir.ino,
            SetAttr {
                mode: Some(0o750),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert!(
        changed.attrs.ctime > dir.attrs.ctime,
        "ctime moved on chmod"
    );
    let fresh = Fs::new(store.clone(), FsConfig::default());
    let again = lookup_path(&fresh, "d").await.unwrap();
    assert_eq!(
        (again.attrs.perm, again.attrs.uid, again.attrs.gid),
        (0o750, 7, 8)
    );
    // And in a listing of the parent (a small directory: markers are HEADed).
    let fresh = Fs::new(store.clone(), FsConfig::default());
    let root = fresh.opendir(ROOT_INO).unwrap();
    let items = fresh.readdir(root, 0, 100, true).await.unwrap();
    let d = items.iter().find(|i| i.name == "d").unwrap();
    assert_eq!(d.entry.attrs.perm, 0o750);
}

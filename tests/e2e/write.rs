//! The write side through a real mount: everyday Unix tools, checked against what the server
//! holds through the S3 API.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A local tree of mixed sizes, 0 B to 100 MiB, with nested directories.
fn make_tree(root: &Path, big: usize) {
    let files: &[(&str, usize)] = &[
        ("empty.txt", 0),
        ("one.bin", 1),
        ("small.txt", 1000),
        ("docs/readme.md", 5000),
        ("docs/deeper/notes with space.txt", 70_000),
        ("media/part.bin", 9 * 1024 * 1024 + 7),
        ("media/big.bin", big),
    ];
    for (i, (path, size)) in files.iter().enumerate() {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, random_bytes(*size, 100 + i as u64)).unwrap();
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
}

/// Every file below `root`, relative, with its bytes.
fn files_below(root: &Path) -> Vec<(String, Vec<u8>)> {
    let out = sh_ok(&format!(
        "cd {} && find . -type f | sort",
        shell_quote(root)
    ));
    out.lines()
        .map(|l| {
            let rel = l.trim_start_matches("./").to_string();
            let data = std::fs::read(root.join(&rel)).unwrap();
            (rel, data)
        })
        .collect()
}

#[test]
fn cp_r_a_tree_in_matches_with_diff_and_in_the_bucket() {
    let bucket = TestBucket::new();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 100 * 1024 * 1024 + 3);
    let mount = Mount::new(&bucket.name, &[]);
    let dest = mount.join("copy");
    sh_ok(&format!(
        "cp -r {} {}",
        shell_quote(src.path()),
        shell_quote(&dest)
    ));
    sh_ok(&format!(
        "diff -r {} {}",
        shell_quote(src.path()),
        shell_quote(&dest)
    ));
    // The bucket holds exactly the files, byte for byte, plus the directory markers.
    for (rel, data) in files_below(src.path()) {
        assert_eq!(bucket.get(&format!("copy/{rel}")), data, "{rel}");
    }
    let keys = bucket.keys();
    assert!(keys.contains(&"copy/empty-dir/".to_string()), "{keys:?}");
    // And a fresh mount sees the same tree.
    drop(mount);
    let again = Mount::new(&bucket.name, &[]);
    sh_ok(&format!(
        "diff -r {} {}",
        shell_quote(src.path()),
        shell_quote(&again.join("copy"))
    ));
}

#[test]
fn rsync_twice_transfers_nothing_the_second_time() {
    let bucket = TestBucket::new();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 3 * 1024 * 1024);
    let mount = Mount::new(&bucket.name, &[]);
    let dest = mount.join("mirror");
    let rsync = |extra: &str| {
        sh_ok(&format!(
            "rsync -a {extra} {}/ {}/",
            shell_quote(src.path()),
            shell_quote(&dest)
        ))
    };
    rsync("");
    sh_ok(&format!(
        "diff -r {} {}",
        shell_quote(src.path()),
        shell_quote(&dest)
    ));
    // Sizes and mtimes round-trip, so a second run finds nothing to send.
    let second = rsync("--itemize-changes --out-format=CHANGED:%n:%i");
    let changed: Vec<&str> = second
        .lines()
        .filter(|l| l.starts_with("CHANGED:") && !l.contains("/:"))
        .collect();
    let stats = sh(&format!(
        "stat -c '%n %s %y' {}/media/part.bin {}/media/part.bin",
        shell_quote(src.path()),
        shell_quote(&dest)
    ));
    assert!(
        changed.is_empty(),
        "second rsync transferred: {changed:?}\n{}",
        String::from_utf8_lossy(&stats.stdout)
    );
    // Also after a remount, with listed files' metadata read back from S3 (--stat-metadata).
    drop(mount);
    let mount = Mount::new(&bucket.name, &["--stat-metadata"]);
    let dest = mount.join("mirror");
    let third = sh_ok(&format!(
        "rsync -a --itemize-changes --out-format=CHANGED:%n:%i {}/ {}/",
        shell_quote(src.path()),
        shell_quote(&dest)
    ));
    let changed: Vec<&str> = third
        .lines()
        .filter(|l| l.starts_with("CHANGED:") && !l.contains("/:"))
        .collect();
    assert!(
        changed.is_empty(),
        "rsync after remount transferred: {changed:?}"
    );
}

#[test]
fn tar_x_mv_rm_r_and_python_work() {
    let bucket = TestBucket::new();
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 1024 * 1024);
    let archive = tempfile::NamedTempFile::new().unwrap();
    sh_ok(&format!(
        "tar -C {} -cf {} .",
        shell_quote(src.path()),
        shell_quote(archive.path())
    ));
    let mount = Mount::new(&bucket.name, &[]);
    let root = mount.path();
    sh_ok(&format!(
        "mkdir -p {0}/unpacked && tar -C {0}/unpacked -xf {1}",
        shell_quote(root),
        shell_quote(archive.path())
    ));
    sh_ok(&format!(
        "diff -r {} {}/unpacked",
        shell_quote(src.path()),
        shell_quote(root)
    ));

    // mv of a file and of a directory.
    sh_ok(&format!(
        "cd {} && mv unpacked/small.txt unpacked/renamed.txt && mv unpacked/docs moved-docs",
        shell_quote(root)
    ));
    assert_eq!(
        bucket.get("unpacked/renamed.txt"),
        std::fs::read(src.path().join("small.txt")).unwrap()
    );
    assert_eq!(
        bucket.get("moved-docs/deeper/notes with space.txt"),
        std::fs::read(src.path().join("docs/deeper/notes with space.txt")).unwrap()
    );
    assert!(!bucket
        .keys()
        .iter()
        .any(|k| k.starts_with("unpacked/docs/") || k == "unpacked/small.txt"));

    // A file written by python, then read back.
    let script = format!(
        "with open({:?}, 'w') as f:\n    f.write('written by python\\n' * 1000)\nprint(open({:?}).read().count('python'))",
        root.join("py.txt"),
        root.join("py.txt")
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    assert_eq!(
        bucket.get("py.txt"),
        "written by python\n".repeat(1000).into_bytes()
    );

    // rm -r removes everything below, markers included.
    sh_ok(&format!(
        "rm -r {0}/unpacked {0}/moved-docs",
        shell_quote(root)
    ));
    assert_eq!(bucket.keys(), ["py.txt"]);
    let listing = sh_ok(&format!("ls -A {}", shell_quote(root)));
    assert_eq!(listing.trim(), "py.txt");
}

#[test]
fn touch_truncate_and_editor_style_saves() {
    let bucket = TestBucket::new();
    bucket.put("existing.txt", "old contents");
    let mount = Mount::new(&bucket.name, &[]);
    let root = shell_quote(mount.path());
    // touch creates an empty object, and on an existing file updates its mtime only.
    sh_ok(&format!("touch {root}/new-empty"));
    assert_eq!(bucket.get("new-empty"), b"");
    sh_ok(&format!(
        "touch -d '2001-02-03 04:05:06 UTC' {root}/existing.txt"
    ));
    assert_eq!(bucket.get("existing.txt"), b"old contents");
    let meta = std::fs::metadata(mount.join("existing.txt")).unwrap();
    assert_eq!(meta.mtime(), 981173106);
    // truncate -s cuts, grows with zeros, and -s 0 empties.
    sh_ok(&format!("truncate -s 3 {root}/existing.txt"));
    assert_eq!(bucket.get("existing.txt"), b"old");
    sh_ok(&format!("truncate -s 5 {root}/existing.txt"));
    assert_eq!(bucket.get("existing.txt"), b"old\0\0");
    sh_ok(&format!("truncate -s 0 {root}/existing.txt"));
    assert_eq!(bucket.get("existing.txt"), b"");
    // Shell redirection overwrites, and >> appends.
    sh_ok(&format!("echo first > {root}/f.txt"));
    sh_ok(&format!("echo more >> {root}/f.txt"));
    assert_eq!(bucket.get("f.txt"), b"first\nmore\n");
    // A write into the middle (dd conv=notrunc), read back through the mount.
    sh_ok(&format!(
        "printf XY | dd of={root}/f.txt bs=1 seek=1 conv=notrunc status=none"
    ));
    assert_eq!(bucket.get("f.txt"), b"fXYst\nmore\n");
    assert_eq!(sh_ok(&format!("cat {root}/f.txt")), "fXYst\nmore\n");
    // Save via temp file + rename, as editors do.
    sh_ok(&format!(
        "printf 'v2' > {root}/.f.txt.swp && mv {root}/.f.txt.swp {root}/f.txt"
    ));
    assert_eq!(bucket.get("f.txt"), b"v2");
    assert!(!bucket.keys().contains(&".f.txt.swp".to_string()));
}

#[test]
fn chmod_chown_persist_and_s3fs_metadata_is_honoured() {
    let bucket = TestBucket::new();
    // Written by another client in s3fs's format: mode 0600 (decimal 33152), uid, gid, mtime.
    runtime()
        .block_on(
            bucket
                .client
                .put_object()
                .bucket(&bucket.name)
                .key("from-s3fs.txt")
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"hi"))
                .metadata("mode", "33152")
                .metadata("uid", "1234")
                .metadata("gid", "5678")
                .metadata("mtime", "1500000000")
                .send(),
        )
        .unwrap();
    let mount = Mount::new(&bucket.name, &[]);
    let meta = std::fs::metadata(mount.join("from-s3fs.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.mtime(), 1_500_000_000);

    std::fs::write(mount.join("mine.txt"), "data").unwrap();
    std::fs::set_permissions(
        mount.join("mine.txt"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    sh_ok(&format!(
        "chown 4321:8765 {}",
        shell_quote(&mount.join("mine.txt"))
    ));
    drop(mount);
    let mount = Mount::new(&bucket.name, &[]);
    let meta = std::fs::metadata(mount.join("mine.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o751);
    assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    assert_eq!(
        std::fs::read_to_string(mount.join("mine.txt")).unwrap(),
        "data"
    );
}

#[test]
fn bad_names_and_bad_namespace_operations_fail_with_their_errno() {
    let bucket = TestBucket::new();
    bucket.put("dir/inside", "x");
    let mount = Mount::new(&bucket.name, &[]);
    let long = "n".repeat(256);
    let err = std::fs::write(mount.join(&long), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    let err = std::fs::remove_dir(mount.join("dir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    let err = std::fs::rename(mount.join("dir"), mount.join("dir/sub")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(bucket.keys().contains(&"dir/inside".to_string()));
    assert!(!bucket.keys().iter().any(|k| k.starts_with("dir/sub")));
}

#[test]
fn a_key_over_1024_bytes_is_refused_with_enametoolong() {
    // The directories such a key sits in have keys of up to 1,010 bytes: Garage's LMDB
    // metadata engine refuses keys over about 475 bytes (MDB_BAD_VALSIZE, as 503
    // ServiceUnavailable), so there the mkdir of the third level fails with EIO first.
    if skip_unless(
        ServerKind::Moto,
        "Garage (LMDB) refuses keys over ~475 bytes, so no directory deep enough can exist",
    ) {
        return;
    }
    let bucket = TestBucket::new();
    let mount = Mount::new(&bucket.name, &[]);
    // Components fine, key over 1,024 bytes.
    let mut deep = mount.path().to_path_buf();
    for i in 0..6 {
        deep = deep.join(format!("{i}{}", "d".repeat(200)));
    }
    let err = std::fs::create_dir_all(&deep).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    assert!(bucket.keys().iter().all(|k| k.len() <= 1024));
}

#[test]
fn a_read_only_mount_refuses_writes() {
    let bucket = TestBucket::new();
    bucket.put("existing.txt", "keep me");
    let ro = Mount::new(&bucket.name, &["--read-only"]);
    let err = std::fs::write(ro.join("new.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::remove_file(ro.join("existing.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::create_dir(ro.join("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(
        std::fs::read_to_string(ro.join("existing.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(bucket.keys(), ["existing.txt"]);
}

#[test]
fn a_server_stopped_mid_write_fails_the_close() {
    // Its own server, so stopping it disturbs no other test.
    let server = OwnServer::start();
    let endpoint = server.endpoint.clone();
    let client = s3_client(&endpoint);
    runtime()
        .block_on(client.create_bucket().bucket("faults").send())
        .unwrap();
    let mount = Mount::with_endpoint("faults", &endpoint, &["--max-attempts", "2"]);
    let path = mount.join("doomed.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    // Several parts' worth, so a multipart upload is under way when the server goes.
    file.write_all(&random_bytes(20 * 1024 * 1024, 7)).unwrap();
    server.stop();
    let write_more = file.write_all(&random_bytes(10 * 1024 * 1024, 8));
    let closed = file.sync_all();
    drop(file);
    assert!(
        write_more.is_err() || closed.is_err(),
        "a write S3 never took must not be acknowledged"
    );
    if let Err(e) = closed {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
}

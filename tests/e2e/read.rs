//! The read side through a real mount.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::support::*;

/// Writes the server's copy of `key` to a temp file, for comparison with ordinary tools.
fn server_copy(bucket: &TestBucket, key: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), bucket.get(key)).expect("write server copy");
    file
}

fn md5(path: &std::path::Path) -> String {
    let out = sh_ok(&format!("md5sum {}", shell_quote(path)));
    out.split_whitespace()
        .next()
        .expect("md5sum output")
        .to_string()
}

#[test]
fn files_of_every_size_read_back_exactly() {
    let bucket = TestBucket::new();
    let sizes: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("odd", 1_048_577),
        ("parts", 20 * 1024 * 1024 + 3),
        ("large", 100 * 1024 * 1024 + 11),
    ];
    for (i, (key, size)) in sizes.iter().enumerate() {
        bucket.put(key, random_bytes(*size, i as u64 + 1));
    }
    let mount = Mount::new(&bucket.name, &[]);
    for (key, size) in sizes {
        let path = mount.join(key);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            *size as u64,
            "{key} size"
        );
        let expected = server_copy(&bucket, key);
        assert_eq!(md5(&path), md5(expected.path()), "md5 of {key}");
    }
    // `cat` and `cmp` agree too.
    let expected = server_copy(&bucket, "odd");
    sh_ok(&format!(
        "cat {} | cmp - {}",
        shell_quote(&mount.join("odd")),
        shell_quote(expected.path())
    ));
}

#[test]
fn random_reads_with_dd_match_the_object() {
    let bucket = TestBucket::new();
    let data = random_bytes(32 * 1024 * 1024, 99);
    bucket.put("random.bin", data.clone());
    let mount = Mount::new(&bucket.name, &[]);
    let path = mount.join("random.bin");
    for (skip, count, bs) in [
        (7000usize, 3usize, 4096usize),
        (5, 2, 1 << 20),
        (31, 1, 1 << 20),
        (0, 1, 4096),
        (123_456, 10, 1),
    ] {
        let out = std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .arg(format!("bs={bs}"))
            .arg(format!("skip={skip}"))
            .arg(format!("count={count}"))
            .arg("status=none")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = skip * bs;
        let end = (start + count * bs).min(data.len());
        assert_eq!(
            out.stdout,
            &data[start..end],
            "dd bs={bs} skip={skip} count={count}"
        );
    }
    // Seeks back and forth in one open file.
    let mut file = std::fs::File::open(&path).unwrap();
    for offset in [30_000_000u64, 10, 16_777_216, 4095, 33_554_431] {
        let mut buf = vec![0u8; 5000];
        file.seek(SeekFrom::Start(offset)).unwrap();
        let n = file.read(&mut buf).unwrap();
        let o = offset as usize;
        assert_eq!(
            &buf[..n],
            &data[o..(o + 5000).min(data.len())],
            "at {offset}"
        );
    }
}

#[test]
fn listings_show_the_tree_with_ls_stat_and_find() {
    let bucket = TestBucket::new();
    let keys = [
        "top.txt",
        "a/one.txt",
        "a/b/two.txt",
        "a/b/c/three.txt",
        "marker-only/",
        "with marker/",
        "with marker/inside",
        "odd names/space here.txt",
        "odd names/plus+sign",
        "odd names/per%cent",
        "odd names/ünïcødé-文件",
    ];
    for (i, key) in keys.iter().enumerate() {
        let body = if key.ends_with('/') {
            String::new()
        } else {
            format!("body of {key} #{i}")
        };
        bucket.put(key, body);
    }
    let mount = Mount::new(&bucket.name, &[]);
    let root = shell_quote(mount.path());
    let listing = sh_ok(&format!("cd {root} && find . | sort"));
    let expected = [
        ".",
        "./a",
        "./a/b",
        "./a/b/c",
        "./a/b/c/three.txt",
        "./a/b/two.txt",
        "./a/one.txt",
        "./marker-only",
        "./odd names",
        "./odd names/per%cent",
        "./odd names/plus+sign",
        "./odd names/space here.txt",
        "./odd names/ünïcødé-文件",
        "./top.txt",
        "./with marker",
        "./with marker/inside",
    ];
    let mut expected: Vec<&str> = expected.to_vec();
    expected.sort();
    assert_eq!(listing.lines().collect::<Vec<_>>(), expected);
    // Every file's content equals the server's.
    for key in keys.iter().filter(|k| !k.ends_with('/')) {
        let seen = std::fs::read(mount.join(key)).unwrap_or_else(|e| panic!("read {key}: {e}"));
        assert_eq!(seen, bucket.get(key), "{key}");
    }
    // ls -la shows sizes from the listing; stat agrees.
    let ls = sh_ok(&format!("ls -la {}", shell_quote(&mount.join("odd names"))));
    assert!(
        ls.contains("space here.txt") && ls.contains("ünïcødé-文件"),
        "{ls}"
    );
    let meta = std::fs::metadata(mount.join("a/b/two.txt")).unwrap();
    assert_eq!(meta.len(), bucket.get("a/b/two.txt").len() as u64);
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert!(std::fs::metadata(mount.join("marker-only"))
        .unwrap()
        .is_dir());
    assert_eq!(
        std::fs::read_dir(mount.join("marker-only"))
            .unwrap()
            .count(),
        0
    );
    let stat = sh_ok(&format!(
        "stat -c '%F %s' {}",
        shell_quote(&mount.join("top.txt"))
    ));
    assert_eq!(
        stat.trim(),
        format!("regular file {}", bucket.get("top.txt").len())
    );
}

#[test]
fn directories_larger_than_one_listing_page_list_completely() {
    let bucket = TestBucket::new();
    let keys: Vec<String> = (0..2345).map(|i| format!("many/file-{i:05}")).collect();
    bucket.put_many(&keys, b"x");
    bucket.put("many/sub/deeper", "y");
    let mount = Mount::new(&bucket.name, &[]);
    let names = sh_ok(&format!("ls -1 {}", shell_quote(&mount.join("many"))));
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 2346, "2345 files and one directory");
    assert_eq!(names[0], "file-00000");
    assert_eq!(names[2344], "file-02344");
    assert_eq!(names[2345], "sub");
    let long = sh_ok(&format!(
        "ls -l {} | grep -c '^-'",
        shell_quote(&mount.join("many"))
    ));
    assert_eq!(long.trim(), "2345");
}

#[test]
fn a_directory_wins_over_a_file_of_the_same_name() {
    let bucket = TestBucket::new();
    bucket.put("clash", "i am a file");
    bucket.put("clash.txt", "neighbour");
    bucket.put("clash/inside", "i am inside");
    let mount = Mount::new(&bucket.name, &[]);
    let listing = sh_ok(&format!("ls -1 {}", shell_quote(mount.path())));
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["clash", "clash.txt"]);
    assert!(std::fs::metadata(mount.join("clash")).unwrap().is_dir());
    assert_eq!(
        std::fs::read_to_string(mount.join("clash/inside")).unwrap(),
        "i am inside"
    );
}

#[test]
fn a_prefix_mount_is_confined_to_its_prefix() {
    let bucket = TestBucket::new();
    bucket.put("outside.txt", "no");
    bucket.put("team/data/inside.txt", "yes");
    bucket.put("team/data/sub/deep.txt", "deep");
    bucket.put("team/database", "sibling, not below the prefix");
    for target in [
        format!("{}:team/data", bucket.name),
        format!("s3://{}/team/data/", bucket.name),
    ] {
        let mount = Mount::new(&target, &[]);
        let listing = sh_ok(&format!(
            "cd {} && find . | sort",
            shell_quote(mount.path())
        ));
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            [".", "./inside.txt", "./sub", "./sub/deep.txt"],
            "{target}"
        );
        assert_eq!(
            std::fs::read_to_string(mount.join("sub/deep.txt")).unwrap(),
            "deep"
        );
    }
}

#[test]
fn changes_by_another_client_show_after_the_ttl() {
    let bucket = TestBucket::new();
    bucket.put("changing.txt", "version one");
    let mount = Mount::new(&bucket.name, &["--metadata-ttl", "1"]);
    let path = mount.join("changing.txt");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "version one");
    assert!(std::fs::metadata(mount.join("new.txt")).is_err());
    bucket.put("changing.txt", "version two, longer");
    bucket.put("new.txt", "appeared");
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "version two, longer"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("new.txt")).unwrap(),
        "appeared"
    );
    let listing = sh_ok(&format!("ls {}", shell_quote(mount.path())));
    assert!(listing.contains("new.txt"), "{listing}");
}

#[test]
fn an_object_replaced_while_open_gives_an_error_not_mixed_data() {
    let bucket = TestBucket::new();
    let first = random_bytes(24 * 1024 * 1024, 5);
    bucket.put("pinned.bin", first.clone());
    let mount = Mount::new(&bucket.name, &[]);
    let mut file = std::fs::File::open(mount.join("pinned.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, &first[..4096]);
    bucket.put("pinned.bin", random_bytes(24 * 1024 * 1024, 6));
    file.seek(SeekFrom::Start(20 * 1024 * 1024)).unwrap();
    let mut tail = vec![0u8; 4096];
    // 20 MiB is far beyond anything prefetched after a 4 KiB read: this read goes to S3, where
    // the If-Match pin fails.
    let err = file
        .read(&mut tail)
        .expect_err("a read of a replaced object must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    // Reopening sees the new object.
    let reopened = std::fs::read(mount.join("pinned.bin")).unwrap();
    assert_eq!(reopened, bucket.get("pinned.bin"));
}

#[test]
fn a_randomly_read_file_is_staged_on_disk_and_read_from_there() {
    // Its own server, so stopping it disturbs no other test.
    let server = OwnServer::start();
    let endpoint = server.endpoint.clone();
    let client = s3_client(&endpoint);
    let data = random_bytes(12 * 1024 * 1024 + 5, 31);
    runtime().block_on(async {
        client
            .create_bucket()
            .bucket("staging")
            .send()
            .await
            .unwrap();
        client
            .put_object()
            .bucket("staging")
            .key("db.bin")
            .body(data.clone().into())
            .send()
            .await
            .unwrap();
    });
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let mount = Mount::with_endpoint(
        "staging",
        &endpoint,
        &["--cache-dir", cache_dir, "--max-cache-size", "64"],
    );
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(mount.join("db.bin")).unwrap();
    let read_at = |offset: usize, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert_eq!(buf, data[offset..offset + len], "bytes at {offset}");
    };
    for offset in [9_000_000, 1_000_000, 5_000_000, 300_000, 11_000_000] {
        read_at(offset, 4096);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !mount.log().contains("staged on local disk") {
        assert!(
            std::time::Instant::now() < deadline,
            "not staged within 60 s:\n{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every further read comes from the staging file: they work with the server gone.
    server.stop();
    for offset in [0, 7_777_777, 12 * 1024 * 1024 - 4091, 2_000_000, 4_194_300] {
        read_at(offset, 4096);
    }
    read_at(3_000_000, 1 << 20);
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "staging files are unnamed"
    );
}

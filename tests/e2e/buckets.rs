//! A mount of every bucket (`bucketfs MOUNTPOINT`, or `s3://` as the source): each bucket
//! is a top-level directory; mkdir there creates a bucket, rmdir deletes an empty one, files
//! move between buckets, and the top level refuses what cannot be a bucket.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

fn bucket_exists(client: &aws_sdk_s3::Client, name: &str) -> bool {
    runtime()
        .block_on(client.head_bucket().bucket(name).send())
        .is_ok()
}

#[test]
fn every_bucket_is_a_directory_and_mkdir_rmdir_create_and_delete_buckets() {
    let existing = TestBucket::new();
    existing.put("hello.txt", "from an existing bucket");
    let mount = Mount::new("s3://", &[]);
    let client = &existing.client;

    // Existing buckets are top-level directories with their objects below.
    let top: Vec<String> = std::fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(top.contains(&existing.name), "{top:?}");
    assert_eq!(
        std::fs::read_to_string(mount.join(&format!("{}/hello.txt", existing.name))).unwrap(),
        "from an existing bucket"
    );

    // mkdir creates a bucket; an existing one is EEXIST.
    let fresh = format!("{}-made", existing.name);
    std::fs::create_dir(mount.join(&fresh)).unwrap();
    assert!(
        bucket_exists(client, &fresh),
        "mkdir did not create {fresh}"
    );
    assert!(mount.join(&fresh).is_dir());
    assert_eq!(
        errno_of(std::fs::create_dir(mount.join(&existing.name))),
        Some(libc::EEXIST)
    );
    // Names S3 refuses for a bucket, and files at the top, are refused.
    assert_eq!(
        errno_of(std::fs::create_dir(mount.join("Not_A_Bucket"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(std::fs::write(mount.join("top.txt"), b"x")),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink(
            "somewhere",
            mount.join("top-link")
        )),
        Some(libc::EPERM)
    );

    // Files live in buckets and move between them server-side.
    std::fs::write(mount.join(&format!("{fresh}/moved.txt")), b"moving").unwrap();
    std::fs::rename(
        mount.join(&format!("{fresh}/moved.txt")),
        mount.join(&format!("{}/moved.txt", existing.name)),
    )
    .unwrap();
    assert_eq!(existing.get("moved.txt"), b"moving");
    // A bucket rename is refused: only its contents can move.
    assert_eq!(
        errno_of(std::fs::rename(
            mount.join(&fresh),
            mount.join(&format!("{fresh}-renamed"))
        )),
        Some(libc::EPERM)
    );

    // rmdir of a bucket that holds files is ENOTEMPTY; empty, it deletes the bucket.
    std::fs::write(mount.join(&format!("{fresh}/keep.txt")), b"keep").unwrap();
    assert_eq!(
        errno_of(std::fs::remove_dir(mount.join(&fresh))),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_file(mount.join(&format!("{fresh}/keep.txt"))).unwrap();
    std::fs::remove_dir(mount.join(&fresh)).unwrap();
    assert!(
        !bucket_exists(client, &fresh),
        "rmdir did not delete {fresh}"
    );
    assert!(!mount.join(&fresh).exists());
}

#[test]
fn a_bucket_the_server_will_not_delete_is_enotempty() {
    if skip_unless(
        ServerKind::Moto,
        "Garage has no versioning, which leaves a listing-empty bucket undeletable",
    ) {
        return;
    }
    // Versioning keeps a deleted object's versions: the listing is empty, so the directory
    // looks empty, but S3 refuses to delete the bucket (BucketNotEmpty).
    let bucket = TestBucket::new();
    runtime()
        .block_on(
            bucket
                .client
                .put_bucket_versioning()
                .bucket(&bucket.name)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    bucket.put("old.txt", "versioned");
    runtime()
        .block_on(
            bucket
                .client
                .delete_object()
                .bucket(&bucket.name)
                .key("old.txt")
                .send(),
        )
        .unwrap();
    let mount = Mount::new("s3://", &[]);
    assert_eq!(
        std::fs::read_dir(mount.join(&bucket.name)).unwrap().count(),
        0
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(mount.join(&bucket.name))),
        Some(libc::ENOTEMPTY)
    );
    assert!(bucket_exists(&bucket.client, &bucket.name));
}

#[test]
fn a_single_argument_mounts_every_bucket_in_the_background() {
    let existing = TestBucket::new();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bucketfs_bin())
        .arg(dir.path())
        .args(["--state-dir", state.path().to_str().unwrap()])
        .envs(server_env())
        .output()
        .unwrap();
    let _guard = Unmount(dir.path().to_path_buf());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.path().join(&existing.name).is_dir() {
        assert!(Instant::now() < deadline, "{} not listed", existing.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_name = dir.path().to_str().unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(dir_name) && l.contains(" s3:// ")),
        "the mount's source is not s3://:\n{mounts}"
    );
    // The daemon's default log is named after what it mounts.
    assert!(state.path().join("log/all-buckets.log").exists());
}

#[test]
fn creating_a_bucket_the_credentials_may_not_is_eacces() {
    if skip_unless(
        ServerKind::Garage,
        "moto checks no permissions without an IAM set-up; Garage keys carry them",
    ) {
        return;
    }
    // A second key that may create no bucket: CreateBucket is AccessDenied.
    let out = Command::new(repo_root().join("scripts/local-s3"))
        .args([
            "limited-key",
            "--garage",
            "--port",
            &server().port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exports = String::from_utf8(out.stdout).unwrap();
    let var = |name: &str| {
        exports
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("no {name} in {exports}"))
            .to_string()
    };
    let (key, secret) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"));
    let mount = Mount::with_credentials("s3://", &server().endpoint, &key, &secret, &[]);
    let name = format!("e2e-refused-{}", std::process::id());
    assert_eq!(
        errno_of(std::fs::create_dir(mount.join(&name))),
        Some(libc::EACCES)
    );
    let client = s3_client(&server().endpoint);
    assert!(!bucket_exists(&client, &name));
    // The refusal is logged with S3's code, and without the key id Garage puts in its message.
    let log = mount.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&name) && l.contains("AccessDenied (HTTP 403)")),
        "{log}"
    );
    assert!(
        !log.contains(&key) && !log.contains(&secret),
        "a credential was logged"
    );
}

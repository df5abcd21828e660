//! Archived objects on a real server (moto models GLACIER and its restores): a read fails
//! with ENODATA and one log line that says how to restore; `setfattr -n bucketfs.restore`
//! asks for the restore and `getfattr` follows it; the file then reads.

use crate::support::*;

#[test]
fn an_archived_object_is_restored_through_an_attribute_and_then_reads() {
    if skip_unless(ServerKind::Moto, "Garage has no archive storage classes") {
        return;
    }
    let bucket = TestBucket::new();
    runtime()
        .block_on(
            bucket
                .client
                .put_object()
                .bucket(&bucket.name)
                .key("cold.txt")
                .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(
                    b"frozen bytes",
                ))
                .send(),
        )
        .unwrap();
    let mount = Mount::new(&bucket.name, &["--xattr"]);
    let file = shell_quote(&mount.join("cold.txt"));

    // stat works; cat fails with "No data available" and the log says how to restore.
    assert_eq!(std::fs::metadata(mount.join("cold.txt")).unwrap().len(), 12);
    let read = std::fs::read(mount.join("cold.txt"));
    assert_eq!(
        read.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::ENODATA),
        "{read:?}"
    );
    let log = mount.log();
    let hint = log
        .lines()
        .find(|l| l.contains("cold.txt") && l.contains("InvalidObjectState"))
        .unwrap_or_else(|| panic!("no log line for the archived read:\n{log}"));
    assert!(hint.contains("setfattr -n bucketfs.restore"), "{hint}");

    assert_eq!(
        sh_ok(&format!(
            "getfattr --only-values -n bucketfs.restore {file}"
        )),
        "archived"
    );
    assert_eq!(
        sh_ok(&format!(
            "getfattr --only-values -n bucketfs.storage_class {file}"
        )),
        "GLACIER"
    );
    sh_ok(&format!(
        "setfattr -n bucketfs.restore -v '1 standard' {file}"
    ));
    // moto restores at once; S3 shows "in progress" for hours first.
    let status = sh_ok(&format!(
        "getfattr --only-values -n bucketfs.restore {file}"
    ));
    assert!(status.starts_with("restored until "), "{status}");
    assert_eq!(
        std::fs::read(mount.join("cold.txt")).unwrap(),
        b"frozen bytes"
    );

    // Restoring an object that is not archived is refused.
    std::fs::write(mount.join("warm.txt"), b"here").unwrap();
    let warm = shell_quote(&mount.join("warm.txt"));
    let out = sh(&format!("setfattr -n bucketfs.restore -v 1 {warm}"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

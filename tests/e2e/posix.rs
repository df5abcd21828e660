//! POSIX comfort on a real mount: symlinks and special files (and s3fs reading them the same),
//! extended attributes with the usual tools, times and modes across remounts, and an open file
//! that is unlinked.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn symlinks_fifos_and_devices_are_stored_as_s3fs_stores_them() {
    let bucket = TestBucket::new();
    let mut mount = Mount::new(&bucket.name, &[]);
    let root = shell_quote(mount.path());
    // A tree with symlinks and special files, extracted by tar.
    let src = tempfile::tempdir().unwrap();
    let s = shell_quote(src.path());
    sh_ok(&format!(
        "mkdir -p {s}/t/lib && echo hello > {s}/t/lib/real.txt && ln -s lib/real.txt {s}/t/link \
         && ln -s ../nowhere {s}/t/lib/dangling && mkfifo {s}/t/fifo \
         && mknod {s}/t/null c 1 3 && tar -C {s} -cf {s}/t.tar t"
    ));
    sh_ok(&format!("tar -C {root} -xf {s}/t.tar"));
    let check = |base: &Path| {
        let link = base.join("t/link");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(&link).unwrap().to_str(),
            Some("lib/real.txt")
        );
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "hello\n");
        assert!(base
            .join("t/lib/dangling")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(base
            .join("t/fifo")
            .metadata()
            .unwrap()
            .file_type()
            .is_fifo());
        let null = base.join("t/null").metadata().unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
    };
    check(mount.path());
    // In S3: the target as the body, the type in the mode.
    assert_eq!(bucket.get("t/link"), b"lib/real.txt");
    let mode: u32 = bucket.metadata("t/link")["mode"].parse().unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(bucket.get("t/fifo"), b"");
    // A fresh mount sees the same tree, and rsync -a finds nothing to change.
    drop(mount);
    mount = Mount::new(&bucket.name, &[]);
    check(mount.path());
    let root = shell_quote(mount.path());
    let out = sh_ok(&format!("rsync -a --itemize-changes {s}/t/ {root}/t/"));
    let changed: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(".d..t") && !l.starts_with(".L..t") && !l.starts_with(".f..t"))
        .collect();
    assert!(changed.is_empty(), "rsync -a wanted to change: {changed:?}");
    // Locks are the kernel's, local to this mount.
    sh_ok(&format!(
        "flock {root}/t/lib/real.txt true && python3 -c 'import fcntl,sys; \
         f=open(sys.argv[1],\"r+\"); fcntl.lockf(f, fcntl.LOCK_EX); fcntl.lockf(f, fcntl.LOCK_UN)' \
         {root}/t/lib/real.txt"
    ));
    // Hard links are refused clearly.
    let out = sh(&format!("ln {root}/t/lib/real.txt {root}/t/hard"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An s3fs mount of the same bucket, unmounted on drop.
struct S3fs {
    dir: tempfile::TempDir,
    child: Child,
}

impl S3fs {
    fn mount(bucket: &str) -> Self {
        assert!(
            Command::new("s3fs").arg("--version").output().is_ok(),
            "s3fs is missing: apt-get install s3fs (scripts/install-deps does this)"
        );
        let dir = tempfile::Builder::new()
            .prefix("s3fs-mnt-")
            .tempdir()
            .unwrap();
        let passwd = dir.path().with_extension("passwd");
        std::fs::write(&passwd, format!("{}:{}\n", access_key(), secret_key())).unwrap();
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
        let options = [
            format!("url={}", server().endpoint),
            "use_path_request_style".into(),
            "endpoint=us-east-1".into(),
            format!("passwd_file={}", passwd.display()),
            "stat_cache_expire=1".into(),
        ];
        let mut command = Command::new("s3fs");
        command.arg(bucket).arg(dir.path()).arg("-f");
        for option in &options {
            command.arg("-o").arg(option);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3fs");
        let mount = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mounts = || std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        while !mounts().contains(&*mount.dir.path().to_string_lossy()) {
            assert!(Instant::now() < deadline, "s3fs did not mount within 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        mount
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        unmount(self.dir.path());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3fs_and_bucketfs_read_each_others_symlinks_modes_and_times() {
    let bucket = TestBucket::new();
    let ours = Mount::new(&bucket.name, &[]);
    let theirs = S3fs::mount(&bucket.name);
    // Written by s3fs, read by bucketfs.
    let t = shell_quote(theirs.dir.path());
    sh_ok(&format!(
        "echo data > {t}/s3fs-file && chmod 640 {t}/s3fs-file && ln -s s3fs-file {t}/s3fs-link"
    ));
    let o = ours.path();
    let link = o.join("s3fs-link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap().to_str(),
        Some("s3fs-file")
    );
    let meta = o.join("s3fs-file").metadata().unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    let stored: i64 = bucket.metadata("s3fs-file")["mtime"].parse().unwrap();
    assert_eq!(meta.mtime(), stored, "s3fs's mtime header");
    // Written by bucketfs, read by s3fs.
    let q = shell_quote(o);
    sh_ok(&format!(
        "echo ours > {q}/our-file && chmod 604 {q}/our-file && ln -s our-file {q}/our-link \
         && mkfifo {q}/our-fifo && touch -m -d '2040-01-02 03:04:05 UTC' {q}/our-file"
    ));
    let t = theirs.dir.path();
    // s3fs caches what it has not seen as absent for a moment.
    std::thread::sleep(Duration::from_secs(2));
    let link = t.join("our-link");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap().to_str(),
        Some("our-file")
    );
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "ours\n");
    let meta = t.join("our-file").metadata().unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o604);
    assert_eq!(meta.mtime(), 2209086245, "a date past 2038");
    assert!(t.join("our-fifo").metadata().unwrap().file_type().is_fifo());
}

#[test]
fn xattrs_work_with_getfattr_setfattr_cp_and_rsync() {
    let bucket = TestBucket::new();
    let mount = Mount::new(&bucket.name, &["--xattr", "--presign-expiry", "10m"]);
    let root = shell_quote(mount.path());
    sh_ok(&format!("echo content > {root}/f"));
    sh_ok(&format!(
        "setfattr -n user.origin -v https://example.com/x {root}/f \
         && setfattr -n user.note -v 0sAP8= {root}/f"
    ));
    assert_eq!(bucket.metadata("f")["origin"], "https://example.com/x");
    let dump = sh_ok(&format!("getfattr -d --absolute-names -e hex {root}/f"));
    assert!(
        dump.contains("user.origin=0x68747470733a2f2f6578616d706c652e636f6d2f78"),
        "{dump}"
    );
    let hex = sh_ok(&format!(
        "getfattr -n user.note -e hex --absolute-names {root}/f"
    ));
    assert!(
        hex.contains("user.note=0x00ff"),
        "binary values round-trip: {hex}"
    );
    // cp --preserve=xattr and rsync -X, out of the mount and back in.
    let local = tempfile::tempdir().unwrap();
    let l = shell_quote(local.path());
    sh_ok(&format!("cp --preserve=xattr {root}/f {l}/copy"));
    let copied = sh_ok(&format!("getfattr -n user.origin --only-values {l}/copy"));
    assert_eq!(copied, "https://example.com/x");
    sh_ok(&format!("setfattr -n user.local -v yes {l}/copy"));
    sh_ok(&format!("rsync -X {l}/copy {root}/synced"));
    assert_eq!(bucket.metadata("synced")["local"], "yes");
    assert_eq!(bucket.metadata("synced")["origin"], "https://example.com/x");
    // Read-only attributes describe the object; the presigned URL downloads it with no
    // credentials at all.
    let uri = sh_ok(&format!("getfattr -n bucketfs.uri --only-values {root}/f"));
    assert_eq!(uri, format!("s3://{}/f", bucket.name));
    let url = sh_ok(&format!(
        "getfattr -n bucketfs.presigned_url --only-values {root}/f"
    ));
    let body = sh_ok(&format!("curl -sf {}", shell_quote(Path::new(&url))));
    assert_eq!(body, "content\n");
    let out = sh(&format!("setfattr -n bucketfs.etag -v x {root}/f"));
    assert!(!out.status.success(), "read-only attributes refuse changes");
    // Removal, and the 2 KiB limit.
    sh_ok(&format!("setfattr -x user.note {root}/f"));
    assert!(!bucket.metadata("f").contains_key("note"));
    let out = sh(&format!(
        "setfattr -n user.big -v $(head -c 2100 /dev/zero | tr '\\0' x) {root}/f"
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Argument list too long"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn times_and_modes_survive_a_remount() {
    let bucket = TestBucket::new();
    let mut mount = Mount::new(&bucket.name, &[]);
    let root = shell_quote(mount.path());
    sh_ok(&format!("echo x > {root}/f && mkdir -m 700 {root}/d"));
    sh_ok(&format!(
        "touch -m -d '2100-01-01 00:00:00.123456789 UTC' {root}/f \
         && touch -a -d '1999-12-31 23:59:59.5 UTC' {root}/f && chmod 751 {root}/d"
    ));
    let before = mount.join("f").metadata().unwrap().ctime();
    std::thread::sleep(Duration::from_millis(1100));
    sh_ok(&format!("chmod 600 {root}/f"));
    let after = mount.join("f").metadata().unwrap();
    assert!(after.ctime() > before, "chmod moves ctime");
    drop(mount);
    mount = Mount::new(&bucket.name, &[]);
    let f = mount.join("f").metadata().unwrap();
    assert_eq!((f.mtime(), f.mtime_nsec()), (4102444800, 123456789));
    assert_eq!((f.atime(), f.atime_nsec()), (946684799, 500000000));
    assert_eq!(f.mode() & 0o7777, 0o600);
    let d = mount.join("d").metadata().unwrap();
    assert_eq!(d.mode() & 0o7777, 0o751, "a directory's mode is read back");
}

#[test]
fn an_unlinked_open_file_reads_and_writes_until_closed() {
    let bucket = TestBucket::new();
    bucket.put("f", "stored bytes");
    let mount = Mount::new(&bucket.name, &[]);
    let script = r#"
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
os.unlink(path)
assert not os.path.exists(path), "the name goes at once"
assert os.fstat(fd).st_nlink == 0
assert os.pread(fd, 6, 0) == b"stored"
os.pwrite(fd, b"STORED", 0)
assert os.pread(fd, 100, 0) == b"STORED bytes"
print("open")
sys.stdout.flush()
sys.stdin.readline()
os.close(fd)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(mount.join("f"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open", "the script's checks failed");
    assert_eq!(
        bucket.get("f"),
        b"stored bytes",
        "kept while open, unchanged"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while bucket.keys().contains(&"f".to_string()) {
        assert!(Instant::now() < deadline, "not deleted at the last close");
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! What a log may hold: no secret at any level, the SDK's own trace output included.

use crate::support::*;

#[test]
fn no_secret_reaches_the_log_even_at_trace_level() {
    // moto takes any session token; Garage refuses one it did not issue.
    if skip_unless(
        ServerKind::Moto,
        "Garage refuses a session token it did not issue",
    ) {
        return;
    }
    let bucket = TestBucket::new();
    bucket.put("f", "content\n");
    let token = "IQoJb3JpZ2luX2VjEJr-session-token-of-the-test-0123456789abcdef";
    let mount = Mount::with_env(
        &bucket.name,
        &["--xattr"],
        &[("RUST_LOG", "trace"), ("AWS_SESSION_TOKEN", token)],
    );
    let root = shell_quote(mount.path());
    sh_ok(&format!("echo new > {root}/g && cat {root}/f {root}/g"));
    let url = sh_ok(&format!(
        "getfattr -n bucketfs.presigned_url --only-values {root}/f"
    ));
    let signature = url
        .split("X-Amz-Signature=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .expect("a presigned URL carries a signature")
        .to_string();
    let log = mount.log();
    assert!(
        log.contains("canonical_request"),
        "the SDK's signing lines are logged at trace level (else this test proves nothing)"
    );
    for (what, secret) in [
        ("session token", token),
        ("secret key", secret_key()),
        ("presigned signature", signature.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log");
    }
    assert!(log.contains("<redacted>"), "redactions are marked");
    drop(mount);
}

/// Runs `script` as uid and gid `id`, with no supplementary groups: another local user.
fn as_user(id: u32, script: &str) -> std::process::Output {
    sh(&format!(
        "setpriv --reuid={id} --regid={id} --clear-groups sh -c {}",
        shell_quote(std::path::Path::new(script))
    ))
}

/// A directory over 256 entries (its listing is not followed by a HEAD per entry), holding a
/// file and a directory private to uid 1002, stored with s3fs-style metadata.
fn bucket_with_private_objects() -> TestBucket {
    let bucket = TestBucket::new();
    let keys: Vec<String> = (0..300).map(|i| format!("big/f{i:03}")).collect();
    bucket.put_many(&keys, b"x");
    let owner = [("uid", "1002"), ("gid", "1002")];
    // 0100600 and 040700, in decimal as s3fs stores them.
    bucket.put_with_metadata(
        "big/private.txt",
        "private secret",
        &[&owner[..], &[("mode", "33152")]].concat(),
    );
    bucket.put_with_metadata(
        "big/privdir/",
        "",
        &[&owner[..], &[("mode", "16832")]].concat(),
    );
    bucket.put("big/privdir/inner.txt", "inner secret");
    bucket
}

#[test]
fn in_a_shared_mount_a_listing_never_opens_another_users_private_files() {
    let bucket = bucket_with_private_objects();
    let mount = Mount::new(&bucket.name, &["--allow-other", "--xattr"]);
    let big = shell_quote(&mount.join("big"));
    let listed = as_user(
        1001,
        &format!("ls -l {big} > /dev/null && ls {big}/privdir"),
    );
    assert!(
        !listed.status.success(),
        "uid 1001 listed a directory of mode 0700 owned by uid 1002"
    );
    for (what, script) in [
        ("read the private file", format!("cat {big}/private.txt")),
        (
            "read below the private directory",
            format!("cat {big}/privdir/inner.txt"),
        ),
        (
            "got a presigned URL of the private file",
            format!("getfattr --only-values -n bucketfs.presigned_url {big}/private.txt"),
        ),
        (
            "asked for a restore of a file it cannot write",
            format!("setfattr -n bucketfs.restore -v 1 {big}/private.txt"),
        ),
    ] {
        // Right after a listing, as the report found, and again after a long one.
        as_user(1001, &format!("ls -l {big} > /dev/null"));
        let out = as_user(1001, &script);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !stdout.contains("secret") && !stdout.contains("http"),
            "uid 1001 {what}: {stdout}"
        );
    }
    // What the owner's metadata says is what everyone sees.
    let shown = sh_ok(&format!("stat -c '%a %u %g' {big}/private.txt"));
    assert_eq!(shown.trim(), "600 1002 1002");
    // The owner reads it.
    let read = as_user(1002, &format!("cat {big}/private.txt"));
    assert_eq!(String::from_utf8_lossy(&read.stdout), "private secret");
}

#[test]
fn uid_and_gid_options_override_the_stored_owner() {
    let bucket = TestBucket::new();
    bucket.put_with_metadata(
        "f",
        "x",
        &[("uid", "1002"), ("gid", "1002"), ("mode", "33152")],
    );
    bucket.put("plain", "y");
    let mount = Mount::new(&bucket.name, &["--uid", "1005", "--gid", "1006"]);
    let root = shell_quote(mount.path());
    let shown = sh_ok(&format!("stat -c '%a %u %g' {root}/f {root}/plain {root}"));
    assert_eq!(shown.trim(), "600 1005 1006\n644 1005 1006\n755 1005 1006");
}

/// The most memory the process has held (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

// The README's bound: `--max-memory` plus 80 MiB.
const BOUND_AT_64_MIB: u64 = 64 + 80;

#[test]
fn many_open_handles_of_a_large_directory_stay_within_the_memory_bound() {
    // Listing 150 × 6,000 entries takes minutes on moto; Garage lists fast.
    if skip_unless(ServerKind::Garage, "moto lists too slowly for 900 pages") {
        return;
    }
    let bucket = TestBucket::new();
    // Each handle held its own copy of the listing (about 225 bytes an entry): 150 × 6,000
    // entries were about 200 MiB on top of the rest.
    let keys: Vec<String> = (0..6_000).map(|i| format!("d/entry-{i:06}")).collect();
    bucket.put_many(&keys, b"");
    let mount = Mount::new(&bucket.name, &["--allow-other", "--max-memory", "64"]);
    let dir = mount.join("d");
    // Another user opens 150 descriptors of the directory and reads each to the end, all
    // held open at once.
    let script = format!(
        "import os\n\
         fds = [os.open({dir:?}, os.O_RDONLY | os.O_DIRECTORY) for _ in range(150)]\n\
         counts = {{len(os.listdir(fd)) for fd in fds}}\n\
         print(sorted(counts))\n",
        dir = dir.display().to_string()
    );
    let out = as_user(
        1001,
        &format!("python3 -c {}", shell_quote(std::path::Path::new(&script))),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[6000]",
        "every handle listed the whole directory"
    );
    let peak = peak_rss_mib(mount.pid());
    eprintln!("peak RSS with 150 handles of 6,000 entries: {peak} MiB");
    assert!(
        peak <= BOUND_AT_64_MIB,
        "peak RSS {peak} MiB over the bound of {BOUND_AT_64_MIB} MiB"
    );
}

#[test]
fn many_files_written_at_once_by_another_user_stay_within_the_memory_bound() {
    let bucket = TestBucket::new();
    // 24 MiB of write budget (four 5 MiB parts) and a 16 MiB overdraft at --max-memory 64.
    let mount = Mount::new(
        &bucket.name,
        &[
            "--allow-other",
            "--max-memory",
            "64",
            "--write-part-size",
            "5M",
        ],
    );
    let dir = mount.join("w");
    sh_ok(&format!("mkdir -m 777 {}", shell_quote(&dir)));
    // 40 threads each fill a part of their own file and hold it until all have: past the
    // budget and the overdraft, every part was held in memory (over 200 MiB); now they are
    // staged on local disk.
    const FILES: usize = 40;
    let script = format!(
        "import os, threading\n\
         n = {FILES}\n\
         barrier = threading.Barrier(n)\n\
         errors = []\n\
         def body(i):\n\
         \x20   return (('file %02d ' % i) * 200000).encode()[:1 << 20]\n\
         def work(i):\n\
         \x20   try:\n\
         \x20       fd = os.open('{dir}/f%02d' % i, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
         \x20       chunk = body(i)\n\
         \x20       for _ in range(6):\n\
         \x20           view = memoryview(chunk)\n\
         \x20           while view:\n\
         \x20               view = view[os.write(fd, view):]\n\
         \x20       barrier.wait()\n\
         \x20       os.close(fd)\n\
         \x20   except Exception as e:\n\
         \x20       errors.append('%d: %r' % (i, e))\n\
         \x20       barrier.abort()\n\
         threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]\n\
         [t.start() for t in threads]\n\
         [t.join() for t in threads]\n\
         print(errors)\n",
        dir = dir.display()
    );
    let out = as_user(
        1001,
        &format!("python3 -c {}", shell_quote(std::path::Path::new(&script))),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let peak = peak_rss_mib(mount.pid());
    eprintln!("peak RSS with {FILES} files of 6 MiB written at once: {peak} MiB");
    for i in 0..FILES {
        let chunk: Vec<u8> = format!("file {i:02} ")
            .repeat(200_000)
            .into_bytes()
            .into_iter()
            .take(1 << 20)
            .collect();
        let stored = bucket.get(&format!("w/f{i:02}"));
        assert_eq!(stored.len(), 6 << 20, "w/f{i:02}");
        assert!(
            stored.chunks(1 << 20).all(|c| c == chunk),
            "w/f{i:02} differs"
        );
    }
    assert!(
        peak <= BOUND_AT_64_MIB,
        "peak RSS {peak} MiB over the bound of {BOUND_AT_64_MIB} MiB"
    );
}

#[test]
fn the_metrics_endpoint_cannot_be_made_to_hold_memory() {
    use std::io::Write;
    let bucket = TestBucket::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mount = Mount::new(
        &bucket.name,
        &["--metrics-addr", &addr, "--max-memory", "64"],
    );
    // A request line without end: 256 MiB, then a scrape by someone else.
    let mut flood = std::net::TcpStream::connect(&addr).unwrap();
    let chunk = vec![b'A'; 1 << 20];
    for _ in 0..256 {
        if flood.write_all(&chunk).is_err() {
            break; // the server stopped reading and closed: what it should do
        }
    }
    let mut scrape = std::net::TcpStream::connect(&addr).unwrap();
    write!(scrape, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let peak = peak_rss_mib(mount.pid());
    eprintln!("peak RSS after a 256 MiB request line: {peak} MiB");
    assert!(peak <= BOUND_AT_64_MIB, "peak RSS {peak} MiB");
}

/// Runs bucketfs in the foreground on `bucket` with `--state-dir state`, expecting it to
/// refuse (exit before mounting). One that mounts instead is ended and unmounted, and the
/// test fails.
fn refused_mount(bucket: &str, state: &std::path::Path) -> std::process::Output {
    let mnt = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bucketfs_bin())
        .arg(bucket)
        .arg(mnt.path())
        .arg("-f")
        .arg("--state-dir")
        .arg(state)
        .envs(env_for(&server().endpoint))
        .env("AWS_ACCESS_KEY_ID", access_key())
        .env("AWS_SECRET_ACCESS_KEY", secret_key())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bucketfs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            unmount(mnt.path());
            panic!("bucketfs mounted with a state directory it should have refused");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn another_users_directories_in_a_shared_state_dir_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let bucket = TestBucket::new();
    // A state directory shared the way /tmp is (root's, mode 1777).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let state = shell_quote(shared.path());
    // Another user makes the upload journals' directory first: they could plant journals
    // (uploads to abort) or links (files to truncate) in it.
    let made = as_user(1001, &format!("mkdir {state}/uploads"));
    assert!(made.status.success(), "{made:?}");
    let out = refused_mount(&bucket.name, shared.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to uid 1001"), "{err}");
    assert!(err.contains("--state-dir"), "{err}");
    // The log directory made a link to a directory of theirs.
    sh_ok(&format!("rm -r {state}/uploads"));
    let victim = tempfile::tempdir().unwrap();
    let made = as_user(
        1001,
        &format!("ln -s {} {state}/log", shell_quote(victim.path())),
    );
    assert!(made.status.success(), "{made:?}");
    let out = refused_mount(&bucket.name, shared.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(victim.path()).unwrap().count(),
        0,
        "nothing was written through the link"
    );
}

/// A tmpfs of its own (so its usage is this test's alone), unmounted when dropped.
struct OwnTmpfs(tempfile::TempDir);

impl OwnTmpfs {
    fn new(size_mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        sh_ok(&format!(
            "mount -t tmpfs -o size={size_mib}m,mode=0755 tmpfs {}",
            shell_quote(dir.path())
        ));
        Self(dir)
    }
}

impl Drop for OwnTmpfs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", shell_quote(self.0.path())));
    }
}

#[test]
fn another_user_cannot_fill_the_disk_past_the_cache_bound() {
    let bucket = TestBucket::new();
    let cache = OwnTmpfs::new(128);
    let cache_dir = cache.0.path().display().to_string();
    let mount = Mount::new(
        &bucket.name,
        &[
            "--allow-other",
            "--cache-dir",
            &cache_dir,
            "--max-cache-size",
            "32",
        ],
    );
    let dir = mount.join("w");
    sh_ok(&format!("mkdir -m 777 {}", shell_quote(&dir)));
    // O_RDWR: every byte written goes to local disk until close. 64 MiB are tried; the
    // usage of the cache's filesystem is taken while the file is still open.
    let script = format!(
        "import os\n\
         fd = os.open('{dir}/big', os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)\n\
         chunk = b'x' * (1 << 20)\n\
         written, err = 0, None\n\
         try:\n\
         \x20   for _ in range(64):\n\
         \x20       written += os.write(fd, chunk)\n\
         except OSError as e:\n\
         \x20   err = e.errno\n\
         st = os.statvfs('{cache_dir}')\n\
         print(written, err, (st.f_blocks - st.f_bfree) * st.f_frsize)\n\
         os.close(fd)\n",
        dir = dir.display()
    );
    let out = as_user(
        1001,
        &format!("python3 -c {}", shell_quote(std::path::Path::new(&script))),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{stdout}");
    let written: u64 = fields[0].parse().unwrap();
    let used: u64 = fields[2].parse().unwrap();
    eprintln!("written before ENOSPC: {written} bytes; cache filesystem used: {used} bytes");
    assert_eq!(fields[1], libc::ENOSPC.to_string(), "{stdout}");
    assert!(
        written <= 32 << 20,
        "{written} bytes written past a 32 MiB bound"
    );
    assert!(
        used <= 33 << 20,
        "the cache's filesystem holds {used} bytes"
    );
    assert_eq!(
        bucket.get("w/big").len() as u64,
        written,
        "every byte the writes took is stored at close"
    );
}

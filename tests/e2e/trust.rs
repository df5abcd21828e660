//! Trust: acknowledged bytes are never lost and old versions never destroyed, under renames of
//! open files, kills, odd keys and signals. Each test reproduces a finding of the trust issue
//! on a real mount and checks the server through its API.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

#[test]
fn a_file_renamed_while_being_written_keeps_every_byte() {
    let bucket = TestBucket::new();
    let mount = Mount::new(&bucket.name, &[]);
    let (w1, w2) = (mount.join("w1.bin"), mount.join("w2.bin"));
    // 20 MiB (several 8 MiB parts: a multipart upload is under way), rename, 1 MiB more.
    let script = r#"
import os, sys
first = bytes(range(256)) * (20 * 4096)
second = bytes(reversed(range(256))) * 4096
with open(sys.argv[1], "wb") as f:
    f.write(first)
    os.rename(sys.argv[1], sys.argv[2])
    f.write(second)
print(os.stat(sys.argv[2]).st_size)
"#;
    let out = python(script, &[w1.to_str().unwrap(), w2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "22020096");
    let mut expected: Vec<u8> = (0..=255u8).cycle().take(20 << 20).collect();
    expected.extend((0..=255u8).rev().cycle().take(1 << 20));
    let stored = bucket.get("w2.bin");
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected, "the object holds other bytes");
    assert_eq!(bucket.keys(), ["w2.bin"]);
    assert!(
        bucket.open_uploads().is_empty(),
        "{:?}",
        bucket.open_uploads()
    );
}

#[test]
fn a_kill_during_an_overwrite_keeps_the_old_object_and_the_next_mount_aborts_the_orphan() {
    let bucket = TestBucket::new();
    let old = random_bytes(24 << 20, 11);
    bucket.put("big.bin", old.clone());
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let mut mount = Mount::new(&bucket.name, &["--state-dir", &state_arg]);
    // An overwrite (dd truncates, then writes) and a new file, both mid-upload at the kill.
    let script = format!(
        "(dd if=/dev/urandom of={big} bs=1M count=2000 2>/dev/null &) ; \
         (dd if=/dev/urandom of={new} bs=1M count=2000 2>/dev/null &) ; sleep 0.5",
        big = shell_quote(&mount.join("big.bin")),
        new = shell_quote(&mount.join("new.bin")),
    );
    sh_ok(&script);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bucket.open_uploads().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two writers never started multipart uploads"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    mount.signal(libc::SIGKILL);
    mount.wait_exit(Duration::from_secs(10)).expect("killed");
    drop(mount); // unmounts the dead mount (the dd processes get ENOTCONN and end)
    assert!(bucket.get("big.bin") == old, "the old object was changed");
    assert!(
        !bucket.keys().contains(&"new.bin".to_string()),
        "a new file appeared before its first close"
    );
    assert!(
        bucket.open_uploads().len() >= 2,
        "the crash left its uploads"
    );
    // The next mount of the same bucket with the same state directory cleans them up.
    let mount = Mount::new(&bucket.name, &["--state-dir", &state_arg]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bucket.open_uploads().is_empty() {
        assert!(
            Instant::now() < deadline,
            "orphans left: {:?}\n{}",
            bucket.open_uploads(),
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mount.log().contains("aborted an incomplete upload"));
    assert!(std::fs::read(mount.join("big.bin")).unwrap() == old);
}

#[test]
fn a_key_with_a_control_character_does_not_break_its_directory() {
    let bucket = TestBucket::new();
    bucket.put("weird/ctl\u{1}name.txt", "odd");
    bucket.put("weird/ok.txt", "fine");
    bucket.put("weird/sp ace+plus%.txt", "chars");
    let mount = Mount::new(&bucket.name, &[]);
    let mut names: Vec<String> = std::fs::read_dir(mount.join("weird"))
        .expect("ls weird")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ctl\u{1}name.txt", "ok.txt", "sp ace+plus%.txt"]);
    assert_eq!(
        std::fs::read(mount.join("weird/ctl\u{1}name.txt")).unwrap(),
        b"odd"
    );
    assert_eq!(
        std::fs::read(mount.join("weird/sp ace+plus%.txt")).unwrap(),
        b"chars"
    );
}

#[test]
fn sigterm_stores_a_file_still_open_for_writing_and_exits() {
    let bucket = TestBucket::new();
    let mut mount = Mount::new(&bucket.name, &[]);
    let path = mount.join("open.bin");
    let data = random_bytes(3 << 20, 12);
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, time\n\
             f = open(sys.argv[1], 'wb')\n\
             f.write(sys.stdin.buffer.read())\n\
             f.flush()\n\
             print('written', flush=True)\n\
             time.sleep(120)\n",
        )
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    writer.stdin.take().unwrap().write_all(&data).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "written");
    let started = Instant::now();
    mount.signal(libc::SIGTERM);
    let status = mount.wait_exit(Duration::from_secs(90));
    let _ = writer.kill();
    let _ = writer.wait();
    let status = status.unwrap_or_else(|| panic!("bucketfs hung after SIGTERM:\n{}", mount.log()));
    assert!(status.success(), "{status}\n{}", mount.log());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        bucket.get("open.bin") == data,
        "the open file was not stored"
    );
}

#[test]
fn list_uploads_is_a_dry_run_until_asked_to_abort() {
    let bucket = TestBucket::new();
    bucket.start_upload("left/behind.bin");
    bucket.start_upload("elsewhere/other.bin");
    let run = |extra: &[&str]| {
        let out = Command::new(bucketfs_bin())
            .arg("--list-uploads")
            .arg(format!("{}:left/", bucket.name))
            .args(extra)
            .envs(server_env())
            .output()
            .expect("run bucketfs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&[]);
    assert!(listed.contains("left/behind.bin"), "{listed}");
    assert!(!listed.contains("elsewhere"), "{listed}");
    assert!(listed.contains("dry run"), "{listed}");
    assert_eq!(bucket.open_uploads().len(), 2);
    // moto reports a fixed start date in 2010 for every upload, so the age filter is checked
    // with an age older than that; Garage reports the real start, so an hour does there.
    let age = match server_kind() {
        ServerKind::Moto => "10000d",
        ServerKind::Garage => "1h",
    };
    let none = run(&["--older-than", age, "--abort-uploads"]);
    assert!(none.starts_with("0 incomplete"), "{none}");
    assert_eq!(bucket.open_uploads().len(), 2);
    let aborted = run(&["--abort-uploads"]);
    assert!(aborted.contains("aborted"), "{aborted}");
    let left: Vec<String> = bucket.open_uploads().into_iter().map(|u| u.0).collect();
    assert_eq!(left, ["elsewhere/other.bin"]);
}

#[test]
fn the_last_close_after_the_opener_exited_commits_and_reports() {
    let bucket = TestBucket::new();
    let mount = Mount::new(&bucket.name, &[]);
    let path = mount.join("handed.txt");
    // The opener forks and exits at once; the child writes through the inherited descriptor
    // and closes it: that close must store the file before it returns.
    let script = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
# Taken before the fork: a child that asked after the parent exited would wait forever.
parent = os.getpid()
pid = os.fork()
if pid == 0:
    while os.getppid() == parent:
        time.sleep(0.01)
    time.sleep(0.2)
    os.write(fd, b"written by the child")
    os.close(fd)
    with open(sys.argv[2], "w") as done:
        done.write("closed")
    os._exit(0)
os._exit(0)
"#;
    let done = tempfile::NamedTempFile::new().unwrap();
    let out = python(
        script,
        &[path.to_str().unwrap(), done.path().to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(done.path()).unwrap_or_default() != "closed" {
        assert!(Instant::now() < deadline, "the child never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Checked right after the child's close returned, not after a release that may come later.
    assert_eq!(bucket.get("handed.txt"), b"written by the child");
}

#[test]
fn sigterm_names_a_file_it_could_not_store_and_exits_non_zero() {
    // Its own server, stopped before the signal, so the open file cannot be stored.
    let server = OwnServer::start();
    let client = s3_client(&server.endpoint);
    runtime()
        .block_on(client.create_bucket().bucket("unstorable").send())
        .unwrap();
    let mut mount = Mount::with_endpoint("unstorable", &server.endpoint, &["--max-attempts", "1"]);
    let path = mount.join("stranded.bin");
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, time\n\
             f = open(sys.argv[1], 'wb')\n\
             f.write(b'x' * 4096)\n\
             f.flush()\n\
             print('written', flush=True)\n\
             time.sleep(120)\n",
        )
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "written");
    server.stop();
    mount.signal(libc::SIGTERM);
    let status = mount.wait_exit(Duration::from_secs(90));
    let _ = writer.kill();
    let _ = writer.wait();
    let status = status.unwrap_or_else(|| panic!("bucketfs hung after SIGTERM:\n{}", mount.log()));
    assert_eq!(status.code(), Some(1), "{}", mount.log());
    assert!(
        mount.log().contains("could not store in S3: stranded.bin"),
        "{}",
        mount.log()
    );
}

/// Two mounts of one bucket (two machines' view): a change in place on one never overwrites
/// the other's newer version. Mount A opens `f` (no truncation) and rewrites it; mount B replaces
/// `f`; A's close fails with ESTALE and S3 keeps B's version. The first conditional write of a
/// mount asks once whether the server honours `If-Match` (README: "never another client's
/// version"); which it is, per server, is checked against the log.
#[test]
fn a_change_in_place_on_one_mount_never_overwrites_another_mounts_newer_version() {
    let bucket = TestBucket::new();
    bucket.put("f", "0123456789");
    let a = Mount::new(&bucket.name, &["--metadata-ttl", "0"]);
    let b = Mount::new(&bucket.name, &["--metadata-ttl", "0"]);
    let script = r#"
import errno, sys
fa = open(sys.argv[1], "r+b")
fa.write(b"ABCDEFGHIJ")  # every byte rewritten: the close reads nothing of the old version
fa.flush()
with open(sys.argv[2], "wb") as fb:
    fb.write(b"newer, from mount B")
try:
    fa.close()
    print("closed")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;
    let out = python(
        script,
        &[a.join("f").to_str().unwrap(), b.join("f").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ESTALE");
    assert_eq!(bucket.get("f"), b"newer, from mount B");
    let log = a.log();
    let expected = match server_kind() {
        ServerKind::Moto => "the server honours conditional writes",
        ServerKind::Garage => "the server ignores conditional writes",
    };
    assert!(
        log.contains(expected),
        "{} should say {expected:?}; mount A's log:\n{log}",
        server_kind().name()
    );
    assert_eq!(bucket.keys(), ["f"], "the probe's scratch object is gone");
}

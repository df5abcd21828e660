//! Operating bucketfs as a system service: fstab lines mounted by mount(8) through the
//! `mount.fuse.bucketfs` helper, systemd's `Type=notify` readiness and stop, and the version,
//! completions and man page generated from the command line's definition.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::*;

/// Where util-linux mount(8) looks for the helper of type `fuse.bucketfs`.
const HELPER: &str = "/sbin/mount.fuse.bucketfs";

/// The helper linked to the binary under test for the time of a test (tests using it run one
/// at a time). A link that was there is put back afterwards; one this test made is removed.
struct HelperLink {
    previous: Option<PathBuf>,
    created: bool,
    _serial: MutexGuard<'static, ()>,
}

impl HelperLink {
    fn install() -> Self {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let ours = Path::new(bucketfs_bin());
        let previous = match std::fs::read_link(HELPER) {
            Ok(target) if target == ours => {
                return Self {
                    previous: None,
                    created: false,
                    _serial: serial,
                }
            }
            Ok(target) => {
                std::fs::remove_file(HELPER).expect("remove the helper link for the test");
                Some(target)
            }
            Err(_) if Path::new(HELPER).exists() => {
                panic!("{HELPER} is a file, not a link: the test will not replace it")
            }
            Err(_) => None,
        };
        std::os::unix::fs::symlink(ours, HELPER)
            .unwrap_or_else(|e| panic!("link {HELPER} (the tests run as root): {e}"));
        Self {
            previous,
            created: true,
            _serial: serial,
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(HELPER);
            if let Some(previous) = &self.previous {
                let _ = std::os::unix::fs::symlink(previous, HELPER);
            }
        }
    }
}

/// How many mounts there are on `dir`.
fn mounts_on(dir: &Path) -> usize {
    let wanted = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(wanted.as_str()))
        .count()
}

/// The credentials, but not the endpoint: fstab lines name it with `endpoint-url=`.
fn credentials_env() -> Vec<(&'static str, String)> {
    let mut env = server_env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env
}

/// Runs mount(8) with `args`, passing it the credentials in its environment (mount passes its
/// environment on to the helper).
fn mount_cmd(args: &[&str]) -> Output {
    let mut command = Command::new("mount");
    command
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .envs(credentials_env())
        .env("RUST_LOG", "bucketfs=debug");
    command.output().expect("run mount(8)")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn an_fstab_line_is_mounted_by_mount_and_unmounted_by_umount() {
    let _helper = HelperLink::install();
    let bucket = TestBucket::new();
    bucket.put("photos/hello.txt", "hello from fstab");
    let mnt = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let fstab = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        fstab.path(),
        format!(
            "# bucketfs test\n{}:photos {} fuse.bucketfs \
             _netdev,nofail,endpoint-url={},uid=1234,x-systemd.automount,rw,state_dir={} 0 0\n",
            bucket.name,
            path_str(mnt.path()),
            server().endpoint,
            path_str(state.path()),
        ),
    )
    .unwrap();
    let _unmount = Unmount(mnt.path().to_path_buf());

    let out = mount_cmd(&["-T", path_str(fstab.path()), path_str(mnt.path())]);
    assert_ok(&out, "mount -T FSTAB DIR");
    // mount(8) returns once the mount is live: no waiting.
    assert_eq!(mounts_on(mnt.path()), 1);
    let names: Vec<String> = std::fs::read_dir(mnt.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hello.txt"]);
    let file = mnt.path().join("hello.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello from fstab");
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 1234, "uid=1234");
    std::fs::write(mnt.path().join("new.txt"), "written through fstab").unwrap();
    assert_eq!(bucket.get("photos/new.txt"), b"written through fstab");

    let out = Command::new("umount").arg(mnt.path()).output().unwrap();
    assert_ok(&out, "umount DIR");
    assert_eq!(mounts_on(mnt.path()), 0);
}

#[test]
fn the_helper_finds_home_although_mount_clears_it() {
    // mount(8) runs its helper without HOME; bucketfs takes it from the password database,
    // so ~/.aws and the default state directory (here: the log) are where a login has them.
    let _helper = HelperLink::install();
    let bucket = TestBucket::new();
    bucket.put("x.txt", "x");
    let mnt = tempfile::tempdir().unwrap();
    let fstab = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        fstab.path(),
        format!(
            "{} {} fuse.bucketfs endpoint-url={} 0 0\n",
            bucket.name,
            path_str(mnt.path()),
            server().endpoint,
        ),
    )
    .unwrap();
    let _unmount = Unmount(mnt.path().to_path_buf());
    // SAFETY: getuid cannot fail.
    let home = bucketfs::mount_helper::home_of(unsafe { libc::getuid() }).expect("a home");
    let state = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir).join("bucketfs"),
        _ => home.join(".local/state/bucketfs"),
    };
    let log = state.join("log").join(format!("{}.log", bucket.name));
    let out = mount_cmd(&["-T", path_str(fstab.path()), path_str(mnt.path())]);
    assert_ok(&out, "mount -T FSTAB DIR");
    let found = log.exists();
    let out = Command::new("umount").arg(mnt.path()).output().unwrap();
    assert_ok(&out, "umount DIR");
    let _ = std::fs::remove_file(&log);
    assert!(found, "no log at {} (HOME not restored?)", log.display());
}

#[test]
fn mount_a_mounts_the_auto_lines_once_and_skips_noauto() {
    let _helper = HelperLink::install();
    let bucket = TestBucket::new();
    bucket.put("a.txt", "auto");
    let auto = tempfile::tempdir().unwrap();
    let noauto = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let fstab = tempfile::NamedTempFile::new().unwrap();
    let line = |dir: &Path, extra: &str| {
        format!(
            "{} {} fuse.bucketfs {extra}endpoint_url={},state-dir={},allow_other 0 0\n",
            bucket.name,
            path_str(dir),
            server().endpoint,
            path_str(state.path())
        )
    };
    std::fs::write(
        fstab.path(),
        line(auto.path(), "defaults,") + &line(noauto.path(), "noauto,"),
    )
    .unwrap();
    let _unmount = (
        Unmount(auto.path().to_path_buf()),
        Unmount(noauto.path().to_path_buf()),
    );

    let out = mount_cmd(&["-T", path_str(fstab.path()), "-a"]);
    assert_ok(&out, "mount -a");
    assert_eq!(mounts_on(auto.path()), 1);
    assert_eq!(mounts_on(noauto.path()), 0, "a noauto line is left alone");
    assert_eq!(
        std::fs::read_to_string(auto.path().join("a.txt")).unwrap(),
        "auto"
    );
    // The mount's source is the line's source, so mount(8) sees the line is mounted and
    // leaves it (the helper would also refuse to stack a second mount).
    let out = mount_cmd(&["-T", path_str(fstab.path()), "-a"]);
    assert_ok(&out, "mount -a again");
    assert_eq!(mounts_on(auto.path()), 1, "no second mount stacked");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.contains(path_str(auto.path())) && l.contains(&format!(" {} ", bucket.name))),
        "the mount's source is not the fstab line's:\n{mountinfo}"
    );

    let out = Command::new("umount").arg(auto.path()).output().unwrap();
    assert_ok(&out, "umount");
    assert_eq!(mounts_on(auto.path()), 0);
}

#[test]
fn an_unknown_mount_option_fails_naming_it() {
    let _helper = HelperLink::install();
    let bucket = TestBucket::new();
    let mnt = tempfile::tempdir().unwrap();
    let fstab = tempfile::NamedTempFile::new().unwrap();
    let _unmount = Unmount(mnt.path().to_path_buf());
    for (options, needle) in [
        (
            "nofail,frobnicate=3,uid=5",
            "unknown mount option 'frobnicate'",
        ),
        ("foreground", "'foreground' is not a mount option"),
        ("max_memory", "'max_memory' needs a value"),
    ] {
        std::fs::write(
            fstab.path(),
            format!(
                "{} {} fuse.bucketfs {options},endpoint-url={} 0 0\n",
                bucket.name,
                path_str(mnt.path()),
                server().endpoint
            ),
        )
        .unwrap();
        let out = mount_cmd(&["-T", path_str(fstab.path()), path_str(mnt.path())]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{options}: mount succeeded");
        assert!(stderr.contains(needle), "{options}: {stderr}");
        assert_eq!(mounts_on(mnt.path()), 0);
    }
    // The same list on bucketfs's own command line.
    let out = Command::new(bucketfs_bin())
        .args([
            &bucket.name,
            path_str(mnt.path()),
            "-o",
            "allow_other,bogus",
        ])
        .envs(server_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option 'bogus'"));
}

/// A bucketfs run under a fake service manager: a notify socket of our own.
struct Supervised {
    child: Option<Child>,
    mnt: tempfile::TempDir,
    socket: UnixDatagram,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Supervised {
    fn start(bucket: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let log = dir.path().join("bucketfs.log");
        let child = Command::new(bucketfs_bin())
            .arg(bucket)
            .arg(mnt.path())
            .args(["--state-dir", path_str(&dir.path().join("state"))])
            .args(extra_args)
            .envs(server_env())
            .env("NOTIFY_SOCKET", &path)
            .env("RUST_LOG", "bucketfs=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start bucketfs");
        Self {
            child: Some(child),
            mnt,
            socket,
            log,
            _dir: dir,
        }
    }

    /// Waits for a notification holding `wanted`; every message seen until then.
    fn wait_for(&self, wanted: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {wanted} within {timeout:?}; got {seen:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push_str(&message);
                seen.push('\n');
                if message.lines().any(|l| l == wanted) {
                    return seen;
                }
            }
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "bucketfs still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        unmount(self.mnt.path());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn systemd_notify_says_ready_once_live_and_stopping_on_sigterm() {
    let bucket = TestBucket::new();
    bucket.put("hello.txt", "ready means mounted");
    let mut run = Supervised::start(&bucket.name, &["-f"]);
    let seen = run.wait_for("READY=1", Duration::from_secs(30));
    assert!(seen.contains("STATUS=mounted"), "{seen}");
    // Live at that very moment.
    assert_eq!(
        std::fs::read_to_string(run.mnt.path().join("hello.txt")).unwrap(),
        "ready means mounted"
    );
    // A file still open for writing when the service is stopped is stored.
    use std::io::Write;
    let mut open = std::fs::File::create(run.mnt.path().join("open.txt")).unwrap();
    open.write_all(b"stored at stop").unwrap();
    // SAFETY: kill(2) on the PID of our own child.
    assert_eq!(
        unsafe { libc::kill(run.child().id() as i32, libc::SIGTERM) },
        0
    );
    let seen = run.wait_for("STOPPING=1", Duration::from_secs(30));
    assert!(seen.contains("STATUS=stopping"), "{seen}");
    let status = run.wait_exit(Duration::from_secs(90));
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&run.log).unwrap_or_default()
    );
    drop(open);
    assert_eq!(mounts_on(run.mnt.path()), 0, "unmounted");
    assert_eq!(bucket.get("open.txt"), b"stored at stop");
}

#[test]
fn under_a_notify_socket_bucketfs_stays_in_the_foreground_without_f() {
    let bucket = TestBucket::new();
    let mut run = Supervised::start(&bucket.name, &[]);
    run.wait_for("READY=1", Duration::from_secs(30));
    // The process the service manager started is the one serving the mount.
    assert!(run.child().try_wait().unwrap().is_none(), "it forked away");
    assert_eq!(mounts_on(run.mnt.path()), 1);
    // SAFETY: kill(2) on the PID of our own child.
    assert_eq!(
        unsafe { libc::kill(run.child().id() as i32, libc::SIGTERM) },
        0
    );
    run.wait_for("STOPPING=1", Duration::from_secs(30));
    assert_eq!(run.wait_exit(Duration::from_secs(90)).code(), Some(0));
    assert_eq!(mounts_on(run.mnt.path()), 0);
}

fn bucketfs_stdout(args: &[&str]) -> String {
    let out = Command::new(bucketfs_bin()).args(args).output().unwrap();
    assert_ok(&out, &format!("bucketfs {args:?}"));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_completions_and_man_page_come_from_the_binary() {
    assert_eq!(
        bucketfs_stdout(&["--version"]),
        format!("bucketfs {}\n", env!("CARGO_PKG_VERSION"))
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = bucketfs_stdout(&["--completions", shell]);
        assert!(script.contains("endpoint-url"), "{shell}: {script}");
        assert!(script.contains("bucketfs"), "{shell}");
    }
    // bash loads it and registers the completion.
    let loaded = sh_ok(&format!(
        "source <({} --completions bash) && complete -p bucketfs",
        bucketfs_bin()
    ));
    assert!(loaded.contains("bucketfs"), "{loaded}");

    let page = bucketfs_stdout(&["--man-page"]);
    assert!(page.contains(".TH bucketfs 1"), "{page}");
    assert!(page.contains("endpoint\\-url"), "{page}");
    if Command::new("man").arg("--version").output().is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bucketfs.1");
        std::fs::write(&file, &page).unwrap();
        let out = Command::new("man")
            .args(["-P", "cat", "-l"])
            .arg(&file)
            .env("MANWIDTH", "200")
            .output()
            .unwrap();
        assert_ok(&out, "man -l");
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(rendered.contains("--endpoint-url"), "{rendered}");
        assert!(rendered.contains("--read-only"), "{rendered}");
    }
}

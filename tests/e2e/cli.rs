//! The command line: every pre-mount check fails with its exit status and one clear sentence,
//! and the daemonizing parent reports the real outcome.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::*;

const AWS_VARS: &[&str] = &[
    "AWS_ENDPOINT_URL",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

/// Runs bucketfs with a clean AWS environment plus `env`; no instance metadata service.
fn bucketfs(args: &[&str], env: &[(&str, String)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(bucketfs_bin());
    command.args(args);
    for var in AWS_VARS {
        command.env_remove(var);
    }
    command
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.output().expect("run bucketfs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one clear sentence, got: {err}"
    );
}

#[test]
fn an_invalid_bucket_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    for name in ["Bad_Bucket", "ab", "s3://UPPER/x"] {
        let out = bucketfs(&[name, mnt, "-f"], &server_env());
        assert_fails_with(&out, "invalid bucket name");
    }
}

#[test]
fn a_missing_or_non_directory_mountpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = bucketfs(
        &["some-bucket", missing.to_str().unwrap(), "-f"],
        &server_env(),
    );
    assert_fails_with(&out, "does not exist");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = bucketfs(
        &["some-bucket", file.to_str().unwrap(), "-f"],
        &server_env(),
    );
    assert_fails_with(&out, "is not a directory");
}

#[test]
fn an_unusable_cache_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let out = bucketfs(
        &[
            "some-bucket",
            mnt,
            "-f",
            "--cache-dir",
            "/nonexistent/cache",
        ],
        &server_env(),
    );
    assert_fails_with(&out, "cache directory /nonexistent/cache does not exist");
}

#[test]
fn missing_credentials_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![("AWS_ENDPOINT_URL", server().endpoint.clone())];
    let out = bucketfs(&["some-bucket", dir.path().to_str().unwrap(), "-f"], &env);
    assert_fails_with(&out, "no AWS credentials found");
}

#[test]
fn an_unreachable_endpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = server_env();
    let dead = format!("http://127.0.0.1:{}", free_port());
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", dead.clone()));
    let started = Instant::now();
    let out = bucketfs(
        &[
            "some-bucket",
            dir.path().to_str().unwrap(),
            "-f",
            "--max-attempts",
            "2",
        ],
        &env,
    );
    assert_fails_with(&out, &format!("cannot reach the S3 endpoint {dead}"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in bounded time"
    );
}

#[test]
fn a_missing_bucket_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = bucketfs(
        &["no-such-bucket-here", dir.path().to_str().unwrap(), "-f"],
        &server_env(),
    );
    assert_fails_with(&out, "bucket 'no-such-bucket-here' does not exist");
}

#[test]
fn access_denied_is_reported_and_no_secret_is_printed() {
    // A server that checks credentials: ours are unknown to it. Garage always checks them;
    // moto only when told to, so on moto a second server of the test's own.
    struct Stop(u16);
    impl Drop for Stop {
        fn drop(&mut self) {
            stop_local_s3(self.0);
        }
    }
    let (port, _stop) = match server_kind() {
        ServerKind::Garage => (server().port, None),
        ServerKind::Moto => {
            let port = free_port();
            start_local_s3(port, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
            (port, Some(Stop(port)))
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = "very-secret-value-123";
    let env = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN".to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let out = bucketfs(
        &["some-bucket", dir.path().to_str().unwrap(), "-f", "-d"],
        &env,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("access denied to bucket 'some-bucket'"),
        "{err}"
    );
    assert!(!err.contains(secret), "the secret key leaked: {err}");
}

#[test]
fn daemon_mode_returns_once_mounted_or_with_the_error() {
    let bucket = TestBucket::new();
    bucket.put("hello.txt", "hello from the daemon");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = bucketfs(
        &[
            &bucket.name,
            mnt,
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &server_env(),
    );
    let _guard = Unmount(dir.path().to_path_buf());
    assert!(out.status.success(), "{}", stderr(&out));
    // The mount is live the moment the parent returns.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "hello from the daemon"
    );
    // With no terminal and no --log-file, it logs under the state directory.
    let log = state
        .path()
        .join("log")
        .join(format!("{}.log", bucket.name));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("mounted"), "{}: {logged:?}", log.display());
    // Private: it names keys, and more at debug level.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&log), 0o600, "log file mode");
    assert_eq!(mode(log.parent().unwrap()), 0o700, "log directory mode");
    drop(_guard);

    let other = tempfile::tempdir().unwrap();
    let out = bucketfs(
        &["no-such-bucket-either", other.path().to_str().unwrap()],
        &server_env(),
    );
    assert_fails_with(&out, "bucket 'no-such-bucket-either' does not exist");
}

//! End-to-end test support: a real S3 server (started through `scripts/local-s3`), buckets
//! filled through the S3 API, and real FUSE mounts of the release binary that are always
//! unmounted, on failure too.
//!
//! The server is moto, or a single-node Garage with `BUCKETFS_E2E_SERVER=garage`
//! (`scripts/test` runs the suite on both). A test that only means something on one of them
//! says so with [`skip_unless`], which decides by the server kind alone and prints the skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

/// The local S3 server the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Moto,
    Garage,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Moto => "moto",
            ServerKind::Garage => "garage",
        }
    }

    /// The `scripts/local-s3` arguments that pick this server.
    fn local_s3_args(self) -> &'static [&'static str] {
        match self {
            ServerKind::Moto => &[],
            ServerKind::Garage => &["--garage"],
        }
    }
}

/// `BUCKETFS_E2E_SERVER`: `moto` (the default) or `garage`; anything else is an error.
pub fn server_kind() -> ServerKind {
    static KIND: OnceLock<ServerKind> = OnceLock::new();
    *KIND.get_or_init(|| match std::env::var("BUCKETFS_E2E_SERVER").as_deref() {
        Err(_) | Ok("") | Ok("moto") => ServerKind::Moto,
        Ok("garage") => ServerKind::Garage,
        Ok(other) => panic!("BUCKETFS_E2E_SERVER={other:?}: expected moto or garage"),
    })
}

/// True, after printing a line saying so, when the suite runs on another server than `kind`:
/// the test then returns at once. Decided by the server kind only, never by an outcome. The
/// line goes to the real stderr (not the captured test output), so it shows in every run.
pub fn skip_unless(kind: ServerKind, why: &str) -> bool {
    if server_kind() == kind {
        return false;
    }
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED on {}: {test} runs on {} only: {why}",
        server_kind().name(),
        kind.name()
    );
    true
}

/// The fixed test credentials of the server kind, as `scripts/local-s3 env` prints them
/// (Garage has a key format of its own).
fn credentials() -> &'static (String, String) {
    static CREDS: OnceLock<(String, String)> = OnceLock::new();
    CREDS.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/local-s3"))
            .arg("env")
            .args(server_kind().local_s3_args())
            .output()
            .expect("run scripts/local-s3 env");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("scripts/local-s3 env printed no {name}: {stdout}"))
        };
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    })
}

pub fn access_key() -> &'static str {
    &credentials().0
}

pub fn secret_key() -> &'static str {
    &credentials().1
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bucketfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bucketfs")
}

/// A port nobody listens on right now.
///
/// The port is taken below the kernel's ephemeral range: a server stopped and started again
/// (the cluster and crash tests do that) must find its port free, and a port in the ephemeral
/// range can meanwhile become the local end of any outgoing connection on the machine. Garage
/// aborts when it cannot bind its RPC port.
pub fn free_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(30).max(10_100));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 20)
        ^ (CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 40);
    for _ in 0..1000 {
        // xorshift: enough to spread concurrent tests over the range.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % u64::from(high - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// A port for a server of the suite's kind: Garage also takes the next two (RPC and admin).
pub fn server_port() -> u16 {
    loop {
        let port = free_port();
        if server_kind() == ServerKind::Moto
            || (1..3).all(|k| TcpListener::bind(("127.0.0.1", port + k)).is_ok())
        {
            return port;
        }
    }
}

/// A local S3 server started by `scripts/local-s3`; stopped when the test process exits.
pub struct Server {
    pub port: u16,
    pub endpoint: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();

extern "C" fn stop_server_at_exit() {
    if let Some(server) = SERVER.get() {
        stop_local_s3(server.port);
    }
}

/// Starts `scripts/local-s3` (the suite's server kind) on `port` with extra environment;
/// panics with the script's output when it cannot.
pub fn start_local_s3(port: u16, extra_env: &[(&str, &str)]) {
    let output = Command::new(repo_root().join("scripts/local-s3"))
        .args(["start", "--port", &port.to_string()])
        .args(server_kind().local_s3_args())
        .envs(extra_env.iter().copied())
        .output()
        .expect("run scripts/local-s3 (is python3 installed?)");
    assert!(
        output.status.success(),
        "scripts/local-s3 could not start the S3 server:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn stop_local_s3(port: u16) {
    let _ = Command::new(repo_root().join("scripts/local-s3"))
        .args(["stop", "--port", &port.to_string()])
        .args(server_kind().local_s3_args())
        .stderr(Stdio::null())
        .status();
}

/// A server of the test's own, for tests that stop it (so no other test is disturbed); stopped
/// when dropped, on failure too.
pub struct OwnServer {
    pub port: u16,
    pub endpoint: String,
}

impl OwnServer {
    pub fn start() -> Self {
        let port = server_port();
        start_local_s3(port, &[]);
        Self {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn stop(&self) {
        stop_local_s3(self.port);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let port = server_port();
        start_local_s3(port, &[]);
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(stop_server_at_exit) };
        Server {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    })
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub fn s3_client(endpoint: &str) -> Client {
    let creds =
        aws_sdk_s3::config::Credentials::new(access_key(), secret_key(), None, None, "test");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        // As bucketfs does: Garage refuses the SDK's default streaming (aws-chunked) checksums.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// A fresh bucket on the shared server, accessed through the S3 API (never the mount).
pub struct TestBucket {
    pub name: String,
    pub client: Client,
}

impl TestBucket {
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let client = s3_client(&server().endpoint);
        runtime()
            .block_on(client.create_bucket().bucket(&name).send())
            .expect("create bucket");
        Self { name, client }
    }

    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body = body.into();
        runtime()
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.name)
                    .key(key)
                    .body(ByteStream::from(body))
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// PUT with user metadata (`x-amz-meta-NAME`), as another S3 filesystem stores it.
    pub fn put_with_metadata(&self, key: &str, body: &str, metadata: &[(&str, &str)]) {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body.as_bytes().to_vec()));
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        runtime()
            .block_on(request.send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    pub fn put_many(&self, keys: &[String], body: &[u8]) {
        runtime().block_on(async {
            let mut tasks = Vec::new();
            for chunk in keys.chunks(keys.len().div_ceil(16).max(1)) {
                let client = self.client.clone();
                let bucket = self.name.clone();
                let chunk = chunk.to_vec();
                let body = body.to_vec();
                tasks.push(tokio::spawn(async move {
                    for key in chunk {
                        client
                            .put_object()
                            .bucket(&bucket)
                            .key(&key)
                            .body(ByteStream::from(body.clone()))
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                    }
                }));
            }
            for task in tasks {
                task.await.expect("put task");
            }
        });
    }

    /// The bytes the server holds for `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        runtime().block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            out.body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec()
        })
    }

    /// The user metadata the server holds for `key` (names without `x-amz-meta-`).
    pub fn metadata(&self, key: &str) -> std::collections::HashMap<String, String> {
        runtime().block_on(async {
            let out = self
                .client
                .head_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
            out.metadata().cloned().unwrap_or_default()
        })
    }

    /// Multipart uploads neither completed nor aborted: (key, upload id).
    pub fn open_uploads(&self) -> Vec<(String, String)> {
        runtime().block_on(async {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.name)
                .send()
                .await
                .expect("list multipart uploads");
            out.uploads()
                .iter()
                .map(|u| {
                    (
                        u.key().unwrap_or_default().to_string(),
                        u.upload_id().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
    }

    /// Starts a multipart upload as a crashed program would leave it; returns its id.
    pub fn start_upload(&self, key: &str) -> String {
        runtime()
            .block_on(
                self.client
                    .create_multipart_upload()
                    .bucket(&self.name)
                    .key(key)
                    .send(),
            )
            .expect("create multipart upload")
            .upload_id()
            .expect("upload id")
            .to_string()
    }

    /// Every key the server holds, in order.
    pub fn keys(&self) -> Vec<String> {
        runtime().block_on(async {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.name)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list");
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
                token = out.next_continuation_token().map(String::from);
                if token.is_none() {
                    break;
                }
            }
            keys
        })
    }
}

/// Environment for bucketfs pointing at the shared server.
pub fn server_env() -> Vec<(&'static str, String)> {
    env_for(&server().endpoint)
}

/// Environment for bucketfs pointing at `endpoint` with the test credentials.
pub fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", access_key().to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret_key().to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(wanted.as_str()))
}

/// Unmounts `dir` with fusermount3 (lazily if busy).
pub fn unmount(dir: &Path) {
    if !is_mounted(dir) {
        return;
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(dir)
            .status();
    }
}

/// Unmounts the directory when dropped, whatever happened in the test (for mounts the test
/// did not start as a `Mount`: daemonized ones, mount(8)'s).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// A live mount of the release binary, run in the foreground as our child. Dropping it
/// unmounts and ends the child, whatever happened in the test.
pub struct Mount {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The state directory (upload journal) when the mount made its own.
    own_state: Option<PathBuf>,
}

impl Mount {
    pub fn new(bucket: &str, extra_args: &[&str]) -> Self {
        Self::with_endpoint(bucket, &server().endpoint, extra_args)
    }

    pub fn with_endpoint(bucket: &str, endpoint: &str, extra_args: &[&str]) -> Self {
        Self::with_credentials(bucket, endpoint, access_key(), secret_key(), extra_args)
    }

    pub fn with_credentials(
        bucket: &str,
        endpoint: &str,
        access_key: &str,
        secret_key: &str,
        extra_args: &[&str],
    ) -> Self {
        Self::start(bucket, endpoint, (access_key, secret_key), extra_args, &[])
    }

    /// A mount with more environment (set after the defaults, so it can replace RUST_LOG).
    pub fn with_env(bucket: &str, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        Self::start(
            bucket,
            &server().endpoint,
            (access_key(), secret_key()),
            extra_args,
            extra_env,
        )
    }

    fn start(
        bucket: &str,
        endpoint: &str,
        (access_key, secret_key): (&str, &str),
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        let fusermount = Command::new("fusermount3").arg("-V").output();
        assert!(
            fusermount.is_ok(),
            "fusermount3 is missing: install fuse3 (apt-get install fuse3); .ci/run does this"
        );
        let dir = tempfile::Builder::new()
            .prefix("bucketfs-mnt-")
            .tempdir()
            .expect("temp mountpoint");
        let log = dir.path().with_extension("log");
        // Each mount keeps its journal apart unless the test shares one on purpose.
        let own_state =
            (!extra_args.contains(&"--state-dir")).then(|| dir.path().with_extension("state"));
        let state_args: Vec<String> = match &own_state {
            Some(state) => vec!["--state-dir".into(), state.display().to_string()],
            None => Vec::new(),
        };
        let child = Command::new(bucketfs_bin())
            .arg(bucket)
            .arg(dir.path())
            .arg("-f")
            .args(extra_args)
            .args(&state_args)
            .envs(env_for(endpoint))
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .env("RUST_LOG", "bucketfs=debug")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start bucketfs");
        let mut mount = Mount {
            dir,
            child: Some(child),
            own_state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mount.path()) {
            if let Some(status) = mount
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("bucketfs exited ({status}) before mounting:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "bucketfs did not mount within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` to the bucketfs process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of our own child.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits up to `timeout` for bucketfs to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the mount has logged so far (at debug level).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(self.dir.path());
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if let Some(state) = &self.own_state {
            let _ = std::fs::remove_dir_all(state);
        }
        let log = self.dir.path().with_extension("log");
        if std::thread::panicking() {
            eprintln!("bucketfs log kept for the failed test: {}", log.display());
        } else {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Runs a shell command line, returning its output; panics if it cannot start.
pub fn sh(script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run bash")
}

/// Runs a shell command line that must succeed, returning its stdout.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

pub use bucketfs::testdata::random_bytes;

//! A replicated cluster underneath: a 3-node Garage (replication factor 3) from
//! `scripts/local-s3`, mounted through node 0. One node killed during a 1 GiB read and during
//! a 200 MiB write: both finish with correct data. All nodes down: operations fail with EIO
//! within a bounded time. Nodes back: the same mount works again, without a remount.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The cluster, stopped (and its data removed) when dropped, on failure too.
struct Cluster {
    port: u16,
    endpoint: String,
    env: Vec<(String, String)>,
}

/// A port P with P..P+22 free: node I listens on P+10*I, +1 and +2.
fn cluster_port() -> u16 {
    for _ in 0..200 {
        let port = free_port();
        let all_free = (0..3).all(|node| {
            (0..3).all(|k| TcpListener::bind(("127.0.0.1", port + 10 * node + k)).is_ok())
        });
        if all_free {
            return port;
        }
    }
    panic!("no free port range for a 3-node cluster");
}

impl Cluster {
    fn start() -> Self {
        let port = cluster_port();
        let out = Command::new(repo_root().join("scripts/local-s3"))
            .args([
                "start",
                "--garage",
                "--nodes",
                "3",
                "--port",
                &port.to_string(),
            ])
            .output()
            .expect("run scripts/local-s3");
        let cluster = Self {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            env: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(
            out.status.success(),
            "the Garage cluster did not start (scripts/test installs Garage):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    fn node(&self, action: &str, node: u32) {
        let out = Command::new(repo_root().join("scripts/local-s3"))
            .args([action, &node.to_string(), "--garage", "--nodes", "3"])
            .args(["--port", &self.port.to_string()])
            .stdout(Stdio::null())
            .output()
            .expect("run scripts/local-s3");
        assert!(
            out.status.success(),
            "{action} {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn var(&self, name: &str) -> &str {
        &self
            .env
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("{name} not printed by scripts/local-s3"))
            .1
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "test",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            // Garage refuses the SDK's default streaming (aws-chunked) checksums.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/local-s3"))
            .args([
                "stop",
                "--garage",
                "--nodes",
                "3",
                "--port",
                &self.port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn md5_of(path: &std::path::Path) -> String {
    let out = sh_ok(&format!("md5sum < {}", shell_quote(path)));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_replicated_cluster_survives_a_node_and_comes_back_after_losing_all() {
    // The cluster is Garage whatever the suite's server: it runs once, in the Garage run.
    if skip_unless(ServerKind::Garage, "it starts a Garage cluster of its own") {
        return;
    }
    let cluster = Cluster::start();
    let client = cluster.client();
    runtime()
        .block_on(client.create_bucket().bucket("replicated").send())
        .expect("create bucket");
    // 1 GiB object, written through the S3 API from a local file.
    let scratch = tempfile::tempdir().unwrap();
    let big = scratch.path().join("big.bin");
    sh_ok(&format!(
        "head -c 1073741824 /dev/urandom > {}",
        shell_quote(&big)
    ));
    let big_md5 = md5_of(&big);
    let body = runtime()
        .block_on(aws_sdk_s3::primitives::ByteStream::from_path(&big))
        .unwrap();
    runtime()
        .block_on(
            client
                .put_object()
                .bucket("replicated")
                .key("big.bin")
                .body(body)
                .send(),
        )
        .expect("put 1 GiB");
    // A key XML 1.0 cannot carry, on Garage too (listings ask for EncodingType=url).
    for key in ["weird/ctl\u{1}name.txt", "weird/ok.txt"] {
        runtime()
            .block_on(
                client
                    .put_object()
                    .bucket("replicated")
                    .key(key)
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                    .send(),
            )
            .expect("put a small key");
    }
    let env: Vec<(String, String)> = cluster.env.clone();
    let mount = MountWith::new("replicated", &cluster.endpoint, &env);
    let mut names: Vec<String> = std::fs::read_dir(mount.0.join("weird"))
        .expect("ls weird")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ctl\u{1}name.txt", "ok.txt"]);

    // A node dies during a 1 GiB read.
    let started = Instant::now();
    let reader = Command::new("md5sum")
        .stdin(std::fs::File::open(mount.0.join("big.bin")).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.node("stop-node", 1);
    let out = reader.wait_with_output().unwrap();
    let read_secs = started.elapsed().as_secs_f64();
    let read_md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(read_md5, big_md5, "the 1 GiB read returned other bytes");
    cluster.node("start-node", 1);

    // A node dies during a 200 MiB write.
    let src = scratch.path().join("w.bin");
    sh_ok(&format!(
        "head -c 209715200 /dev/urandom > {}",
        shell_quote(&src)
    ));
    let src_md5 = md5_of(&src);
    let started = Instant::now();
    let writer = Command::new("cp")
        .arg(&src)
        .arg(mount.0.join("w.bin"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.node("stop-node", 2);
    let status = writer.wait_with_output().unwrap().status;
    let write_secs = started.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "cp into the mount failed\n{}",
        mount.0.log()
    );
    cluster.node("start-node", 2);
    let stored = runtime().block_on(async {
        let out = client
            .get_object()
            .bucket("replicated")
            .key("w.bin")
            .send()
            .await
            .expect("get w.bin");
        out.body.collect().await.unwrap().into_bytes()
    });
    let copy = scratch.path().join("w.copy");
    std::fs::write(&copy, &stored).unwrap();
    assert_eq!(
        md5_of(&copy),
        src_md5,
        "the 200 MiB write stored other bytes"
    );

    // All nodes down: operations fail with EIO, within a bounded time.
    for node in 0..3 {
        cluster.node("stop-node", node);
    }
    let started = Instant::now();
    let lookup = std::fs::metadata(mount.0.join("never-seen.txt"));
    let write = std::fs::write(mount.0.join("down.txt"), b"nowhere to go");
    let down_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        lookup.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{lookup:?}"
    );
    assert_eq!(
        write.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "{write:?}"
    );
    assert!(
        down_secs < 60.0,
        "failing took {down_secs:.1}s with every node down"
    );

    // Nodes back: the same mount works again.
    for node in 0..3 {
        cluster.node("start-node", node);
    }
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match std::fs::write(mount.0.join("back.txt"), b"back again") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster: not yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("the mount did not work again after the nodes came back: {e}"),
        }
    }
    let back_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        std::fs::read(mount.0.join("back.txt")).unwrap(),
        b"back again"
    );
    eprintln!(
        "cluster: 1 GiB read with a node killed {read_secs:.1}s; 200 MiB write with a node \
         killed {write_secs:.1}s; every node down: lookup and write failed with EIO in \
         {down_secs:.2}s; nodes back: first write after {back_secs:.1}s"
    );
}

/// A mount with the cluster's credentials.
struct MountWith(Mount);

impl MountWith {
    fn new(bucket: &str, endpoint: &str, env: &[(String, String)]) -> Self {
        let key = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Self(Mount::with_credentials(
            bucket,
            endpoint,
            &key("AWS_ACCESS_KEY_ID"),
            &key("AWS_SECRET_ACCESS_KEY"),
            &["--max-attempts", "3"],
        ))
    }
}

//! HTTPS endpoints with a private CA: a CA and a server certificate for 127.0.0.1 and localhost
//! made with the openssl CLI, a TLS terminator (Python's asyncio and ssl modules) in front of
//! the suite's local S3 server, and mounts that trust the CA through --ca-bundle or
//! AWS_CA_BUNDLE, or stop before mounting with one clear sentence without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::support::*;

/// Terminates TLS on 127.0.0.1:PORT with CERT and KEY and relays the bytes to 127.0.0.1:BACKEND
/// (so requests reach the server exactly as signed). Prints `ready` once listening, and a line
/// on stderr for every completed handshake.
const TLS_TERMINATOR: &str = r#"
import asyncio, ssl, sys
port, cert, key, backend = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

async def pump(reader, writer):
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def handle(client_r, client_w):
    print("handshake completed", file=sys.stderr, flush=True)
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", backend)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/install-deps installs openssl")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `ca_name` (ca.pem) and a certificate it issued for 127.0.0.1 and localhost
/// (server.pem, server.key) in `dir`.
fn make_certificates(dir: &Path, ca_name: &str) {
    let subject = format!("/CN={ca_name}");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run("openssl", &ca, dir);
    let mut request = vec!["req", "-new"];
    request.extend(ec);
    request.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run("openssl", &request, dir);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        dir,
    );
}

/// An HTTPS endpoint on 127.0.0.1 for the shared server, with its own CA; the terminator is
/// killed when dropped, on failure too.
struct TlsEndpoint {
    dir: tempfile::TempDir,
    endpoint: String,
    terminator: Child,
}

impl TlsEndpoint {
    fn start() -> Self {
        let backend = server().port;
        let dir = tempfile::Builder::new()
            .prefix("bucketfs-tls-")
            .tempdir()
            .unwrap();
        make_certificates(dir.path(), "bucketfs test CA");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("terminator.log")).unwrap();
        let mut terminator = Command::new("python3")
            .arg("-c")
            .arg(TLS_TERMINATOR)
            .arg(port.to_string())
            .arg(dir.path().join("server.pem"))
            .arg(dir.path().join("server.key"))
            .arg(backend.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = terminator.stdout.take().unwrap();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let endpoint = TlsEndpoint {
            endpoint: format!("https://127.0.0.1:{port}"),
            dir,
            terminator,
        };
        assert_eq!(
            line.trim(),
            "ready",
            "the TLS terminator did not start:\n{}",
            endpoint.log()
        );
        endpoint
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("terminator.log")).unwrap_or_default()
    }

    /// How many TLS handshakes the terminator completed.
    fn handshakes(&self) -> usize {
        self.log().matches("handshake completed").count()
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.terminator.kill();
        let _ = self.terminator.wait();
    }
}

/// Runs bucketfs with the test credentials for `endpoint`, no AWS_CA_BUNDLE unless `env` sets
/// one, no profile files and no instance metadata service.
fn bucketfs(args: &[&str], endpoint: &str, env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(bucketfs_bin())
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env("HOME", home.path())
        .envs(env_for(endpoint))
        .envs(env.iter().copied())
        .output()
        .expect("run bucketfs")
}

/// Exit status 1 and one line on stderr that holds every one of `needles`.
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one clear sentence, got: {err}"
    );
}

/// Writes a file through `dir`, reads it back there, and checks that the server holds it.
fn write_read_and_check(dir: &Path, bucket: &TestBucket, key: &str, seed: u64) {
    let data = random_bytes((9 << 20) + 5, seed);
    std::fs::write(dir.join(key), &data).unwrap();
    assert!(std::fs::read(dir.join(key)).unwrap() == data, "read back");
    assert!(bucket.get(key) == data, "the server holds other bytes");
}

#[test]
fn a_private_ca_given_with_ca_bundle_is_trusted() {
    let tls = TlsEndpoint::start();
    let bucket = TestBucket::new();
    bucket.put("hello.txt", "hello over TLS");
    let ca = tls.ca();
    let mount = Mount::with_endpoint(
        &bucket.name,
        &tls.endpoint,
        &["--ca-bundle", ca.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("hello.txt")).unwrap(),
        "hello over TLS"
    );
    write_read_and_check(mount.path(), &bucket, "written.bin", 31);
    assert_eq!(bucket.keys(), ["hello.txt", "written.bin"]);
    assert!(tls.handshakes() > 0, "nothing went through TLS");
}

#[test]
fn a_private_ca_given_in_aws_ca_bundle_is_trusted() {
    let tls = TlsEndpoint::start();
    let bucket = TestBucket::new();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Daemonized: the parent returns once mounted, or with the error.
    let out = bucketfs(
        &[
            &bucket.name,
            dir.path().to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &tls.endpoint,
        &[("AWS_CA_BUNDLE", tls.ca().to_str().unwrap())],
    );
    let _guard = Unmount(dir.path().to_path_buf());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_read_and_check(dir.path(), &bucket, "from-env.bin", 32);
    assert!(tls.handshakes() > 0, "nothing went through TLS");
}

#[test]
fn an_untrusted_certificate_stops_the_mount_with_a_hint() {
    let tls = TlsEndpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let out = bucketfs(&["some-bucket", mnt, "-f"], &tls.endpoint, &[]);
    assert_fails_with(
        &out,
        &[
            &format!(
                "the TLS certificate of the S3 endpoint {} is not trusted",
                tls.endpoint
            ),
            "UnknownIssuer",
            "--ca-bundle FILE",
        ],
    );
    // A CA bundle of some other CA does not help.
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path(), "some other CA");
    let other_ca = other.path().join("ca.pem");
    let args = [
        "some-bucket",
        mnt,
        "-f",
        "--ca-bundle",
        other_ca.to_str().unwrap(),
    ];
    let out = bucketfs(&args, &tls.endpoint, &[]);
    assert_fails_with(&out, &["is not trusted", "UnknownIssuer"]);
    // https:// to a server that speaks plain HTTP.
    let plain = format!("https://127.0.0.1:{}", server().port);
    let out = bucketfs(&["some-bucket", mnt, "-f"], &plain, &[]);
    assert_fails_with(
        &out,
        &[&format!(
            "TLS handshake with the S3 endpoint {plain} failed"
        )],
    );
}

#[test]
fn an_unusable_ca_bundle_is_refused_naming_the_file() {
    let tls = TlsEndpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let missing = dir.path().with_extension("missing-ca.pem");
    let missing = missing.to_str().unwrap();
    let out = bucketfs(
        &["some-bucket", mnt, "-f", "--ca-bundle", missing],
        &tls.endpoint,
        &[],
    );
    assert_fails_with(
        &out,
        &[
            &format!("cannot read the CA bundle {missing}"),
            "No such file",
        ],
    );
    let out = bucketfs(
        &["some-bucket", mnt, "-f"],
        &tls.endpoint,
        &[("AWS_CA_BUNDLE", missing)],
    );
    assert_fails_with(&out, &[&format!("cannot read the CA bundle {missing}")]);
    // A PEM file without a certificate (the server's private key).
    let key = tls.dir.path().join("server.key");
    let key = key.to_str().unwrap();
    let out = bucketfs(
        &["some-bucket", mnt, "-f", "--ca-bundle", key],
        &tls.endpoint,
        &[],
    );
    assert_fails_with(&out, &[&format!("CA bundle {key} holds no certificate")]);
    // A certificate block that is no certificate.
    let broken = dir.path().with_extension("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let broken_arg = broken.to_str().unwrap();
    let out = bucketfs(
        &["some-bucket", mnt, "-f", "--ca-bundle", broken_arg],
        &tls.endpoint,
        &[],
    );
    let _ = std::fs::remove_file(&broken);
    assert_fails_with(
        &out,
        &[&format!(
            "CA bundle {broken_arg}: certificate 1 cannot be used"
        )],
    );
    assert_eq!(tls.handshakes(), 0, "a refused bundle still connected");
}

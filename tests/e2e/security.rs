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

//! Random operations through a real mount, checked against a local reference directory
//! (tests/random_ops.py): every outcome and the whole state must agree, during the run and
//! again after an unmount and a new mount (everything acknowledged was stored).

use std::process::Command;

use crate::support::*;

fn random_ops(mount: &Mount, reference: &std::path::Path, seed: u64, phase: &str) {
    let script = repo_root().join("tests/random_ops.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--mount")
        .arg(mount.path())
        .arg("--reference")
        .arg(reference)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--ops")
        .arg(std::env::var("BUCKETFS_RANDOM_OPS").unwrap_or_else(|_| "300".into()))
        .arg("--phase")
        .arg(phase)
        .output()
        .expect("run python3 tests/random_ops.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "random operations, seed {seed}, phase {phase}: {}\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{}", stdout.trim());
}

#[test]
fn random_operations_agree_with_a_local_directory_and_survive_a_remount() {
    let seed: u64 = std::env::var("BUCKETFS_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let bucket = TestBucket::new();
    let reference = tempfile::tempdir().unwrap();
    // Parts of 5 MiB, so files of up to 12 MiB take several; no metadata cache, so every
    // check sees what the server holds.
    let args = ["--write-part-size", "5M", "--metadata-ttl", "0"];
    let mount = Mount::new(&bucket.name, &args);
    random_ops(&mount, reference.path(), seed, "run");
    drop(mount);
    let mount = Mount::new(&bucket.name, &args);
    random_ops(&mount, reference.path(), seed, "compare");
}

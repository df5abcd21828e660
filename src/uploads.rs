//! Incomplete multipart uploads: the ones a crashed bucketfs left (found through its journal
//! and aborted at the next mount of the same bucket and prefix), and `--list-uploads`, which
//! lists and optionally aborts those any program left under a prefix.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::fs::journal::{dead_journals, scope_dir, UploadJournal};
use crate::store::{ObjectStore, StoreError};

/// The journal directory of one mount: endpoint, bucket and prefix.
pub fn journal_scope(
    state_dir: &Path,
    endpoint: Option<&str>,
    bucket: &str,
    prefix: &str,
) -> std::path::PathBuf {
    scope_dir(state_dir, endpoint.unwrap_or("aws"), bucket, prefix)
}

/// Aborts every upload the journals of dead processes in `scope` list, then starts this
/// process's journal. Returns the journal and how many uploads were aborted.
pub async fn recover_and_start_journal<S: ObjectStore>(
    store: &S,
    scope: &Path,
) -> Result<(Arc<UploadJournal>, usize), String> {
    let mut aborted = 0;
    for dead in dead_journals(scope) {
        let mut all_done = true;
        for upload in &dead.uploads {
            match store.abort_multipart(&upload.key, &upload.upload_id).await {
                Ok(()) => {
                    aborted += 1;
                    info!(
                        key = %upload.key,
                        "aborted an incomplete upload a previous bucketfs left (crash or kill)"
                    );
                }
                // Completed or aborted since: nothing left to clean.
                Err(StoreError::NotFound) | Err(StoreError::InvalidRequest(_)) => {}
                Err(e) => {
                    all_done = false;
                    warn!(key = %upload.key, "could not abort an upload a previous bucketfs left: {e}");
                }
            }
        }
        if all_done {
            dead.finish();
        }
    }
    let journal = UploadJournal::create(scope).map_err(|e| {
        format!(
            "cannot create the upload journal in {} (--state-dir): {e}",
            scope.display()
        )
    })?;
    Ok((Arc::new(journal), aborted))
}

/// `--list-uploads`: prints the incomplete uploads under `prefix` started at least
/// `older_than` ago, and aborts them with `abort`. Returns how many were listed.
pub async fn list_and_abort<S: ObjectStore>(
    store: &S,
    prefix: &str,
    older_than: Duration,
    abort: bool,
    out: &mut impl std::io::Write,
) -> Result<usize, String> {
    let now = SystemTime::now();
    let uploads = store
        .list_uploads(prefix)
        .await
        .map_err(|e| format!("cannot list the incomplete uploads: {e}"))?;
    let old: Vec<_> = uploads
        .into_iter()
        .filter(|u| now.duration_since(u.initiated).unwrap_or_default() >= older_than)
        .collect();
    let write = |out: &mut dyn std::io::Write, line: String| {
        writeln!(out, "{line}").map_err(|e| format!("cannot write the list: {e}"))
    };
    write(
        out,
        format!(
            "{} incomplete upload(s) under '{prefix}' started at least {}s ago",
            old.len(),
            older_than.as_secs()
        ),
    )?;
    let mut failed = 0;
    for upload in &old {
        let age = now.duration_since(upload.initiated).unwrap_or_default();
        let mut line = format!(
            "{:>8}s ago  {}  {}",
            age.as_secs(),
            upload.upload_id,
            upload.key
        );
        if abort {
            match store.abort_multipart(&upload.key, &upload.upload_id).await {
                Ok(()) => line.push_str("  aborted"),
                Err(e) => {
                    failed += 1;
                    line.push_str(&format!("  NOT aborted: {e}"));
                }
            }
        }
        write(out, line)?;
    }
    if !abort && !old.is_empty() {
        write(out, "dry run: pass --abort-uploads to abort them".into())?;
    }
    if failed > 0 {
        return Err(format!("{failed} upload(s) could not be aborted"));
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::PutOptions;

    #[tokio::test]
    async fn a_dead_journal_s_uploads_are_aborted_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let scope = journal_scope(dir.path(), Some("http://x"), "b", "");
        let store = MemoryStore::new();
        let id = store
            .create_multipart("k", &PutOptions::default())
            .await
            .unwrap();
        {
            let journal = UploadJournal::create(&scope).unwrap();
            journal.record("k", &id);
            journal.record("gone", "no-such-upload");
            // Dropped with uploads in flight: as a killed process leaves it.
        }
        let (_journal, aborted) = recover_and_start_journal(&store, &scope).await.unwrap();
        assert_eq!(aborted, 1);
        assert_eq!(store.open_uploads(), 0);
        assert_eq!(
            std::fs::read_dir(&scope).unwrap().count(),
            1,
            "only this process's journal is left"
        );
    }

    #[tokio::test]
    async fn listing_is_a_dry_run_unless_asked_to_abort() {
        let store = MemoryStore::new();
        for key in ["p/a", "p/b", "q/c"] {
            store
                .create_multipart(key, &PutOptions::default())
                .await
                .unwrap();
        }
        let mut out = Vec::new();
        let n = list_and_abort(&store, "p/", Duration::ZERO, false, &mut out)
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(store.open_uploads(), 3, "dry run");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("p/a") && !text.contains("q/c"), "{text}");
        let n = list_and_abort(
            &store,
            "p/",
            Duration::from_secs(3600),
            true,
            &mut Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(n, 0, "none is an hour old");
        list_and_abort(&store, "p/", Duration::ZERO, true, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(store.open_uploads(), 1);
    }
}

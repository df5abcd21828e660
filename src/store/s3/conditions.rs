//! Conditional writes (`If-Match`, `If-None-Match`) on S3: sent with the request where the
//! server honours them, so a write never replaces a version it did not see. Whether it does is
//! asked once, with a scratch object (`probe_conditions`); a server that ignores them (the
//! request succeeds anyway) gets a HEAD check right before each conditional request instead,
//! which leaves a window of one round trip.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use tracing::{info, warn};

use super::{classify, metadata_or_none, S3Store};
use crate::store::{
    check_expected, Expect, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart,
};

/// Name of the scratch object of the probe, beside the first key written conditionally.
const PROBE_NAME: &str = ".bucketfs-condition-probe";

/// What the server refuses when a condition fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Honoured {
    /// PutObject and CompleteMultipartUpload with `If-Match` / `If-None-Match`.
    pub writes: bool,
    /// DeleteObject with `If-Match` (AWS since 2025, Ceph; not every server that honours
    /// conditional writes does).
    pub deletes: bool,
}

impl S3Store {
    /// Which conditions the server honours. Asked once; an answer that could not be had (a
    /// failed probe) counts as "none" for now and is asked again at the next conditional
    /// request.
    pub(super) async fn honoured(&self, near: &str) -> Honoured {
        if let Some(known) = self.conditions.get() {
            return *known;
        }
        let dir = near.rfind('/').map_or("", |i| &near[..=i]);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let probe = format!("{dir}{PROBE_NAME}-{}-{nonce}", std::process::id());
        match self.probe_conditions(&probe).await {
            Ok(honoured) => {
                if honoured.writes {
                    info!("the server honours conditional writes (If-Match, If-None-Match)");
                } else {
                    warn!(
                        "the server ignores conditional writes (If-Match, If-None-Match): each is \
                         checked with a HEAD right before it instead, so another client's write \
                         in that moment can still be replaced"
                    );
                }
                if !honoured.deletes {
                    info!(
                        "the server ignores conditional deletes (If-Match): a delete of one \
                         version is checked with a HEAD right before it"
                    );
                }
                let _ = self.conditions.set(honoured);
                honoured
            }
            Err(e) => {
                warn!(
                    "could not find out whether the server honours conditional writes ({e}): \
                     this request is checked with a HEAD before it"
                );
                Honoured {
                    writes: false,
                    deletes: false,
                }
            }
        }
    }

    /// PUT `probe`; PUT it again with `If-None-Match: *` and with `If-Match` of a version it
    /// is not (both must fail); DELETE it with that `If-Match` (honoured when it fails); DELETE
    /// it.
    async fn probe_conditions(&self, probe: &str) -> StoreResult<Honoured> {
        let none = PutOptions::default();
        self.put(probe, Bytes::new(), &none).await?;
        let absent = self
            .put_sending(probe, Bytes::new(), &none, Some(&Expect::Absent))
            .await;
        let other = "\"bucketfs-no-such-version\"";
        let version = self
            .put_sending(
                probe,
                Bytes::new(),
                &none,
                Some(&Expect::Version(other.to_string())),
            )
            .await;
        let conditional_delete = self.delete_sending(probe, Some(other)).await;
        let deleted = match self.delete(probe).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        };
        let refused = |answer: StoreResult<()>| match answer {
            Err(StoreError::PreconditionFailed) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        let writes = refused(absent.map(drop))? && refused(version.map(drop))?;
        let deletes = refused(conditional_delete)?;
        deleted?;
        Ok(Honoured { writes, deletes })
    }

    pub(super) async fn put_expecting_s3(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        if !self.honoured(key).await.writes {
            // Not sent: a server that does not know the headers might refuse the request.
            check_expected(self, key, expect).await?;
            return self.put(key, body, opts).await;
        }
        self.put_sending(key, body, opts, Some(expect)).await
    }

    /// PutObject, with the condition sent when there is one (a server that ignores it writes
    /// anyway). Every PutObject of the store goes through here.
    pub(super) async fn put_sending(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: Option<&Expect>,
    ) -> StoreResult<Option<String>> {
        let _permit = self.connection().await;
        let (if_match, if_none_match) = headers(expect);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .set_content_type(opts.content_type.clone())
            .set_metadata(metadata_or_none(opts))
            .set_if_match(if_match)
            .set_if_none_match(if_none_match);
        let out = with_upload_options!(request, opts)
            .send()
            .await
            .map_err(|e| conditional(classify(e, key), expect))?;
        Ok(out.e_tag().map(str::to_string))
    }

    pub(super) async fn complete_expecting_s3(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        if !self.honoured(key).await.writes {
            check_expected(self, key, expect).await?;
            return self.complete_multipart(key, upload_id, parts).await;
        }
        self.complete_sending(key, upload_id, parts, Some(expect))
            .await
    }

    /// CompleteMultipartUpload, with the condition sent when there is one. Every completion
    /// of the store goes through here.
    pub(super) async fn complete_sending(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: Option<&Expect>,
    ) -> StoreResult<Option<String>> {
        let _permit = self.connection().await;
        let completed = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .set_e_tag(p.etag.clone())
                    .build()
            })
            .collect();
        let (if_match, if_none_match) = headers(expect);
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .send()
            .await
            .map_err(|e| conditional(classify(e, key), expect))?;
        Ok(out.e_tag().map(str::to_string))
    }

    /// DeleteObject of one version only: sent with `If-Match` where the server honours
    /// conditional deletes, checked with a HEAD right before it elsewhere. Another version
    /// there (or none) is not an error: there is nothing of that version to delete.
    pub(super) async fn delete_version_s3(&self, key: &str, etag: &str) -> StoreResult<()> {
        let sent = if self.honoured(key).await.deletes {
            self.delete_sending(key, Some(etag)).await
        } else {
            match check_expected(self, key, &Expect::Version(etag.to_string())).await {
                Ok(()) => self.delete_sending(key, None).await,
                Err(e) => Err(e),
            }
        };
        match sent {
            Ok(()) | Err(StoreError::NotFound) | Err(StoreError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// DeleteObject, with `If-Match` when given. Every DeleteObject of the store goes through
    /// here.
    pub(super) async fn delete_sending(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> StoreResult<()> {
        let _permit = self.connection().await;
        let expect = if_match.map(|etag| Expect::Version(etag.to_string()));
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| conditional(classify(e, key), expect.as_ref()))?;
        Ok(())
    }
}

/// The request headers of `expect`: (If-Match, If-None-Match).
fn headers(expect: Option<&Expect>) -> (Option<String>, Option<String>) {
    match expect {
        None => (None, None),
        Some(Expect::Absent) => (None, Some("*".to_string())),
        Some(Expect::Version(etag)) => (Some(etag.clone()), None),
    }
}

/// A conditional write on a key that is gone (404) failed its condition; AWS answers a race
/// between two conditional writes with 409 ConditionalRequestConflict.
/// (Unconditional requests keep their errors as they are.)
fn conditional(error: StoreError, expect: Option<&Expect>) -> StoreError {
    if expect.is_none() {
        return error;
    }
    match error {
        StoreError::NotFound => StoreError::PreconditionFailed,
        StoreError::InvalidRequest(m) if m.contains("ConditionalRequestConflict") => {
            StoreError::PreconditionFailed
        }
        other => other,
    }
}

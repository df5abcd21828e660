//! The aws-sdk-s3 implementation of [`ObjectStore`].
//!
//! Retries with backoff for throttling and transient errors come from the SDK's standard retry
//! strategy (bounded by `max_attempts`); the number of requests in flight, and so of open
//! connections, is bounded by a semaphore.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::sync::Semaphore;

use aws_sdk_s3::types::{
    EncodingType, GlacierJobParameters, ObjectCannedAcl, RestoreRequest, ServerSideEncryption,
    StorageClass, Tier,
};

use super::buffers::{BufferPool, POOLED_MIN};
use super::{
    Expect, ListPage, ObjectInfo, ObjectStore, PutOptions, StoreError, StoreResult, UploadedPart,
};

/// Sets the mount-wide upload options (storage class, encryption, ACL) on any request builder
/// that creates an object (PutObject, CreateMultipartUpload, CopyObject).
macro_rules! with_upload_options {
    ($builder:expr, $opts:expr) => {
        $builder
            .set_storage_class($opts.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption($opts.sse.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id($opts.sse_kms_key_id.clone())
            .set_acl($opts.acl.as_deref().map(ObjectCannedAcl::from))
    };
}

mod buckets;
mod conditions;
mod connect;
mod errors;

pub use buckets::BucketInfo;
pub use connect::S3Settings;
use errors::classify;

/// A key from a listing with `EncodingType=url`: `+` is a space and `%XX` a byte (the form
/// S3 and botocore use); `None` when the bytes are not UTF-8.
fn url_decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `bucket/key` for the copy-source header, percent-encoded as S3 requires.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in format!("{bucket}/{key}").bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn metadata_or_none(opts: &PutOptions) -> Option<HashMap<String, String>> {
    if opts.user_metadata.is_empty() {
        None
    } else {
        Some(opts.user_metadata.clone())
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Bounds requests in flight, and with them open connections.
    permits: Arc<Semaphore>,
    sdk_config: aws_config::SdkConfig,
    buffers: Arc<BufferPool>,
    /// Whether the server refuses writes whose condition fails (see `conditions`).
    conditions: tokio::sync::OnceCell<conditions::Honoured>,
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl S3Store {
    /// One UploadPart of `len` bytes (from memory or from a file).
    async fn send_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: ByteStream,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        let _permit = self.connection().await;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(UploadedPart {
            number,
            etag: out.e_tag().map(str::to_string),
        })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn buffers(&self) -> Option<&Arc<BufferPool>> {
        Some(&self.buffers)
    }

    async fn check_bucket(&self) -> StoreResult<()> {
        let _permit = self.connection().await;
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(match classify(e, &self.bucket) {
                StoreError::NotFound => StoreError::NoSuchBucket(self.bucket.clone()),
                other => other,
            }),
        }
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectInfo> {
        let _permit = self.connection().await;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(str::to_string),
            last_modified: to_system_time(out.last_modified()),
            user_metadata: out.metadata().cloned().unwrap_or_else(HashMap::new),
            content_type: out.content_type().map(str::to_string),
            storage_class: out.storage_class().map(|c| c.as_str().to_string()),
            version_id: out.version_id().map(str::to_string),
            restore: out.restore().map(str::to_string),
        })
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> StoreResult<ListPage> {
        let _permit = self.connection().await;
        let mut request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .set_max_keys(max_keys);
        if delimited {
            request = request.delimiter("/");
        }
        // URL-encoded keys: a key holding a character XML 1.0 cannot carry (such as \x01)
        // would otherwise make the whole page unreadable.
        request = request.encoding_type(EncodingType::Url);
        let out = request.send().await.map_err(|e| classify(e, prefix))?;
        // A server that ignores the request answers without EncodingType: keys are then raw.
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let name = |raw: &str| -> Option<String> {
            if !encoded {
                return Some(raw.to_string());
            }
            let decoded = url_decode(raw);
            if decoded.is_none() {
                tracing::debug!(raw, "listed key is not UTF-8 once decoded: hidden");
            }
            decoded
        };
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: name(o.key()?)?,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                    last_modified: to_system_time(o.last_modified()),
                    user_metadata: HashMap::new(),
                    content_type: None,
                    storage_class: None,
                    version_id: None,
                    restore: None,
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| name(p.prefix()?))
            .collect();
        let next_token = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next_token,
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let _permit = self.connection().await;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        let expected = (range.end - range.start) as usize;
        let mut body = out.body;
        let read_error =
            |e: ByteStreamError| StoreError::Transient(format!("reading the response body: {e}"));
        if expected < POOLED_MIN {
            let data = body.collect().await.map_err(read_error)?;
            return Ok(data.into_bytes());
        }
        let mut buf = self.buffers.take(expected);
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.map_err(read_error)?);
        }
        Ok(buf.freeze())
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<Option<String>> {
        self.put_sending(key, body, opts, None).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.delete_sending(key, None).await
    }

    async fn put_expecting(
        &self,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.put_expecting_s3(key, body, opts, expect).await
    }

    async fn complete_multipart_expecting(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        expect: &Expect,
    ) -> StoreResult<Option<String>> {
        self.complete_expecting_s3(key, upload_id, parts, expect)
            .await
    }

    async fn delete_version(&self, key: &str, etag: &str) -> StoreResult<()> {
        self.delete_version_s3(key, etag).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let _permit = self.connection().await;
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(opts.content_type.clone())
            .set_metadata(metadata_or_none(opts));
        let out = with_upload_options!(request, opts)
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<UploadedPart> {
        let len = body.len() as u64;
        self.send_part(key, upload_id, number, ByteStream::from(body), len)
            .await
    }

    /// The body is read from the file as it is sent (through `/proc/self/fd`, which reopens
    /// even an unnamed file), so retries can send it again and no part is held in memory.
    async fn upload_part_from_file(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        file: &std::fs::File,
        len: u64,
    ) -> StoreResult<UploadedPart> {
        use std::os::fd::AsRawFd;
        let body = ByteStream::read_from()
            .path(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .length(aws_sdk_s3::primitives::Length::Exact(len))
            .buffer_size(256 << 10) // the default 4 KiB reads would cost a syscall per page
            .build()
            .await
            .map_err(|e| StoreError::Other(format!("reading a part staged on disk: {e}")))?;
        self.send_part(key, upload_id, number, body, len).await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        self.upload_part_copy_between(
            key,
            upload_id,
            number,
            &self.bucket,
            source,
            range,
            if_match,
        )
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> StoreResult<Option<String>> {
        self.complete_sending(key, upload_id, parts, None).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let _permit = self.connection().await;
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(())
    }

    async fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<super::PendingUpload>> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let _permit = self.connection().await;
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| classify(e, prefix))?;
            for upload in out.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    found.push(super::PendingUpload {
                        key: key.to_string(),
                        upload_id: id.to_string(),
                        initiated: to_system_time(upload.initiated()),
                    });
                }
            }
            if out.is_truncated() != Some(true) {
                return Ok(found);
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(found);
            }
        }
    }

    async fn restore(&self, key: &str, days: u32, tier: Option<&str>) -> StoreResult<()> {
        let mut request = RestoreRequest::builder().days(days.min(i32::MAX as u32) as i32);
        if let Some(tier) = tier {
            let job = GlacierJobParameters::builder()
                .tier(Tier::from(tier))
                .build()
                .map_err(|e| StoreError::InvalidRequest(format!("restore tier: {e}")))?;
            request = request.glacier_job_parameters(job);
        }
        let _permit = self.connection().await;
        self.client
            .restore_object()
            .bucket(&self.bucket)
            .key(key)
            .restore_request(request.build())
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(())
    }

    async fn presign_get(&self, key: &str, expires: std::time::Duration) -> StoreResult<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::InvalidRequest(format!("presigning: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| StoreError::Other(format!("presigning failed: {e}")))?;
        Ok(request.uri().to_string())
    }

    async fn copy(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
    ) -> StoreResult<Option<String>> {
        self.copy_between(&self.bucket, source, dest, opts, replace_metadata, None)
            .await
    }

    async fn copy_if_match(
        &self,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: &str,
    ) -> StoreResult<Option<String>> {
        self.copy_between(
            &self.bucket,
            source,
            dest,
            opts,
            replace_metadata,
            Some(if_match),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_source, url_decode};

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(url_decode("a+b%2Bc%01d").as_deref(), Some("a b+c\u{1}d"));
        assert_eq!(url_decode("caf%C3%A9/").as_deref(), Some("café/"));
        assert_eq!(url_decode("bad%FF"), None, "not UTF-8: hidden");
    }

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(copy_source("b", "a/b c+d%é"), "b/a/b%20c%2Bd%25%C3%A9");
    }
}

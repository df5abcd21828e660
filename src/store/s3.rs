//! The aws-sdk-s3 implementation of [`ObjectStore`].
//!
//! Retries with backoff for throttling and transient errors come from the SDK's standard retry
//! strategy (bounded by `max_attempts`); the number of requests in flight, and so of open
//! connections, is bounded by a semaphore.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, ByteStreamError};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::TrustStore;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use bytes::Bytes;
use tokio::sync::Semaphore;

use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, EncodingType, GlacierJobParameters,
    MetadataDirective, ObjectCannedAcl, RestoreRequest, ServerSideEncryption, StorageClass, Tier,
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

mod conditions;

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

/// How to reach the store. Secrets live only in `static_credentials` and are never logged.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// PEM file of CA certificates trusted besides the system's (--ca-bundle, AWS_CA_BUNDLE).
    pub ca_bundle: Option<PathBuf>,
    pub profile: Option<String>,
    pub no_sign_request: bool,
    /// (access key, secret key, session token) from S3_ACCESS_KEY/S3_SECRET_KEY.
    pub static_credentials: Option<(String, String, Option<String>)>,
    pub max_attempts: u32,
    pub max_connections: usize,
    /// Idle receive buffers kept for reuse, in bytes (see `buffers`).
    pub receive_pool_bytes: usize,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("force_path_style", &self.force_path_style)
            .field("ca_bundle", &self.ca_bundle)
            .field("profile", &self.profile)
            .field("no_sign_request", &self.no_sign_request)
            .field("static_credentials", &self.static_credentials.is_some())
            .finish()
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
    conditions: tokio::sync::OnceCell<bool>,
}

/// Reads a PEM bundle of CA certificates into a trust store of the system's roots plus these.
/// Each certificate is checked here as rustls will check it: the SDK's client only parses the
/// bundle at its first connection, and panics on a certificate it cannot use.
fn read_ca_bundle(path: &Path) -> Result<TrustStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        format!("cannot read the CA bundle {shown} (--ca-bundle or AWS_CA_BUNDLE): {e}")
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "CA bundle {shown}: certificate {} is not valid PEM: {e}",
                i + 1
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "CA bundle {shown}: certificate {} cannot be used as a CA: {e}",
                i + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA bundle {shown} holds no certificate (expected PEM blocks starting with \
             -----BEGIN CERTIFICATE-----)"
        ));
    }
    tracing::debug!(path = %shown, certificates = roots.len(), "CA bundle loaded");
    Ok(TrustStore::default().with_pem_certificate(pem))
}

/// The SDK's default HTTPS client (rustls with aws-lc, proxy settings from the environment),
/// built the way aws-smithy-runtime builds it but trusting `trust_store`.
fn https_client(trust_store: TrustStore) -> Result<SharedHttpClient, String> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext};
    let context = TlsContext::builder()
        .with_trust_store(trust_store)
        .build()
        .map_err(|e| format!("cannot set up TLS: {}", DisplayErrorContext(e)))?;
    Ok(
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut builder = aws_smithy_http_client::ConnectorBuilder::default()
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .tls_context(context.clone());
                builder.set_connector_settings(settings.cloned());
                if let Some(components) = components {
                    builder.set_sleep_impl(components.sleep_impl());
                }
                builder.set_proxy_config(Some(ProxyConfig::from_env()));
                builder.build()
            },
        ),
    )
}

impl S3Store {
    /// Builds the client; fails (before any request) only on an unusable `ca_bundle`.
    pub async fn new(settings: &S3Settings) -> Result<Self, String> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()));
        if let Some(path) = &settings.ca_bundle {
            // The credential providers (STS, SSO) use this client too.
            loader = loader.http_client(https_client(read_ca_bundle(path)?)?);
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if settings.no_sign_request {
            loader = loader.no_credentials();
        } else if let Some((access, secret, token)) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                access,
                secret,
                token.clone(),
                None,
                "S3_ACCESS_KEY",
            ));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.force_path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            // Checksums only where the API requires them: several S3-compatible stores reject
            // or mishandle the newer default trailing checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(super::observe::RequestObserver)
            .build();
        Ok(Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
            permits: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            sdk_config,
            buffers: BufferPool::new(settings.receive_pool_bytes),
            conditions: tokio::sync::OnceCell::new(),
        })
    }

    /// Resolves credentials once, so that a missing or broken credential chain is reported
    /// before mounting. Returns `Ok(false)` when requests go unsigned.
    pub async fn check_credentials(&self) -> Result<bool, String> {
        use aws_credential_types::provider::ProvideCredentials;
        match self.sdk_config.credentials_provider() {
            None => Ok(false),
            Some(provider) => provider
                .provide_credentials()
                .await
                .map(|_| true)
                .map_err(|e| DisplayErrorContext(e).to_string()),
        }
    }

    /// Waits for one of the `--max-connections` request slots; held until the request ends.
    async fn connection(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Maps an SDK error to its kind, by HTTP status first (HEAD responses carry no error code).
/// `detail` with access key IDs replaced by `<access key id>`: some servers name the key in
/// their messages (Garage: "Access key GK… is not allowed…"), and error messages are logged.
/// AWS key IDs are AKIA/ASIA and 16 more capitals or digits; Garage's are GK and 24 hex digits.
fn redact_key_ids(detail: &str) -> String {
    let is_key_id = |word: &str| {
        let aws = (word.starts_with("AKIA") || word.starts_with("ASIA"))
            && word.len() == 20
            && word
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let garage = word.len() == 26
            && word.starts_with("GK")
            && word[2..].bytes().all(|b| b.is_ascii_hexdigit());
        aws || garage
    };
    let mut out = String::with_capacity(detail.len());
    let mut word = String::new();
    for c in detail.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() {
            word.push(c);
            continue;
        }
        out.push_str(if is_key_id(&word) {
            "<access key id>"
        } else {
            &word
        });
        word.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The store's error for a failed request about `key` (an object key, a prefix or the
/// bucket). Its message names the key, the S3 error code and the HTTP status, so the log line
/// of a failure says which file and why.
fn classify<E>(err: SdkError<E, aws_smithy_runtime_api::http::Response>, key: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("").to_string();
    let detail = match (err.message(), status) {
        (Some(m), Some(s)) => format!("{code} (HTTP {s}): {m}"),
        (Some(m), None) => format!("{code}: {m}"),
        (None, Some(s)) if !code.is_empty() => format!("{code} (HTTP {s})"),
        (None, Some(s)) => format!("HTTP {s}"),
        (None, None) => DisplayErrorContext(&err).to_string(),
    };
    let message = format!("{key}: {}", redact_key_ids(&detail));
    match (status, code.as_str()) {
        (_, "NoSuchBucket") => StoreError::NoSuchBucket(message),
        (_, "BucketAlreadyExists" | "BucketAlreadyOwnedByYou") => StoreError::BucketExists(message),
        (_, "BucketNotEmpty") => StoreError::BucketNotEmpty(message),
        (_, "InvalidBucketName") => StoreError::InvalidBucketName(message),
        (_, "NoSuchKey") | (Some(404), _) => StoreError::NotFound,
        (_, "InvalidObjectState") => StoreError::Archived(message),
        (_, "AccessDenied") | (Some(403), _) => StoreError::AccessDenied(message),
        (_, "PreconditionFailed") | (Some(412), _) => StoreError::PreconditionFailed,
        (_, "SlowDown") | (_, "Throttling") | (Some(429), _) => StoreError::Throttled(message),
        (Some(s), _) if s >= 500 => StoreError::Transient(message),
        (Some(s), _) if s >= 400 => StoreError::InvalidRequest(message),
        (Some(301), _) => StoreError::Other(format!(
            "the bucket is in another region (HTTP 301 redirect); pass --region: {message}"
        )),
        _ => StoreError::Transient(message),
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
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
        let _permit = self.connection().await;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(())
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
        let _permit = self.connection().await;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(UploadedPart {
            number,
            etag: out.e_tag().map(str::to_string),
        })
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

/// A bucket the credentials can list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created: SystemTime,
}

/// Bucket-level operations, for a mount of every bucket (see `store::buckets`).
impl S3Store {
    /// The same client, connections and buffers, on another bucket.
    pub fn for_bucket(&self, bucket: &str) -> Self {
        Self {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            permits: self.permits.clone(),
            sdk_config: self.sdk_config.clone(),
            buffers: self.buffers.clone(),
            // The same server: what it honours is known once asked.
            conditions: self.conditions.clone(),
        }
    }

    pub fn region(&self) -> Option<&str> {
        self.sdk_config.region().map(|r| r.as_ref())
    }

    pub async fn list_buckets(&self) -> StoreResult<Vec<BucketInfo>> {
        let _permit = self.connection().await;
        let out = self
            .client
            .list_buckets()
            .send()
            .await
            .map_err(|e| classify(e, "ListBuckets"))?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| {
                Some(BucketInfo {
                    name: b.name()?.to_string(),
                    created: to_system_time(b.creation_date()),
                })
            })
            .collect())
    }

    /// CreateBucket in the client's region (no location constraint in us-east-1, which
    /// refuses one).
    pub async fn create_bucket(&self, name: &str) -> StoreResult<()> {
        let mut request = self.client.create_bucket().bucket(name);
        if let Some(region) = self.region().filter(|r| *r != "us-east-1") {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        let _permit = self.connection().await;
        request.send().await.map_err(|e| classify(e, name))?;
        Ok(())
    }

    pub async fn delete_bucket(&self, name: &str) -> StoreResult<()> {
        let _permit = self.connection().await;
        self.client
            .delete_bucket()
            .bucket(name)
            .send()
            .await
            .map_err(|e| classify(e, name))?;
        Ok(())
    }

    /// UploadPartCopy from a key of another bucket.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_part_copy_between(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source_bucket: &str,
        source: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<UploadedPart> {
        let _permit = self.connection().await;
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(source_bucket, source))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(e, key))?;
        Ok(UploadedPart {
            number,
            etag: out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .map(str::to_string),
        })
    }

    /// CopyObject from a key of another bucket, conditioned on the source's ETag when
    /// `if_match` is given.
    pub async fn copy_between(
        &self,
        source_bucket: &str,
        source: &str,
        dest: &str,
        opts: &PutOptions,
        replace_metadata: bool,
        if_match: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let _permit = self.connection().await;
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dest)
            .copy_source(copy_source(source_bucket, source))
            .set_copy_source_if_match(if_match.map(str::to_string));
        if replace_metadata {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .set_content_type(opts.content_type.clone())
                .set_metadata(metadata_or_none(opts));
        }
        let out = with_upload_options!(request, opts)
            .send()
            .await
            .map_err(|e| classify(e, dest))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_source, redact_key_ids, url_decode};

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(url_decode("a+b%2Bc%01d").as_deref(), Some("a b+c\u{1}d"));
        assert_eq!(url_decode("caf%C3%A9/").as_deref(), Some("café/"));
        assert_eq!(url_decode("bad%FF"), None, "not UTF-8: hidden");
    }

    #[test]
    fn access_key_ids_in_server_messages_are_redacted() {
        assert_eq!(
            redact_key_ids(
                "Forbidden: Access key GK1a2b3c4d5e6f708192a3b4c5 is not allowed to create buckets"
            ),
            "Forbidden: Access key <access key id> is not allowed to create buckets"
        );
        assert_eq!(
            redact_key_ids("The AWS Access Key Id AKIAIOSFODNN7EXAMPLE does not exist."),
            "The AWS Access Key Id <access key id> does not exist."
        );
        assert_eq!(redact_key_ids("no key here: GK12"), "no key here: GK12");
    }

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(copy_source("b", "a/b c+d%é"), "b/a/b%20c%2Bd%25%C3%A9");
    }
}

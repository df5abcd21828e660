//! Building the S3 client: region, endpoint, credentials, a CA bundle, retries, timeouts and
//! the bound on requests in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::TrustStore;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use tokio::sync::Semaphore;

use super::S3Store;
use crate::store::buffers::BufferPool;

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
            .interceptor(crate::store::observe::RequestObserver)
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
                .map(|credentials| {
                    // From a profile, SSO or an instance role: known to the log's redaction
                    // from now on.
                    crate::logging::register_secret(credentials.secret_access_key());
                    if let Some(token) = credentials.session_token() {
                        crate::logging::register_secret(token);
                    }
                    true
                })
                .map_err(|e| DisplayErrorContext(e).to_string()),
        }
    }

    /// Waits for one of the `--max-connections` request slots; held until the request ends.
    pub(super) async fn connection(&self) -> tokio::sync::SemaphorePermit<'_> {
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

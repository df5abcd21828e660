//! What a failed request means: the store's error kind, and a message safe to log.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::store::StoreError;

/// `detail` with access key IDs replaced by `<access key id>`: some servers name the key in
/// their messages (Garage: "Access key GK… is not allowed…"), and error messages are logged.
/// AWS key IDs are AKIA/ASIA and 16 more capitals or digits; Garage's are GK and 24 hex digits.
pub(super) fn redact_key_ids(detail: &str) -> String {
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

/// Maps an SDK error to its kind, by HTTP status first (HEAD responses carry no error code).
/// The store's error for a failed request about `key` (an object key, a prefix or the
/// bucket). Its message names the key, the S3 error code and the HTTP status, so the log line
/// of a failure says which file and why.
pub(super) fn classify<E>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    key: &str,
) -> StoreError
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

#[cfg(test)]
mod tests {
    use super::redact_key_ids;

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
}

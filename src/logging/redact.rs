//! Every log line passes through here before it is written: secrets are replaced by
//! `<redacted>`, and control characters are escaped, so no value logged (an object key with a
//! newline, say) can forge a line or drive a terminal.
//!
//! Two nets, because the SDK's own trace output (its signing lines print the canonical
//! request, with `X-Amz-Security-Token`) is not ours to shape: the values of the secrets this
//! process knows (registered as they are read), and the values that follow the names of
//! secret fields (security tokens, signatures, secret keys), whatever their value.

use std::io::{self, Write};
use std::sync::RwLock;

const REDACTED: &str = "<redacted>";

/// Field names whose value is a secret, lower case.
const SECRET_FIELDS: [&str; 5] = [
    "x-amz-security-token",
    "security_token",
    "signature",
    "secret_access_key",
    "aws_secret_access_key",
];

/// Shorter strings are not taken for secrets (they would redact ordinary words).
const MIN_SECRET_LEN: usize = 8;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// From now on, `secret` never appears in a log line.
pub fn register_secret(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
    }
}

/// The secrets of the environment's credential variables, registered before anything logs.
pub fn register_environment_secrets() {
    for name in [
        "S3_SECRET_KEY",
        "S3_SESSION_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        if let Ok(value) = std::env::var(name) {
            register_secret(&value);
        }
    }
}

/// `line` with every secret replaced and control characters escaped (a final newline
/// stays).
pub fn redact(line: &str) -> String {
    let (body, newline) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let mut text = body.to_string();
    for secret in SECRETS.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), REDACTED);
        }
    }
    let text = redact_fields(&text);
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push_str(newline);
    out
}

/// Replaces the value after each secret field name (`name=value`, `name: value`,
/// `"name": "value"`).
fn redact_fields(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        let next = SECRET_FIELDS
            .iter()
            .filter_map(|name| lower[at..].find(name).map(|i| (at + i, name.len())))
            .min();
        let Some((start, len)) = next else {
            break;
        };
        let name_end = start + len;
        // A value follows only after `=` or `:` (a quoted name may close its quote first).
        let after_quote = name_end
            + text[name_end..]
                .find(|c| c != '"' && c != '\'')
                .unwrap_or(0);
        let assigned = text[after_quote..].starts_with(['=', ':']);
        let value_start = if assigned {
            after_quote
                + 1
                + text[after_quote + 1..]
                    .find(|c: char| !matches!(c, ' ' | '"' | '\''))
                    .unwrap_or(text.len() - after_quote - 1)
        } else {
            name_end
        };
        let separated = assigned;
        let value_end = value_start
            + text[value_start..]
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '&' | ',' | ';' | '"' | '\'' | ')' | '}' | ']')
                })
                .unwrap_or(text.len() - value_start);
        out.push_str(&text[at..value_start]);
        if separated && value_end > value_start {
            out.push_str(REDACTED);
        } else {
            out.push_str(&text[value_start..value_end]);
        }
        at = value_end.max(name_end);
    }
    out.push_str(&text[at.min(text.len())..]);
    out
}

/// A log destination whose every write is redacted.
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write_all(redact(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_never_appear() {
        register_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        register_secret("short");
        let line = "secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and short\n";
        assert_eq!(redact(line), "secret <redacted> and short\n");
    }

    #[test]
    fn values_of_secret_fields_are_replaced() {
        let signing = "canonical_request=GET\n/f\nX-Amz-Security-Token=IQoJb3JpZ2luX2VjEJr%2F&X-Amz-Date=2026\nhost:h\nx-amz-security-token:IQoJb3JpZ2luX2VjEJr/\n";
        let out = redact(signing);
        assert!(!out.contains("IQoJ"), "{out}");
        assert!(out.contains("X-Amz-Date=2026"), "{out}");
        let header = r#"Authorization: AWS4-HMAC-SHA256 Credential=AKID/2026/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0123456789abcdef"#;
        let out = redact(header);
        assert!(!out.contains("0123456789abcdef"), "{out}");
        assert!(out.contains("SignedHeaders=host"), "{out}");
        let url = "https://h/b/k?X-Amz-Signature=feedface00&X-Amz-Expires=60";
        assert_eq!(
            redact(url),
            "https://h/b/k?X-Amz-Signature=<redacted>&X-Amz-Expires=60"
        );
        let debug = r#"{"x-amz-security-token": "tok123456789"}"#;
        assert!(!redact(debug).contains("tok123456789"));
    }

    #[test]
    fn words_that_only_mention_a_secret_field_stay() {
        let message =
            "SignatureDoesNotMatch (HTTP 403): The request signature we calculated does not match";
        assert_eq!(redact(message), message);
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let line = "committed key=\"a\n2026-12-07 ERROR forged\x1b[2J\"\n";
        let out = redact(line);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\x1b'), "{out}");
        assert!(out.contains("a\\n2026"), "{out}");
    }
}

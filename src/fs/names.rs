//! Key <-> path rules: which keys are shown, under which name, and which are hidden.
//!
//! A key `a/b/c` is the file `c` in directory `a/b`. Keys that cannot be file names (an empty
//! component as in `a//b`, a `.` or `..` component, a component over 255 bytes) are hidden with
//! a debug log, never an error, so one odd key never breaks a listing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::error::{FsError, FsResult};

/// Longest file name component Linux accepts.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest key S3 accepts.
pub const MAX_KEY_BYTES: usize = 1024;
/// Suffix s3fs uses for old-style directory markers (`dir_$folder$`).
pub const FOLDER_SUFFIX: &str = "_$folder$";

/// Checks a name the kernel handed us and returns it as UTF-8 (S3 keys are UTF-8).
pub fn validate_component(name: &OsStr) -> FsResult<&str> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    let name = std::str::from_utf8(bytes).map_err(|_| FsError::InvalidName)?;
    if !is_valid_component(name) {
        return Err(FsError::InvalidName);
    }
    Ok(name)
}

fn is_valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_BYTES
        && !name.contains('/')
        && !name.contains('\0')
}

/// The key of `name` inside the directory whose key prefix is `dir_prefix` (`""` or ending in
/// `/`), checked against S3's key length limit (counting the `/` a directory marker adds).
pub fn child_key(dir_prefix: &str, name: &str) -> FsResult<String> {
    let key = format!("{dir_prefix}{name}");
    if key.len() + 1 > MAX_KEY_BYTES {
        return Err(FsError::NameTooLong);
    }
    Ok(key)
}

/// What one listing item is, seen from the directory being listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedName<'a> {
    File(&'a str),
    Dir(&'a str),
    /// The directory's own marker (`dir/` listed under `dir/`): not an entry.
    SelfMarker,
    /// Not representable as a file name.
    Hidden,
}

/// Classifies an object key from a delimited listing of `dir_prefix`.
pub fn classify_object_key<'a>(dir_prefix: &str, key: &'a str) -> ListedName<'a> {
    let Some(rest) = key.strip_prefix(dir_prefix) else {
        return ListedName::Hidden;
    };
    if rest.is_empty() {
        return ListedName::SelfMarker;
    }
    if let Some(dir) = rest.strip_suffix(FOLDER_SUFFIX) {
        return if is_valid_component(dir) {
            ListedName::Dir(dir)
        } else {
            ListedName::Hidden
        };
    }
    if is_valid_component(rest) {
        ListedName::File(rest)
    } else {
        ListedName::Hidden
    }
}

/// Classifies a common prefix (`dir_prefix` + `name/`) from a delimited listing.
pub fn classify_common_prefix<'a>(dir_prefix: &str, prefix: &'a str) -> ListedName<'a> {
    match prefix
        .strip_prefix(dir_prefix)
        .and_then(|rest| rest.strip_suffix('/'))
    {
        Some(name) if is_valid_component(name) => ListedName::Dir(name),
        _ => ListedName::Hidden,
    }
}

/// Normalises a mount prefix: no leading `/`, and a trailing `/` unless empty.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_checked() {
        assert_eq!(validate_component(OsStr::new("a b+%ü")), Ok("a b+%ü"));
        assert_eq!(
            validate_component(OsStr::new(".")),
            Err(FsError::InvalidName)
        );
        assert_eq!(
            validate_component(OsStr::new("..")),
            Err(FsError::InvalidName)
        );
        let long = "x".repeat(256);
        assert_eq!(
            validate_component(OsStr::new(&long)),
            Err(FsError::NameTooLong)
        );
        let invalid_utf8 = OsStr::from_bytes(&[0x66, 0xff]);
        assert_eq!(validate_component(invalid_utf8), Err(FsError::InvalidName));
    }

    #[test]
    fn keys_over_the_s3_limit_are_rejected() {
        let dir = format!("{}/", "d".repeat(900));
        assert!(child_key(&dir, &"f".repeat(120)).is_ok());
        assert_eq!(child_key(&dir, &"f".repeat(200)), Err(FsError::NameTooLong));
    }

    #[test]
    fn listed_keys_are_classified() {
        assert_eq!(classify_object_key("a/", "a/f"), ListedName::File("f"));
        assert_eq!(classify_object_key("a/", "a/"), ListedName::SelfMarker);
        assert_eq!(
            classify_object_key("a/", "a/d_$folder$"),
            ListedName::Dir("d")
        );
        assert_eq!(classify_object_key("a/", "a/.."), ListedName::Hidden);
        assert_eq!(
            classify_object_key("", "x".repeat(300).as_str()),
            ListedName::Hidden
        );
        assert_eq!(classify_common_prefix("a/", "a/d/"), ListedName::Dir("d"));
        assert_eq!(classify_common_prefix("a/", "a//"), ListedName::Hidden);
        assert_eq!(classify_common_prefix("a/", "a/./"), ListedName::Hidden);
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("a/b"), "a/b/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }
}

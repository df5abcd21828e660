//! Filesystem errors and the errno each one becomes, chosen on purpose.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    /// A component over 255 bytes or a key over the store's limit.
    #[error("name too long")]
    NameTooLong,
    /// A name that cannot map to a key (empty, `.`/`..`, contains `/` or NUL).
    #[error("invalid name")]
    InvalidName,
    #[error("read-only file system")]
    ReadOnly,
    #[error("operation not supported")]
    NotSupported,
    #[error("bad file handle")]
    BadHandle,
    /// The object changed under an open file (its ETag no longer matches).
    #[error("object changed while open")]
    Stale,
    #[error("permission denied: {0}")]
    AccessDenied(String),
    #[error("directory not empty")]
    NotEmpty,
    #[error("file exists")]
    Exists,
    /// The file is open for writing by another handle of this mount.
    #[error("file busy")]
    Busy,
    #[error("invalid argument")]
    Invalid,
    #[error("file too large")]
    FileTooLarge,
    /// The local disk space for changed bytes of files being written is used up.
    #[error("no space left for changed bytes (--max-cache-size)")]
    NoSpace,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// The object is in an archive storage class and not restored: its bytes are offline.
    #[error(
        "{0}: the object is archived; restore it first (setfattr -n bucketfs.restore -v DAYS \
         FILE on a mount with --xattr, or aws s3api restore-object), then read it once the \
         restore is done (getfattr -n bucketfs.restore FILE)"
    )]
    Archived(String),
    /// More user metadata than S3 keeps (2 KiB).
    #[error("argument list too long")]
    TooBig,
    /// An operation the object does not allow (a read-only attribute, a hard link).
    #[error("operation not permitted")]
    PermissionDenied,
    #[error("I/O error: {0}")]
    Io(String),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::InvalidName => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            // ESTALE tells the reader its open file no longer refers to the object it opened,
            // which is exactly what happened; reopening sees the new object.
            FsError::Stale => libc::ESTALE,
            FsError::AccessDenied(_) => libc::EACCES,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            FsError::Busy => libc::EBUSY,
            FsError::Invalid => libc::EINVAL,
            FsError::FileTooLarge => libc::EFBIG,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NoData => libc::ENODATA,
            // "No data available": the bytes exist but are offline until restored. Not EIO
            // (nothing failed, retrying will not help) nor EACCES (no permission is missing).
            FsError::Archived(_) => libc::ENODATA,
            FsError::TooBig => libc::E2BIG,
            FsError::PermissionDenied => libc::EPERM,
            FsError::Io(_) => libc::EIO,
        }
    }
}

impl From<StoreError> for FsError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => FsError::NotFound,
            StoreError::PreconditionFailed => FsError::Stale,
            StoreError::AccessDenied(m) => FsError::AccessDenied(m),
            StoreError::Archived(m) => FsError::Archived(m),
            StoreError::BucketExists(_) => FsError::Exists,
            StoreError::InvalidBucketName(_) => FsError::Invalid,
            StoreError::BucketNotEmpty(_) => FsError::NotEmpty,
            // A vanished bucket, throttling that outlived the retries, network failures and
            // malformed requests all mean the operation could not be done: EIO, with the cause
            // in the log.
            other => FsError::Io(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_the_intended_errno() {
        let cases = [
            (StoreError::NotFound, libc::ENOENT),
            (StoreError::PreconditionFailed, libc::ESTALE),
            (StoreError::AccessDenied("x".into()), libc::EACCES),
            (StoreError::Throttled("x".into()), libc::EIO),
            (StoreError::Transient("x".into()), libc::EIO),
            (StoreError::NoSuchBucket("x".into()), libc::EIO),
            (StoreError::BucketExists("x".into()), libc::EEXIST),
            (StoreError::InvalidBucketName("x".into()), libc::EINVAL),
            (StoreError::BucketNotEmpty("x".into()), libc::ENOTEMPTY),
            (StoreError::InvalidRequest("x".into()), libc::EIO),
        ];
        for (store_error, errno) in cases {
            assert_eq!(
                FsError::from(store_error.clone()).errno(),
                errno,
                "{store_error:?}"
            );
        }
    }
}

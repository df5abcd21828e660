//! Translations between the filesystem layer's types and FUSE's: attributes, file types,
//! errnos, callers.

use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyXattr, Request, TimeOrNow};
use tracing::{debug, warn};

use crate::fs::attrs::{Kind, Owner};
use crate::fs::error::FsError;
use crate::fs::namespace::Caller;
use crate::fs::Entry;
use crate::metrics::metrics;

/// getxattr/listxattr answer: the size when asked with size 0, the bytes when they fit, else
/// ERANGE.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

pub(super) fn time_or_now(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// An errno answered without asking the filesystem layer, counted for the metrics.
pub(super) fn refused(errno: Errno) -> Errno {
    metrics().fuse_error(errno.code());
    errno
}

/// The errno of a filesystem error, counted for the metrics; failures the user must hear of
/// (EIO, EACCES from S3, archived objects) are logged as warnings.
pub(super) fn errno(err: &FsError) -> Errno {
    metrics().fuse_error(err.errno());
    if matches!(
        err,
        FsError::Io(_) | FsError::AccessDenied(_) | FsError::Archived(_)
    ) {
        warn!("{err}");
    } else {
        debug!("{err}");
    }
    Errno::from_i32(err.errno())
}

/// The attributes the kernel gets for `entry`, with the forced owner (`--uid`, `--gid`).
pub(super) fn file_attr(entry: &Entry, owner: Owner) -> FileAttr {
    let a = &entry.attrs;
    let nlink = match (a.unlinked, a.kind.is_dir()) {
        (true, _) => 0,
        (false, true) => 2,
        (false, false) => 1,
    };
    FileAttr {
        ino: INodeNo(entry.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink,
        uid: owner.uid.unwrap_or(a.uid),
        gid: owner.gid.unwrap_or(a.gid),
        rdev: a.rdev,
        // Large, so tools that size their buffers by st_blksize (cp, cat) read in big chunks.
        blksize: 1 << 20,
        flags: 0,
    }
}

pub(super) fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

//! Extended attributes. Without `--xattr` every call answers ENOSYS, so the kernel stops
//! asking (`ls -l` asks every file for its ACLs, a round trip each).

use std::ffi::OsStr;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr};

use super::convert::{refused, reply_xattr};
use super::FuseAdapter;
use crate::store::ObjectStore;

impl<S: ObjectStore> FuseAdapter<S> {
    fn xattrs_off(&self) -> bool {
        !self.fs.config().user_xattrs
    }

    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.xattrs_off() {
            return reply.error(refused(Errno::ENOSYS));
        }
        let bytes = name.as_encoded_bytes();
        if !bytes.starts_with(b"user.") && !bytes.starts_with(b"bucketfs.") {
            // ACLs and security labels: none is kept; answered here, without a hop to the
            // runtime.
            return reply.error(refused(Errno::ENODATA));
        }
        let name = name.to_owned();
        self.spawn(
            reply,
            move |fs| async move { fs.getxattr(ino.0, &name).await },
            move |reply, value| reply_xattr(reply, size, &value),
        );
    }

    pub(super) fn list_xattrs(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.xattrs_off() {
            return reply.error(refused(Errno::ENOSYS));
        }
        self.spawn(
            reply,
            move |fs| async move { fs.listxattr(ino.0).await },
            move |reply, names| {
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(name.as_bytes());
                    list.push(0);
                }
                reply_xattr(reply, size, &list)
            },
        );
    }

    pub(super) fn set_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        if self.xattrs_off() {
            return reply.error(refused(Errno::ENOSYS));
        }
        let (name, value) = (name.to_owned(), value.to_vec());
        self.spawn(
            reply,
            move |fs| async move { fs.setxattr(ino.0, &name, &value, flags).await },
            |reply, _| reply.ok(),
        );
    }

    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.xattrs_off() {
            return reply.error(refused(Errno::ENOSYS));
        }
        let name = name.to_owned();
        self.spawn(
            reply,
            move |fs| async move { fs.removexattr(ino.0, &name).await },
            |reply, _| reply.ok(),
        );
    }
}

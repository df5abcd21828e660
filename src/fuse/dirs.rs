//! Directory handles: readdir and readdirplus replies, sized to the kernel's buffer.

use std::time::Duration;

use fuser::{FileHandle, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::convert::{file_attr, file_type};
use super::FuseAdapter;
use crate::store::ObjectStore;

impl<S: ObjectStore> FuseAdapter<S> {
    pub(super) fn list_names(&self, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        let batch = self.readdir_batch.clone();
        let asked = batch.get();
        self.spawn(
            reply,
            move |fs| async move { fs.readdir(fh.0, offset, asked, false).await },
            move |mut reply, items| {
                let (offered, mut sent, mut full) = (items.len(), 0, false);
                for item in items {
                    full = reply.add(
                        INodeNo(item.entry.ino),
                        item.offset,
                        file_type(item.entry.attrs.kind),
                        &item.name,
                    );
                    if full {
                        break;
                    }
                    sent += 1;
                }
                batch.record(asked, offered, sent, full);
                reply.ok();
            },
        );
    }

    /// Entries with their attributes. Every entry the filesystem layer counted a lookup for
    /// and the kernel did not take (the buffer ran out) is forgotten again.
    pub(super) fn list_entries(&self, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        let batch = self.readdirplus_batch.clone();
        let asked = batch.get();
        let (fs, ttl, owner) = (self.fs.clone(), self.ttl(), self.owner());
        self.spawn(
            reply,
            move |fs| async move { fs.readdir(fh.0, offset, asked, true).await },
            move |mut reply, items| {
                let (offered, mut sent, mut full) = (items.len(), 0, false);
                let mut items = items.into_iter();
                for item in items.by_ref() {
                    // Unverified entries are not cached: their first use looks them up.
                    let ttl = if item.verified { ttl } else { Duration::ZERO };
                    full = reply.add(
                        INodeNo(item.entry.ino),
                        item.offset,
                        &item.name,
                        &ttl,
                        &file_attr(&item.entry, owner),
                        Generation(0),
                    );
                    if full {
                        // Not sent: the kernel holds no reference for it.
                        if item.counted {
                            fs.forget(item.entry.ino, 1);
                        }
                        break;
                    }
                    sent += 1;
                }
                batch.record(asked, offered, sent, full);
                for item in items.filter(|i| i.counted) {
                    fs.forget(item.entry.ino, 1);
                }
                reply.ok();
            },
        );
    }
}
